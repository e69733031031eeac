package clustertest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tharsis/tharsis/aoe"
)

// reload rewrites every node's config file with extra appended to the
// cluster's config and runs `tharsis reload` on each; it returns each
// node's output (or error text).
func (c *Cluster) reload(t *testing.T, base map[string][]byte, extra string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, n := range c.nodes() {
		if err := os.WriteFile(n.Config, append(append([]byte{}, base[n.Name]...), extra...), 0o600); err != nil {
			t.Fatal(err)
		}
		b, err := n.tharsis(time.Minute, "reload", "--config", n.Config, "--node", n.Name, "--socket", n.Socket)
		out[n.Name] = strings.TrimSpace(string(b))
		if err != nil {
			out[n.Name] = "ERROR " + err.Error()
		}
	}
	return out
}

// aoeAnswers reports whether target 1.slot answers a Query Config at dst.
func aoeAnswers(in *aoe.Initiator, dst aoe.MAC, slot uint8) bool {
	q, _ := (&aoe.Config{Version: aoe.Version}).AppendBinary(nil)
	_, err := in.Exchange(context.Background(), dst, aoeShelf, slot, aoe.CmdConfig, q, 300*time.Millisecond, true)
	return err == nil
}

// TestReloadLive: exports and a limit are added, changed and removed by
// editing the config and running `tharsis reload`, while an NBD writer and
// an AoE reader run on the exports that stay: they see no error. A change
// that cannot be applied live and a broken file are refused with the
// reason, and nothing changes. A sync_rate set by reload holds the sync to
// within ±20 % of it.
func TestReloadLive(t *testing.T) {
	c := NewCluster(t, Options{Nodes: []string{"alpha", "beta"}, AoE: true, Connect: map[string][]string{}})
	alpha, beta := c.Nodes["alpha"], c.Nodes["beta"]
	base := map[string][]byte{}
	for _, n := range c.nodes() {
		b, err := os.ReadFile(n.Config)
		if err != nil {
			t.Fatal(err)
		}
		base[n.Name] = b
	}
	c.StartAll()
	c.WaitConsistent(catchUp)

	// The clients that must not notice anything.
	var h History
	load := c.startLoad(&h, 301, 0, 16<<20, 8)
	cl := c.AoEClient()
	bench, probe := cl.Initiator(), cl.Initiator()
	c.waitAoEServer(probe, alpha)
	aoeDone, aoeStop := make(chan error, 1), make(chan struct{})
	aoeReads := 0
	go func() {
		for {
			select {
			case <-aoeStop:
				aoeDone <- nil
				return
			default:
			}
			if err := aoeRead(bench, bench.MAC(), alpha.MAC()); err != nil {
				aoeDone <- fmt.Errorf("AoE read of e1.1 after %d reads: %w", aoeReads, err)
				return
			}
			aoeReads++
		}
	}()

	extra := fmt.Sprintf(`
[[exports.nbd]]
resource = %q
listen = "0.0.0.0:10811"
name = "extra"

[[exports.aoe]]
resource = %q
shelf = %d
slot = 2
interfaces = [%q]
`, resource, resource, aoeShelf, nodeDev)
	out := c.reload(t, base, extra)
	t.Logf("reload adding exports: %q", out)
	if !strings.Contains(out["alpha"], "nbd export extra on 0.0.0.0:10811 serving") || !strings.Contains(out["alpha"], "aoe target e1.2 serving") {
		t.Errorf("alpha's reload said %q, want the new exports serving", out["alpha"])
	}
	if strings.HasPrefix(out["beta"], "ERROR") {
		t.Errorf("beta's reload: %s", out["beta"])
	}
	dialExtra := func() error {
		return inNetns(alpha.NS, func() error {
			conn, err := dialNBD(net.JoinHostPort(alpha.IP, "10811"), "extra")
			if err == nil {
				conn.Close()
			}
			return err
		})
	}
	if err := dialExtra(); err != nil {
		t.Errorf("the added NBD export: %v", err)
	}
	if !aoeAnswers(probe, alpha.MAC(), 2) {
		t.Error("the added AoE target e1.2 does not answer")
	}

	// Refused: a key applied at start only, and a broken file.
	out = c.reload(t, base, extra+"\n[limits]\nnbd_max_connections = 7\n")
	if !strings.Contains(out["alpha"], "nbd_max_connections") || !strings.Contains(out["alpha"], "restart") {
		t.Errorf("reload of nbd_max_connections: %q, want a refusal naming the key and a restart", out["alpha"])
	}
	out = c.reload(t, base, extra+"\n[[exports.nbd]\n")
	if !strings.Contains(out["alpha"], alpha.Config+":") {
		t.Errorf("reload of a broken file: %q, want the error with file:line", out["alpha"])
	}
	if err := dialExtra(); err != nil {
		t.Errorf("the NBD export after refused reloads: %v", err)
	}

	// Removed again.
	out = c.reload(t, base, "")
	t.Logf("reload removing exports: %q", out)
	if err := dialExtra(); err == nil {
		t.Error("the removed NBD export still answers")
	}
	if aoeAnswers(probe, alpha.MAC(), 2) {
		t.Error("the removed AoE target e1.2 still answers")
	}
	close(aoeStop)
	if err := <-aoeDone; err != nil {
		t.Errorf("the AoE client of e1.1: %v", err)
	}
	if err := load.stop(t); err != nil {
		t.Errorf("the NBD client of r0: %v", err)
	}
	t.Logf("clients during the reloads: %d AoE reads of e1.1, %d NBD writes to r0", aoeReads, len(h.Writes()))
	c.WaitCaughtUp(catchUp)
	c.AssertIdentical()

	// A sync rate set by reload: beta's disk is damaged behind its back
	// (detached), then invalidated; the sync copies what differs at the
	// rate.
	const limit = 2 << 20
	out = c.reload(t, base, fmt.Sprintf("\n[limits]\nsync_rate = %d\n", limit))
	if !strings.Contains(out["beta"], "sync_rate applied") {
		t.Fatalf("beta's reload of sync_rate: %q", out["beta"])
	}
	beta.Verb("detach")
	f, err := os.OpenFile(beta.Disk, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	junk := make([]byte, 8<<20)
	for i := range junk {
		junk[i] = byte(rand.Uint32())
	}
	f.WriteAt(junk, 32<<20)
	f.Close()
	beta.Verb("attach")
	start := time.Now()
	beta.Verb("invalidate")
	c.WaitConsistent(2 * time.Minute)
	took := time.Since(start)
	r := beta.Repl()
	if r.LastSync == nil {
		t.Fatal("no last sync in beta's status")
	}
	rate := float64(r.LastSync.Transferred) / took.Seconds()
	t.Logf("sync at sync_rate %d B/s: %d bytes in %v = %.0f B/s (%.0f%%)", limit, r.LastSync.Transferred, took.Round(time.Millisecond), rate, 100*rate/limit)
	if r.LastSync.Transferred < 8<<20 {
		t.Errorf("the sync transferred %d bytes, want the 8 MiB that differ", r.LastSync.Transferred)
	}
	if rate < 0.8*limit || rate > 1.2*limit {
		t.Errorf("the sync ran at %.0f B/s, not within ±20%% of the %d B/s limit", rate, limit)
	}
	c.AssertIdentical()
}
