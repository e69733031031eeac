package clustertest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// Role scenarios (issue 9): planned handover under load and back, forced
// failover with split brain detected on every node and resolved by
// invalidate, stale configs that disagree, and refused handovers.

// roleCmd runs `tharsis primary|secondary ARGS --socket S r0` on n.
func (n *Node) roleCmd(args ...string) (string, error) {
	out, err := n.tharsis(3*time.Minute, append(append(args, "--socket", n.Socket), resource)...)
	return strings.TrimSpace(string(out)), err
}

// Settle makes h's recorded history match what the primary's disk holds
// after a load was cut off mid-write: the last write sent may or may not
// have been applied (it was never acknowledged). It fails when neither.
func (h *History) Settle(t testing.TB, disk []byte, size int64) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	for k := len(h.writes); k >= h.acked; k-- {
		if bytes.Equal(Apply(nil, size, h.writes[:k]), disk) {
			h.writes, h.acked = h.writes[:k:k], k
			return
		}
	}
	t.Fatalf("the disk holds neither the %d acknowledged writes nor those plus the one in flight: an acknowledged write was lost", h.acked)
}

// waitRole waits until n's view shows phase (and, for a non-empty primary,
// that designated primary).
func (n *Node) waitRole(timeout time.Duration, phase, primary string) *ReplStatus {
	n.c.t.Helper()
	var last *ReplStatus
	WaitFor(n.c.t, timeout, fmt.Sprintf("%s to be %s (primary %q)", n.Name, phase, primary), func() (bool, string) {
		r, err := n.TryRepl()
		if err != nil {
			return false, err.Error()
		}
		last = r
		return r.Phase == phase && (primary == "" || r.Designation.Primary == primary),
			fmt.Sprintf("phase %s, designation %s/%d", r.Phase, r.Designation.Primary, r.Designation.Generation)
	})
	return last
}

// nbdRefused reports whether n serves no NBD export of r0.
func (c *Cluster) nbdRefused(n *Node) bool {
	var err error
	_ = inNetns(n.NS, func() error {
		var conn *nbdConn
		conn, err = dialNBD(net.JoinHostPort(n.IP, fmt.Sprint(nbdPort)), resource)
		if err == nil {
			conn.Close()
		}
		return nil
	})
	return err != nil
}

// TestHandoverUnderLoad: `tharsis primary r0` on beta while a load writes
// through alpha: alpha's export ends after answering what was in flight,
// beta replays exactly to alpha's sealed end and serves; no acknowledged
// write is lost, gamma follows beta; then back to alpha; all disks equal.
func TestHandoverUnderLoad(t *testing.T) {
	c := started(t, Options{})
	alpha, beta, gamma := c.Nodes["alpha"], c.Nodes["beta"], c.Nodes["gamma"]
	var h History
	l := c.startLoad(&h, 11, 0, 16<<20, 8)
	WaitFor(t, 30*time.Second, "some writes through alpha", func() (bool, string) {
		_, acked := h.Counts()
		return acked > 200, fmt.Sprintf("%d acknowledged", acked)
	})
	out, err := beta.roleCmd("primary")
	if err != nil {
		t.Fatalf("primary on beta: %v", err)
	}
	t.Logf("tharsis primary r0 on beta: %s", out)
	// alpha withdrew its export: the load's connection ended.
	if err := l.stop(t); err == nil {
		t.Log("the load ended without an error (it was between writes)")
	}
	c.SetPrimary("beta")
	beta.waitRole(10*time.Second, "primary", "beta")
	alpha.waitRole(20*time.Second, "secondary", "beta")
	if !c.nbdRefused(alpha) {
		t.Error("alpha still serves the NBD export after the handover")
	}
	h.Settle(t, beta.ReadDisk(), c.Size)
	c.writeSome(&h, 12, 300, 16<<20, 8)
	c.WaitCaughtUp(catchUp)
	c.assertPrimaryHolds(&h)
	c.AssertIdentical()
	gamma.waitRole(10*time.Second, "secondary", "beta")

	// And back, under load again.
	l = c.startLoad(&h, 13, 0, 16<<20, 8)
	WaitFor(t, 30*time.Second, "some writes through beta", func() (bool, string) {
		_, acked := h.Counts()
		return acked > 700, fmt.Sprintf("%d acknowledged", acked)
	})
	if out, err := alpha.roleCmd("primary"); err != nil {
		t.Fatalf("primary on alpha: %v", err)
	} else {
		t.Logf("tharsis primary r0 on alpha: %s", out)
	}
	l.stop(t)
	c.SetPrimary("alpha")
	h.Settle(t, alpha.ReadDisk(), c.Size)
	c.writeSome(&h, 14, 100, 16<<20, 8)
	c.WaitCaughtUp(catchUp)
	c.assertPrimaryHolds(&h)
	c.AssertIdentical()
	if r := alpha.Repl(); r.Designation.Generation != 3 {
		t.Errorf("alpha's generation after two handovers is %d, want 3", r.Designation.Generation)
	}
}

// TestForcedFailoverSplitBrain: alpha writes what its secondaries never
// fetch, is killed; beta takes over with --force and takes writes; alpha
// restarted sees the newer generation, serves nothing and is reported as a
// split brain on all three nodes; gamma keeps following beta; invalidate on
// alpha makes all disks equal again (its divergent segment is not replayed
// over the sync).
func TestForcedFailoverSplitBrain(t *testing.T) {
	c := started(t, Options{})
	alpha, beta, gamma := c.Nodes["alpha"], c.Nodes["beta"], c.Nodes["gamma"]
	var h History
	c.writeSome(&h, 21, 200, 16<<20, 8)
	c.WaitCaughtUp(catchUp)
	beta.Verb("disconnect")
	gamma.Verb("disconnect")
	// 64 writes alpha acknowledges but never ships (the fork).
	conn := c.MustDialNBD()
	for i := range 64 {
		data := bytes.Repeat([]byte{byte(0xa0 + i%16)}, block)
		if err := conn.WriteAt(data, int64(i)*block, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
	alpha.Kill()
	beta.Verb("connect")
	gamma.Verb("connect")

	// A planned handover needs alpha.
	if _, err := beta.roleCmd("primary"); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("primary on beta with alpha dead: %v, want a refusal naming --force", err)
	}
	betaEnd := beta.Repl().End.Seq
	out, err := beta.roleCmd("primary", "--force")
	if err != nil {
		t.Fatalf("primary --force on beta: %v", err)
	}
	t.Logf("primary --force on beta: %s", out)
	if !strings.Contains(out, "may be lost") && !strings.Contains(out, "lost") {
		t.Errorf("primary --force does not say what may be lost: %s", out)
	}
	// It names how far this node's log goes, read at the command (not
	// stale facts from before `connect`).
	if !strings.Contains(out, fmt.Sprintf("up to record %d", betaEnd)) {
		t.Errorf("primary --force names the wrong fetched end (beta holds record %d): %s", betaEnd, out)
	}
	c.SetPrimary("beta")
	c.writeSome(&h, 22, 200, 16<<20, 8)

	alpha.Start()
	alpha.waitRole(30*time.Second, "secondary", "beta")
	c.waitSplitShown(alpha)
	if !c.nbdRefused(alpha) {
		t.Error("the old primary alpha serves its NBD export after the split")
	}
	view, err := beta.tharsis(15*time.Second, "view", "--socket", beta.Socket)
	if err != nil || !strings.Contains(string(view), "SPLIT BRAIN") {
		t.Errorf("beta's view does not say SPLIT BRAIN: %v\n%s", err, view)
	}
	// gamma keeps following beta.
	c.writeSome(&h, 23, 100, 16<<20, 8)
	c.WaitCaughtUp(catchUp, "gamma")
	c.AssertIdentical("beta", "gamma")

	alpha.Verb("invalidate")
	c.WaitCaughtUp(catchUp)
	c.assertPrimaryHolds(&h)
	c.AssertIdentical()
	if r := alpha.Repl(); r.Diverged || len(r.Forks) > 0 {
		t.Errorf("alpha after invalidate: diverged %v, forks %v", r.Diverged, r.Forks)
	}
}

// TestStaleConfigsDisagree: alpha's config names alpha, beta's names beta;
// started together, exactly one serves and the other follows it.
func TestStaleConfigsDisagree(t *testing.T) {
	c := NewCluster(t, Options{Nodes: []string{"alpha", "beta"}, Connect: map[string][]string{}, Primaries: map[string]string{"beta": "beta"}})
	c.StartAll()
	a := c.Nodes["alpha"].waitRole(30*time.Second, "primary", "alpha")
	b := c.Nodes["beta"].waitRole(30*time.Second, "secondary", "alpha")
	if a.Designation != b.Designation {
		t.Errorf("alpha and beta disagree: %+v vs %+v", a.Designation, b.Designation)
	}
	if !c.nbdRefused(c.Nodes["beta"]) {
		t.Error("beta serves the export although alpha is primary")
	}
	// Started one after the other, alpha serves first and beta follows its
	// generation 1; started together, the tie-break says so. Either way
	// beta reports that it does not follow its config.
	if l := c.Nodes["beta"].Log(); !strings.Contains(l, "configs disagree") && !strings.Contains(l, "the cluster designates alpha") {
		t.Error("beta's log does not report that it follows alpha, not its config")
	}
}

// TestRefusedHandovers: each refusal says why.
func TestRefusedHandovers(t *testing.T) {
	c := started(t, Options{})
	alpha, beta, gamma := c.Nodes["alpha"], c.Nodes["beta"], c.Nodes["gamma"]
	var h History
	c.writeSome(&h, 31, 100, 16<<20, 8)
	c.WaitCaughtUp(catchUp)

	// A sync runs to gamma (paused, so it stays): planned handover refused.
	gamma.Verb("pause-sync")
	gamma.Verb("invalidate")
	WaitFor(t, 20*time.Second, "beta to see gamma's sync", func() (bool, string) {
		out, err := beta.tharsis(15*time.Second, "view", "--json", "--raw", "--socket", beta.Socket)
		if err != nil {
			return false, err.Error()
		}
		var v struct {
			Peers []struct {
				Peer   struct{ Name string }
				Status struct {
					Resources []struct {
						Sync *struct{ State string } `json:"sync"`
					} `json:"resources"`
				} `json:"status"`
			} `json:"peers"`
		}
		if err := json.Unmarshal(out, &v); err != nil {
			return false, err.Error()
		}
		for _, p := range v.Peers {
			if p.Peer.Name == "gamma" && len(p.Status.Resources) > 0 && p.Status.Resources[0].Sync != nil {
				return true, ""
			}
		}
		return false, "beta's view shows no sync on gamma"
	})
	if _, err := beta.roleCmd("primary"); err == nil || !strings.Contains(err.Error(), "--ignore-sync") {
		t.Fatalf("primary on beta while a sync runs to gamma: %v, want a refusal naming --ignore-sync", err)
	}
	// gamma itself is not consistent: not even --force.
	if _, err := gamma.roleCmd("primary", "--force"); err == nil || !strings.Contains(err.Error(), "not consistent") {
		t.Errorf("primary --force on the inconsistent gamma: %v, want a refusal", err)
	}
	gamma.Verb("resume-sync")
	c.WaitConsistent(catchUp, "gamma")

	// The primary unreachable: refused, naming --force.
	alpha.CutLink()
	WaitFor(t, 30*time.Second, "beta to refuse a handover from the unreachable alpha", func() (bool, string) {
		_, err := beta.roleCmd("primary", "--timeout", "5s")
		return err != nil && (strings.Contains(err.Error(), "unreachable") || strings.Contains(err.Error(), "cannot reach")), fmt.Sprint(err)
	})
	alpha.RestoreLink()
	if r := alpha.Repl(); r.Phase != "primary" {
		t.Errorf("alpha is %s after refused handovers, want primary", r.Phase)
	}
}

// TestPartitionForcedFailover: alpha's link is cut while it is primary; a
// client on alpha's own host goes on writing to it (acknowledged, never
// shipped); beta takes over with --force and takes writes. When the link
// heals, alpha adopts beta's newer generation by itself (no restart), stops
// serving, ends its client's connection and is reported as a split brain;
// invalidate on alpha makes all disks equal again.
func TestPartitionForcedFailover(t *testing.T) {
	c := started(t, Options{})
	alpha, beta := c.Nodes["alpha"], c.Nodes["beta"]
	var h History
	c.writeSome(&h, 41, 200, 16<<20, 8)
	c.WaitCaughtUp(catchUp)

	alpha.CutLink()
	// A client on alpha's host: loopback still reaches it.
	var local *nbdConn
	if err := inNetns(alpha.NS, func() error {
		var err error
		local, err = dialNBD(net.JoinHostPort("127.0.0.1", fmt.Sprint(nbdPort)), resource)
		return err
	}); err != nil {
		t.Fatalf("NBD on alpha's loopback during the partition: %v", err)
	}
	defer local.Close()
	for i := range 64 {
		if err := local.WriteAt(bytes.Repeat([]byte{byte(0xc0 + i%16)}, block), int64(i)*block, false); err != nil {
			t.Fatalf("write to the partitioned alpha: %v", err)
		}
	}
	if err := local.Flush(); err != nil {
		t.Fatal(err)
	}

	// beta: a planned handover is refused (alpha unreachable), --force works.
	WaitFor(t, 30*time.Second, "beta to refuse a handover from the unreachable alpha", func() (bool, string) {
		_, err := beta.roleCmd("primary", "--timeout", "5s")
		return err != nil && strings.Contains(err.Error(), "--force"), fmt.Sprint(err)
	})
	if _, err := beta.roleCmd("primary", "--force"); err != nil {
		t.Fatalf("primary --force on beta: %v", err)
	}
	c.SetPrimary("beta")
	c.writeSome(&h, 42, 200, 16<<20, 8)
	if r := alpha.Repl(); r.Phase != "primary" {
		t.Errorf("the partitioned alpha is %s, want still primary (it cannot know)", r.Phase)
	}

	alpha.RestoreLink()
	alpha.waitRole(30*time.Second, "secondary", "beta")
	c.waitSplitShown(alpha)
	if !c.nbdRefused(alpha) {
		t.Error("the old primary alpha serves its NBD export after the partition healed")
	}
	if err := local.ReadAt(make([]byte, block), 0); err == nil {
		t.Error("alpha's local client can still read after alpha stepped down")
	}
	c.writeSome(&h, 43, 100, 16<<20, 8)

	// gamma follows generation 2 and says so in every fetch: even if it
	// fell back to alpha (its connect list names it) in the moment the
	// link healed, alpha refused to ship its fork (and learned generation
	// 2 from the refusal), so gamma is never on alpha's side of the fork.
	if r := c.Nodes["gamma"].Repl(); r.Diverged {
		t.Errorf("gamma fetched alpha's fork after the partition healed: diverged, forks %v", r.Forks)
	}
	alpha.Verb("invalidate")
	c.WaitCaughtUp(catchUp)
	c.assertPrimaryHolds(&h)
	c.AssertIdentical()
	if r := alpha.Repl(); r.Diverged || len(r.Forks) > 0 || !r.Consistent {
		t.Errorf("alpha after invalidate: diverged %v, forks %v, consistent %v", r.Diverged, r.Forks, r.Consistent)
	}
	if r := c.Nodes["gamma"].Repl(); r.Diverged || len(r.Forks) > 0 || !r.Consistent {
		t.Errorf("gamma at the end: diverged %v, forks %v, consistent %v (it never needed invalidate)", r.Diverged, r.Forks, r.Consistent)
	}
}

// waitSplitShown waits until every node reports a fork and loser says it
// diverged and is not consistent.
func (c *Cluster) waitSplitShown(loser *Node) {
	c.t.Helper()
	WaitFor(c.t, 30*time.Second, "split brain shown on every node", func() (bool, string) {
		for _, n := range c.nodes() {
			r, err := n.TryRepl()
			if err != nil {
				return false, err.Error()
			}
			if len(r.Forks) == 0 {
				return false, n.Name + " shows no fork"
			}
		}
		r, _ := loser.TryRepl()
		return r.Diverged && !r.Consistent, fmt.Sprintf("%s diverged %v consistent %v", loser.Name, r.Diverged, r.Consistent)
	})
}

// TestRoleVerbsAll: `primary all` and `secondary all` act on every
// replicated resource of the node and print each result.
func TestRoleVerbsAll(t *testing.T) {
	c := started(t, Options{Nodes: []string{"alpha", "beta"}})
	alpha, beta := c.Nodes["alpha"], c.Nodes["beta"]
	out, err := beta.tharsis(3*time.Minute, "primary", "--socket", beta.Socket, "all")
	if err != nil || !strings.Contains(string(out), resource+":") {
		t.Fatalf("primary all on beta: %v\n%s", err, out)
	}
	beta.waitRole(30*time.Second, "primary", "beta")
	out, err = beta.tharsis(3*time.Minute, "secondary", "--socket", beta.Socket, "all")
	if err != nil || !strings.Contains(string(out), resource+":") {
		t.Fatalf("secondary all on beta: %v\n%s", err, out)
	}
	if _, err := alpha.tharsis(3*time.Minute, "primary", "--socket", alpha.Socket, "all"); err != nil {
		t.Fatalf("primary all on alpha: %v", err)
	}
	alpha.waitRole(30*time.Second, "primary", "alpha")
	// Each resource's answer is printed.
	if out, err := beta.tharsis(3*time.Minute, "secondary", "--socket", beta.Socket, "all"); err != nil || !strings.Contains(string(out), "secondary already") {
		t.Errorf("secondary all on beta, a secondary: %v\n%s", err, out)
	}
}
