package clustertest

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// VerifyView is replicate.VerifyReport in `tharsis view --json`.
type VerifyView struct {
	ID          uint64   `json:"id"`
	State       string   `json:"state"`
	Source      string   `json:"source"`
	ChunkSize   int64    `json:"chunk_size"`
	Compared    int64    `json:"compared_bytes"`
	Total       int64    `json:"total_bytes"`
	Differ      []uint64 `json:"differ"`
	DifferCount int      `json:"differ_count"`
	Repaired    int      `json:"repaired"`
	Err         string   `json:"error"`
}

// verifyView returns n's running or last verify of r0 from its view (nil:
// none).
func (n *Node) verifyView() *VerifyView {
	n.c.t.Helper()
	var r struct {
		Replication struct {
			Verify *VerifyView `json:"verify"`
		} `json:"replication"`
	}
	if err := json.Unmarshal(n.View().Resource(resource).Raw, &r); err != nil {
		n.c.t.Fatal(err)
	}
	return r.Replication.Verify
}

// flipBytes changes a few bytes of each chunk (1 MiB) of n's disk file,
// behind the daemon's back.
func (n *Node) flipBytes(chunks []uint64) {
	n.c.t.Helper()
	f, err := os.OpenFile(n.Disk, os.O_RDWR, 0)
	if err != nil {
		n.c.t.Fatal(err)
	}
	defer f.Close()
	for _, c := range chunks {
		b := make([]byte, 4)
		off := int64(c)<<20 + 4321
		if _, err := f.ReadAt(b, off); err != nil {
			n.c.t.Fatal(err)
		}
		for i := range b {
			b[i] ^= 0xa5
		}
		if _, err := f.WriteAt(b, off); err != nil {
			n.c.t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		n.c.t.Fatal(err)
	}
}

// TestOnlineVerify: bytes flipped in two chunks of beta's disk file behind
// the daemon's back are what `tharsis verify r0` on beta reports (exit 1,
// the chunks listed, also in `tharsis view` and its --json), while an NBD
// load keeps writing through alpha elsewhere; `verify --repair` rewrites
// them under the same load, a second verify finds nothing, and once the
// load stops every disk is identical. On the primary, verify says where to
// run it.
func TestOnlineVerify(t *testing.T) {
	c := started(t, Options{})
	alpha, beta := c.Primary(), c.Nodes["beta"]
	var h History
	c.writeSome(&h, 41, 200, 32<<20, 16)
	c.WaitCaughtUp(catchUp)

	flipped := []uint64{40, 50} // beyond the load's 32 MiB
	beta.flipBytes(flipped)
	l := c.startLoad(&h, 42, 0, 32<<20, 16)

	verify := func(args ...string) (string, error) {
		out, err := beta.tharsis(3*time.Minute, append(append([]string{"verify"}, args...), "--socket", beta.Socket, resource)...)
		return strings.TrimSpace(string(out)), err
	}
	out, err := verify()
	t.Logf("tharsis verify r0:\n%s (%v)", out, err)
	want := "2 chunks of 1.0 MiB DIFFER: 40 (byte 41943040), 50 (byte 52428800)"
	if err == nil || !strings.Contains(out, want) || !strings.Contains(out, "tharsis verify --repair r0") {
		t.Fatalf("verify of a disk with flipped bytes printed %q (%v); want exit 1 and %q", out, err, want)
	}
	v := beta.verifyView()
	if v == nil || v.State != "done" || !slices.Equal(v.Differ, flipped) || v.Source != "alpha" || v.Compared != c.Size {
		t.Fatalf("view --json of beta shows verify %+v; want done against alpha, chunks %v", v, flipped)
	}
	text, err := beta.tharsis(15*time.Second, "view", "--socket", beta.Socket)
	t.Logf("tharsis view on beta:\n%s", text)
	if err != nil || !strings.Contains(string(text), want) {
		t.Errorf("`tharsis view` on beta does not show %q:\n%s (%v)", want, text, err)
	}

	out, err = verify("--repair")
	t.Logf("tharsis verify --repair r0:\n%s", out)
	if err != nil || !strings.Contains(out, "2 chunks of 1.0 MiB differed and were repaired: 40 (byte 41943040), 50 (byte 52428800)") {
		t.Fatalf("verify --repair: %q (%v)", out, err)
	}
	out, err = verify()
	if err != nil || !strings.Contains(out, "no chunk differs") {
		t.Fatalf("verify after the repair: %q (%v)", out, err)
	}
	if err := l.stop(t); err != nil {
		t.Fatal(err)
	}
	c.WaitCaughtUp(catchUp)
	c.AssertIdentical()
	c.assertPrimaryHolds(&h)

	_, err = alpha.tharsis(time.Minute, "verify", "--socket", alpha.Socket, resource)
	if err == nil || !strings.Contains(err.Error(), "verify runs on a secondary") {
		t.Errorf("verify on the primary: %v", err)
	}
	// alpha sees beta's findings in its view of the cluster.
	WaitFor(t, 10*time.Second, "alpha's view to show beta's last verify", func() (bool, string) {
		text, err := alpha.tharsis(15*time.Second, "view", "--socket", alpha.Socket)
		return err == nil && strings.Contains(string(text), "verify 3 against alpha done"), string(text)
	})
}
