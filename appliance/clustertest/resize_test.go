package clustertest

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"
)

// TestResizeOnline: r0 uses 32 MiB of 48 MiB disks. resize on a secondary
// and past the disks is refused with the sizes; resize on the primary under
// load grows every node to the smallest disk; a new NBD connection sees the
// new size and writes there replicate; a restart keeps the size.
func TestResizeOnline(t *testing.T) {
	c := NewCluster(t, Options{DiskSize: 48 << 20, ResourceExtra: "size = \"32MiB\"\n"})
	alpha, beta := c.Nodes["alpha"], c.Nodes["beta"]
	// beta's disk holds old bytes where the resource will grow: after the
	// resize that space must read as zeros everywhere.
	f, err := os.OpenFile(beta.Disk, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(bytes.Repeat([]byte("old data "), 100000), 40<<20)
	f.Close()
	c.StartAll()
	c.WaitConsistent(catchUp)
	var h History
	c.writeSome(&h, 91, 100, 16<<20, 8)
	c.WaitCaughtUp(catchUp)

	if _, err := beta.tharsis(time.Minute, "resize", "--socket", beta.Socket, resource); err == nil || !strings.Contains(err.Error(), "not the primary") {
		t.Errorf("resize on the secondary beta: %v, want a refusal naming the primary", err)
	}
	if _, err := alpha.tharsis(time.Minute, "resize", "--socket", alpha.Socket, resource, "64MiB"); err == nil || !strings.Contains(err.Error(), "gamma has 48 MiB") {
		t.Errorf("resize past the disks: %v, want a refusal with the disk sizes", err)
	}
	WaitFor(t, 30*time.Second, "alpha's view to hint at the resize", func() (bool, string) {
		view, _ := alpha.tharsis(15*time.Second, "view", "--socket", alpha.Socket)
		return strings.Contains(string(view), "HINT    every disk is larger than the resource"), string(view)
	})
	load := c.startLoad(&h, 92, 0, 16<<20, 8)
	out, err := alpha.tharsis(time.Minute, "resize", "--socket", alpha.Socket, resource)
	if err != nil {
		t.Fatalf("resize r0: %v %s", err, out)
	}
	t.Logf("resize: %s", strings.TrimSpace(string(out)))
	if err := load.stop(t); err != nil {
		t.Fatalf("the load during the resize: %v", err)
	}
	conn := c.MustDialNBD()
	if conn.Size() != 48<<20 {
		t.Fatalf("a new NBD connection sees %d bytes, want %d", conn.Size(), 48<<20)
	}
	conn.Close()
	c.writeSome(&h, 93, 200, 48<<20, 8)
	c.WaitCaughtUp(catchUp)
	c.assertPrimaryHolds(&h)
	c.AssertIdentical()

	// The size survives a restart of every node.
	for _, n := range c.nodes() {
		n.Stop()
	}
	c.StartAll()
	c.Nodes["alpha"].waitRole(30*time.Second, "primary", "")
	conn = c.MustDialNBD()
	if conn.Size() != 48<<20 {
		t.Errorf("after a restart the export has %d bytes, want %d", conn.Size(), 48<<20)
	}
	conn.Close()
	c.writeSome(&h, 94, 50, 48<<20, 8)
	c.WaitCaughtUp(catchUp)
	c.AssertIdentical()
}
