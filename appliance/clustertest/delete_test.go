package clustertest

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLeaveAndDelete: delete-resource is refused on the primary and while
// other nodes hold the resource; after leave-resource, --force deletes it
// on gamma (log directory gone, disk untouched) while alpha and beta go on;
// removing gamma's disk from the config by reload then leaves a two-node
// resource that still replicates.
func TestLeaveAndDelete(t *testing.T) {
	c := NewCluster(t, Options{Connect: map[string][]string{}})
	alpha, beta, gamma := c.Nodes["alpha"], c.Nodes["beta"], c.Nodes["gamma"]
	c.StartAll()
	c.WaitConsistent(catchUp)
	var h History
	c.writeSome(&h, 401, 100, 16<<20, 8)
	c.WaitCaughtUp(catchUp)

	del := func(n *Node, args ...string) (string, error) {
		out, err := n.tharsis(time.Minute, append([]string{"delete-resource", "--socket", n.Socket, resource}, args...)...)
		return strings.TrimSpace(string(out)), err
	}
	if _, err := del(alpha); err == nil || !strings.Contains(err.Error(), "primary") {
		t.Errorf("delete-resource on the primary: %v, want a refusal naming the primary", err)
	}
	if _, err := del(gamma); err == nil || !strings.Contains(err.Error(), "alpha holds it") || !strings.Contains(err.Error(), "leave-resource") {
		t.Errorf("delete-resource while others hold it: %v, want a refusal naming alpha and leave-resource", err)
	}
	if out := gamma.Verb("leave-resource"); !strings.Contains(out, "left") {
		t.Errorf("leave-resource on gamma said %q", out)
	}
	if r := gamma.Repl(); r.Phase != "left" || r.Consistent {
		t.Errorf("gamma after leave: phase %s consistent %v, want left and not consistent", r.Phase, r.Consistent)
	}
	disk := gamma.SHA256()
	logDir := filepath.Join(gamma.StateDir, resource, "log")
	if _, err := os.Stat(logDir); err != nil {
		t.Fatalf("gamma's log directory before the delete: %v", err)
	}
	out, err := del(gamma, "--force")
	if err != nil || !strings.Contains(out, "deleted") {
		t.Fatalf("delete-resource --force on gamma: %v %s", err, out)
	}
	if _, err := os.Stat(logDir); !os.IsNotExist(err) {
		t.Errorf("gamma's log directory after delete-resource: %v, want it gone", err)
	}
	if gamma.SHA256() != disk {
		t.Error("delete-resource changed gamma's disk")
	}
	if _, err := del(gamma); err == nil || !strings.Contains(err.Error(), "deleted") {
		t.Errorf("a second delete-resource: %v", err)
	}
	if v := gamma.View(); v.Resource(resource) != nil {
		t.Errorf("gamma's view still lists %s after delete-resource", resource)
	}
	c.writeSome(&h, 402, 100, 16<<20, 8)
	c.WaitCaughtUp(catchUp, "beta")

	// gamma's disk leaves the config of every node: a live reload.
	for _, n := range c.nodes() {
		b, err := os.ReadFile(n.Config)
		if err != nil {
			t.Fatal(err)
		}
		b = bytes.Replace(b, []byte(`, gamma = "gamma.img"`), nil, 1)
		if err := os.WriteFile(n.Config, b, 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := n.tharsis(time.Minute, "reload", "--config", n.Config, "--node", n.Name, "--socket", n.Socket)
		if err != nil {
			t.Errorf("reload on %s without gamma's disk: %v %s", n.Name, err, out)
		}
	}
	c.writeSome(&h, 403, 100, 16<<20, 8)
	c.WaitCaughtUp(catchUp, "beta")
	c.assertPrimaryHolds(&h)
	c.AssertIdentical("alpha", "beta")
	if !beta.Running() || !gamma.Running() {
		t.Error("a node stopped")
	}
}
