package replicate

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/tharsis/tharsis/internal/testutil"
)

// Retention: the primary deletes a segment only when every joined node has
// fetched and replayed it.
func TestClusterRetention(t *testing.T) {
	const size = 2 << 20
	a, b := newNode(t, "alpha", size), newNode(t, "beta", size)
	cl := NewCluster(ClusterOptions{Node: "alpha", Secret: testSecret, Peers: func() []Peer { return []Peer{b.peer()} }, Interval: 20 * time.Millisecond})
	p, err := OpenPrimary(noClose{a.data}, Options{Dir: a.dir, Node: "alpha", Resource: "r0", SegmentSize: 64 << 10,
		MinAppliedByPeers: cl.MinAppliedFunc("r0", func() []string { return []string{"beta"} })})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	a.prim = p
	a.srv.AddResource("r0", PrimarySource(p))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go cl.Run(ctx)

	w := &writer{rng: rand.New(rand.NewPCG(3, 4))}
	// beta has not joined yet (unknown): nothing may be deleted.
	w.write(t, p, 50)
	if removed, err := p.DeleteApplied(true); err == nil {
		t.Fatalf("deleted %v while beta's status is unknown", removed)
	}
	b.startSecondary(func() []Peer { return []Peer{a.peer()} }, nil)
	if err := b.sec.FakeSync(); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, p, b)
	if err := b.sec.SetReplayPaused(true); err != nil {
		t.Fatal(err)
	}
	_, held := b.sec.Positions()
	w.write(t, p, 50)
	testutil.WaitFor(t, 10*time.Second, "beta to fetch everything", func() bool {
		f, _ := b.sec.Positions()
		return f.Seq >= p.Status().Logged.Seq
	})
	cl.Poll(ctx)
	p.Rotate()
	p.DeleteApplied(true)
	// Segments after the one beta is replaying must all be there (the one
	// it stopped in may go only if beta stopped at its very end).
	if first, _ := ParseSegmentName(p.Status().Segments[0].Name); first.Seq > held.Segment+1 {
		t.Fatalf("deleted segments up to %d, beta replayed only up to %v", first.Seq-1, held)
	}
	// Once beta replayed everything, the primary may delete all but the
	// current segment.
	b.sec.SetReplayPaused(false)
	waitCaughtUp(t, p, b)
	testutil.WaitFor(t, 10*time.Second, "the cluster to see beta's replay position", func() bool {
		cl.Poll(ctx)
		return cl.MinApplied("r0", []string{"beta"}).Seq >= p.Status().Written.Seq
	})
	if _, err := p.DeleteApplied(true); err != nil {
		t.Fatal(err)
	}
	if n := len(p.Status().Segments); n != 1 {
		t.Errorf("%d segments left, want 1", n)
	}
	ps := cl.Peers()["beta"]
	if rs, ok := ps.Status.Resource("r0"); !ok || rs.Role != RoleSecondary || ps.Err != "" {
		t.Errorf("cluster view of beta: %+v", ps)
	}
}

func TestSecondaryDeleteApplied(t *testing.T) {
	const size = 1 << 20
	a, b := newNode(t, "alpha", size), newNode(t, "beta", size)
	a.startPrimary(32 << 10)
	b.startSecondary(func() []Peer { return []Peer{a.peer()} }, nil)
	if _, err := b.sec.DeleteApplied(true); err == nil {
		t.Fatal("deleted segments during a full sync")
	}
	w := &writer{rng: rand.New(rand.NewPCG(17, 18))}
	w.write(t, a.prim, 60)
	waitCaughtUp(t, a.prim, b)
	removed, err := b.sec.DeleteApplied(true)
	if err != nil || len(removed) == 0 {
		t.Fatalf("DeleteApplied = %v, %v", removed, err)
	}
	if segs := b.sec.Status().Segments; len(segs) != 1 {
		t.Errorf("%d segments left after deleting all replayed ones: %+v", len(segs), segs)
	}
	// Fetching and replay go on.
	w.write(t, a.prim, 10)
	waitCaughtUp(t, a.prim, b)
	sameData(t, a, b)
	// Invalidate: the sync starts before the local log's beginning or at
	// it; either way it ends consistent.
	b.sec.Invalidate()
	w.write(t, a.prim, 10)
	waitCaughtUp(t, a.prim, b)
	sameData(t, a, b)
}
