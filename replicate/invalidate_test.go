package replicate

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/tharsis/tharsis/internal/testutil"
)

// A former primary holding writes its secondary never fetched (a forced
// failover) must not replay them over the full sync that invalidate runs:
// after it, its disk equals the new primary's.
func TestInvalidateDiscardsDivergentLog(t *testing.T) {
	const size = 4 << 20
	a, b := newNode(t, "alpha", size), newNode(t, "beta", size)
	a.startPrimary(256 << 10)
	b.startSecondary(func() []Peer { return []Peer{a.peer()} }, nil)
	w := &writer{rng: rand.New(rand.NewPCG(21, 22))}
	w.write(t, a.prim, 50)
	waitCaughtUp(t, a.prim, b)

	// alpha writes what beta never fetches, then dies.
	b.stopSecondary()
	w.write(t, a.prim, 30)
	a.srv.RemoveResource("r0")
	if err := a.prim.Close(); err != nil {
		t.Fatal(err)
	}
	a.prim = nil

	// beta takes over and writes (the other side of the fork).
	b.startPrimary(256 << 10)
	w.write(t, b.prim, 40)

	// alpha comes back as beta's secondary: its log diverges, so it is not
	// consistent with beta, and says so.
	a.startSecondary(func() []Peer { return []Peer{b.peer()} }, func(o *SecondaryOptions) { o.WasPrimary = true })
	testutil.WaitFor(t, 20*time.Second, "alpha to report that its log diverges", func() bool {
		st := a.sec.Status()
		return st.Err != "" && !caughtUp(b.prim, a.sec)
	})
	if err := a.sec.Invalidate(); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, b.prim, a)
	sameData(t, a, b)
	w.write(t, b.prim, 10)
	waitCaughtUp(t, b.prim, a)
	sameData(t, a, b)
}
