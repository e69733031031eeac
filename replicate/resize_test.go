package replicate

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/tharsis/tharsis/internal/testutil"
)

// A resize is logged: the secondary grows at the same point of the history,
// writes to the new space replicate, and a restart of either keeps it.
func TestResizeReplicates(t *testing.T) {
	const size = 2 << 20
	a, b := newNode(t, "alpha", size), newNode(t, "beta", size)
	a.startPrimary(256 << 10)
	b.startSecondary(func() []Peer { return []Peer{a.peer()} }, nil)
	w := &writer{rng: rand.New(rand.NewPCG(81, 82))}
	w.write(t, a.prim, 20)
	if err := a.prim.Resize(1 << 20); err == nil {
		t.Fatal("shrinking was accepted")
	}
	if err := a.prim.Resize(4 << 20); err != nil {
		t.Fatal(err)
	}
	if got := a.prim.Size(); got != 4<<20 {
		t.Fatalf("primary size after resize: %d", got)
	}
	if _, err := a.prim.WriteAt([]byte("beyond the old end"), 3<<20); err != nil {
		t.Fatalf("write to the new space: %v", err)
	}
	w.write(t, a.prim, 20)
	waitCaughtUp(t, a.prim, b)
	if got := b.data.Size(); got != 4<<20 {
		t.Fatalf("secondary size after replay: %d", got)
	}
	sameData(t, a, b)
	// A crash of the primary before a checkpoint replays the resize too.
	a.prim.crash()
	a.srv.RemoveResource("r0")
	a.startPrimary(256 << 10)
	if got := a.prim.Size(); got != 4<<20 {
		t.Fatalf("primary size after a crash: %d", got)
	}
	w.write(t, a.prim, 5)
	testutil.WaitFor(t, 20*time.Second, "beta to catch up after alpha's restart", func() bool { return caughtUp(a.prim, b.sec) })
	sameData(t, a, b)
}
