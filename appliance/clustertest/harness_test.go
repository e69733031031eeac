package clustertest

import (
	"net"
	"testing"
	"time"
)

// TestHarness checks the harness itself with what needs no replication:
// nodes start in their namespaces and answer `tharsis view --json`, the NBD
// load reaches the primary's disk, a cut link cuts (and comes back), and a
// kill -9 and restart of the primary keeps every acknowledged write.
func TestHarness(t *testing.T) {
	c := NewCluster(t, Options{})
	c.StartAll()
	for _, n := range c.nodes() {
		v := n.View()
		if v.Node != n.Name || v.Resource(resource) == nil {
			t.Fatalf("view of %s: node %q, resources %v", n.Name, v.Node, v.Resources)
		}
	}
	if r := c.Primary().View().Resource(resource); r.Role != "primary" {
		t.Fatalf("alpha's role for %s is %q, want primary", resource, r.Role)
	}
	var h History
	c.writeSome(&h, 99, 100, 16<<20, 8)
	c.assertPrimaryHolds(&h)

	// From beta's namespace, alpha's NBD port is reachable, not with beta's
	// link down, and again once it is up.
	beta := c.Nodes["beta"]
	dial := func() error {
		return inNetns(beta.NS, func() error {
			conn, err := net.DialTimeout("tcp", c.NBDAddr(), 500*time.Millisecond)
			if err == nil {
				conn.Close()
			}
			return err
		})
	}
	if err := dial(); err != nil {
		t.Fatalf("beta cannot reach alpha: %v", err)
	}
	beta.CutLink()
	if err := dial(); err == nil {
		t.Fatal("beta reaches alpha with its link down")
	}
	beta.RestoreLink()
	WaitFor(t, 10*time.Second, "beta to reach alpha again", func() (bool, string) {
		err := dial()
		return err == nil, "dial: " + errString(err)
	})

	c.Primary().Kill()
	c.Primary().Start()
	c.writeSome(&h, 98, 50, 16<<20, 8)
	c.assertPrimaryHolds(&h)
	tx, rx := beta.TxRx()
	if tx == 0 || rx == 0 {
		t.Errorf("beta's veth counters: tx %d rx %d bytes, want both > 0", tx, rx)
	}
}

func errString(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}
