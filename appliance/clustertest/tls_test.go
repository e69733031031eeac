package clustertest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// makeCerts makes the cluster CA and every node's certificate in Dir/tls
// with `tharsis cert`, as an operator would (before the configs name
// tls_dir, create-ca must come first: config.Load checks the directory).
func (c *Cluster) makeCerts() {
	c.t.Helper()
	dir := filepath.Join(c.Dir, "tls")
	run := func(args ...string) {
		if out, err := exec.Command(c.Bin, args...).CombinedOutput(); err != nil {
			c.t.Fatalf("tharsis %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("cert", "create-ca", "--dir", dir)
	for _, n := range c.nodes() {
		run("cert", "create-node", "--config", n.Config, n.Name)
	}
}

// TestReplicationTLS: a cluster with tls_dir and no secret_file, set up
// with `tharsis cert`: writes reach the secondary over TLS (both daemons
// say so at start) and the disks end identical; a reload that drops
// tls_dir is refused with the reason.
func TestReplicationTLS(t *testing.T) {
	c := NewCluster(t, Options{Nodes: []string{"alpha", "beta"}, Connect: map[string][]string{}, TLS: true})
	c.StartAll()
	c.WaitConsistent(catchUp)
	var h History
	c.writeSome(&h, 7, 200, 16<<20, 16)
	c.WaitCaughtUp(catchUp)
	c.AssertIdentical()
	c.assertPrimaryHolds(&h)
	for _, n := range c.nodes() {
		if !strings.Contains(n.Log(), "replication over mutual TLS 1.3") {
			t.Errorf("%s's log does not say it replicates over TLS", n.Name)
		}
		if strings.Contains(n.Log(), "handshake failed") {
			t.Errorf("%s's log has a failed handshake", n.Name)
		}
	}
	alpha := c.Nodes["alpha"]
	b, err := os.ReadFile(alpha.Config)
	if err != nil {
		t.Fatal(err)
	}
	plain := strings.Replace(string(b), "tls_dir = \"tls\"\n", "secret_file = \"secret\"\n", 1)
	if err := os.WriteFile(alpha.Config, []byte(plain), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = alpha.tharsis(time.Minute, "reload", "--config", alpha.Config, "--node", "alpha", "--socket", alpha.Socket)
	if err == nil || !strings.Contains(err.Error(), "tls_dir changed: TLS is set up at start") {
		t.Errorf("reload dropping tls_dir: %v, want it refused for tls_dir", err)
	}
}
