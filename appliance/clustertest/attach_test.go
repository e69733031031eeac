package clustertest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// holdsOpen reports whether n's daemon has its disk file open.
func (n *Node) holdsOpen(path string) bool {
	n.mu.Lock()
	cmd := n.cmd
	n.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return false
	}
	dir := fmt.Sprintf("/proc/%d/fd", cmd.Process.Pid)
	fds, _ := os.ReadDir(dir)
	for _, fd := range fds {
		if l, err := os.Readlink(filepath.Join(dir, fd.Name())); err == nil && l == path {
			return true
		}
	}
	return false
}

// TestAttachDetach: detach closes the data device (the daemon holds no
// descriptor of it and nothing writes it); a detached secondary goes on
// fetching and replays on attach; a detached primary serves nothing, stays
// the designated primary and refuses a planned handover; down/up are
// disconnect+detach and attach+connect. Every refusal names what to do.
func TestAttachDetach(t *testing.T) {
	c := NewCluster(t, Options{})
	alpha, beta, gamma := c.Nodes["alpha"], c.Nodes["beta"], c.Nodes["gamma"]
	c.StartAll()
	c.WaitConsistent(catchUp)
	var h History
	c.writeSome(&h, 101, 100, 16<<20, 8)
	c.WaitCaughtUp(catchUp)

	// A secondary: detached, it fetches on and its disk is left alone.
	if !beta.holdsOpen(beta.Disk) {
		t.Fatal("beta does not hold its disk open before the detach: the check below would prove nothing")
	}
	out := beta.Verb("detach")
	if !strings.Contains(out, "detached") {
		t.Errorf("detach on beta said %q", out)
	}
	if beta.holdsOpen(beta.Disk) {
		t.Error("beta still holds its disk open after `detach`")
	}
	if out, err := beta.TryVerb("detach"); err != nil || !strings.Contains(out, "detached already") {
		t.Errorf("a second detach: %q %v, want \"detached already\"", out, err)
	}
	before := beta.SHA256()
	c.writeSome(&h, 102, 100, 16<<20, 8)
	// The primary's durable end may still move after the writes returned
	// (the last of them are durable once a checkpoint syncs the log):
	// compare with where it is now, each time.
	var end Position
	WaitFor(t, catchUp, "detached beta to fetch the primary's log", func() (bool, string) {
		end = alpha.Repl().End
		r, err := beta.TryRepl()
		if err != nil {
			return false, err.Error()
		}
		return r.End == end, fmt.Sprintf("beta fetched to %v, primary at %v", r.End, end)
	})
	if beta.SHA256() != before {
		t.Error("beta's disk changed while detached")
	}
	if r := beta.Repl(); r.Applied == end {
		t.Errorf("detached beta claims to have applied everything (%v)", r.Applied)
	}
	if _, err := beta.tharsis(time.Minute, "primary", "--socket", beta.Socket, resource); err == nil || !strings.Contains(err.Error(), "attach") {
		t.Errorf("primary on detached beta: %v, want a refusal naming attach", err)
	}
	beta.Verb("attach")
	if !beta.holdsOpen(beta.Disk) {
		t.Error("beta does not hold its disk after `attach`")
	}
	c.WaitCaughtUp(catchUp)
	c.AssertIdentical()

	// The primary: detached, it serves nothing and hands nothing over.
	alpha.Verb("detach")
	if alpha.holdsOpen(alpha.Disk) {
		t.Error("alpha still holds its disk open after `detach`")
	}
	if conn, err := c.DialNBD(); err == nil {
		conn.Close()
		t.Error("a detached primary still serves NBD")
	}
	if _, err := beta.tharsis(time.Minute, "primary", "--timeout", "20s", "--socket", beta.Socket, resource); err == nil || !strings.Contains(err.Error(), "detached") {
		t.Errorf("a planned handover from the detached primary: %v, want a refusal saying it is detached", err)
	}
	alpha.waitRole(30*time.Second, "primary", "alpha")
	alpha.Verb("attach")
	WaitFor(t, 30*time.Second, "alpha to serve NBD again", func() (bool, string) {
		conn, err := c.DialNBD()
		if err != nil {
			return false, err.Error()
		}
		conn.Close()
		return true, ""
	})
	c.writeSome(&h, 103, 100, 16<<20, 8)
	c.WaitCaughtUp(catchUp)
	c.assertPrimaryHolds(&h)
	c.AssertIdentical()

	// down and up on a secondary.
	out = gamma.Verb("down")
	if !strings.Contains(out, "fetching paused") || !strings.Contains(out, "detached") {
		t.Errorf("down on gamma said %q", out)
	}
	if r := gamma.Repl(); !r.FetchPaused {
		t.Error("gamma fetches after `down`")
	}
	c.writeSome(&h, 104, 50, 16<<20, 8)
	out = gamma.Verb("up")
	if !strings.Contains(out, "attached") || !strings.Contains(out, "fetching") {
		t.Errorf("up on gamma said %q", out)
	}
	c.WaitCaughtUp(catchUp)
	c.AssertIdentical()

	// A detach survives a restart.
	beta.Verb("detach")
	beta.Stop()
	beta.Start()
	WaitFor(t, 30*time.Second, "beta to come back detached", func() (bool, string) {
		r, err := beta.TryRepl()
		if err != nil {
			return false, err.Error()
		}
		return r.Detached && r.Phase == "secondary", fmt.Sprintf("detached=%v phase %s", r.Detached, r.Phase)
	})
	if beta.holdsOpen(beta.Disk) {
		t.Error("beta opened its detached disk at start")
	}
	beta.Verb("up")
	c.WaitCaughtUp(catchUp)
	c.AssertIdentical()
}
