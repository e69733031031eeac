package replicate

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tharsis/tharsis/internal/testutil"
)

// flipInSegment flips a byte in the middle of segment seq of n's log and
// returns the segment's path.
func flipInSegment(t testing.TB, n *node, seq uint64) string {
	t.Helper()
	path := filepath.Join(n.dir, findLocal(n.dir, seq))
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	flipByte(t, path, st.Size()/2)
	return path
}

// The primary's copy of a sealed segment is damaged after gamma fetched
// it: beta, which prefers alpha, fetches it from gamma instead; alpha
// reports the damage once and moves the segment aside; nothing is lost.
func TestDamagedSegmentFetchedElsewhere(t *testing.T) {
	const size = 2 << 20
	a, b, c := newNode(t, "alpha", size), newNode(t, "beta", size), newNode(t, "gamma", size)
	a.startPrimary(128 << 10)
	w := &writer{rng: rand.New(rand.NewPCG(31, 32))}
	w.write(t, a.prim, 20)
	b.startSecondary(func() []Peer { return []Peer{a.peer(), c.peer()} }, nil)
	c.startSecondary(func() []Peer { return []Peer{a.peer()} }, nil)
	waitCaughtUp(t, a.prim, b, c)

	b.stopSecondary()
	w.write(t, a.prim, 30)
	seg := a.prim.Status().Current
	if err := a.prim.Rotate(); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, a.prim, c)
	name, _ := ParseSegmentName(seg)
	flipInSegment(t, a, name.Seq)

	b.startSecondary(func() []Peer { return []Peer{a.peer(), c.peer()} }, nil)
	w.write(t, a.prim, 10)
	waitCaughtUp(t, a.prim, b, c)
	sameData(t, a, b)
	sameData(t, a, c)
	d := a.prim.Damage()
	if len(d) != 1 || d[0].Segment != seg || d[0].Quarantined == "" {
		t.Fatalf("alpha's damage: %+v", d)
	}
	if n := strings.Count(a.logBuf.String(), "the transaction log is damaged"); n != 1 {
		t.Errorf("alpha logged the damage %d times, want once", n)
	}
	// The segment comes back from gamma's intact copy.
	path, err := FetchSegment(t.Context(), "alpha", Auth{Secret: testSecret}, c.peer(), "r0", name, a.dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.prim.Restore(name, path); err != nil {
		t.Fatal(err)
	}
	if len(a.prim.Quarantined()) != 0 {
		t.Errorf("still quarantined after restore: %v", a.prim.Quarantined())
	}
}

// No node holds an intact copy: the secondary says so (never caught up
// with no lag), and invalidate makes it fetch after the sync's start.
func TestDamagedSegmentNoSource(t *testing.T) {
	for _, current := range []bool{false, true} {
		t.Run(map[bool]string{false: "sealed", true: "current"}[current], func(t *testing.T) {
			const size = 2 << 20
			a, b := newNode(t, "alpha", size), newNode(t, "beta", size)
			a.startPrimary(128 << 10)
			w := &writer{rng: rand.New(rand.NewPCG(41, 42))}
			w.write(t, a.prim, 20)
			b.startSecondary(func() []Peer { return []Peer{a.peer()} }, nil)
			waitCaughtUp(t, a.prim, b)
			b.sec.SetFetchPaused(true)
			w.write(t, a.prim, 30)
			seg := a.prim.Status().Current
			if !current {
				a.prim.Rotate()
				w.write(t, a.prim, 5)
			}
			name, _ := ParseSegmentName(seg)
			flipInSegment(t, a, name.Seq)
			b.sec.SetFetchPaused(false)
			testutil.WaitFor(t, 20*time.Second, "beta to report that no node can ship the log", func() bool {
				st := b.sec.Status()
				return strings.Contains(st.Err, "damaged") && st.LagBytes > 0
			})
			if caughtUp(a.prim, b.sec) {
				t.Fatal("beta counts as caught up")
			}
			if !current {
				// alpha moved the segment out of its log: a fetcher
				// that connects afresh (or missed the first refusal)
				// still hears of the damage, not of a segment gone.
				b.stopSecondary()
				b.startSecondary(func() []Peer { return []Peer{a.peer()} }, nil)
				testutil.WaitFor(t, 20*time.Second, "beta, restarted, to report the damage again", func() bool {
					st := b.sec.Status()
					if strings.Contains(st.Err, "holds no segment") {
						t.Fatalf("alpha told the restarted beta the damaged segment is gone: %s", st.Err)
					}
					return strings.Contains(st.Err, "damaged")
				})
			}
			// Writes go on (into the segment after the damage: alpha
			// sealed a damaged current segment early). A sync started
			// before any of them is applied would start inside the
			// damaged segment and stop at the damage again: a known gap,
			// see the note. (Applied behind the acknowledgement, they
			// may take a moment on a loaded machine.)
			w.write(t, a.prim, 5)
			testutil.WaitFor(t, 20*time.Second, "alpha to apply the writes after the damaged segment", func() bool {
				return a.prim.Status().Applied.Segment > name.Seq
			})
			if err := b.sec.Invalidate(); err != nil {
				t.Fatal(err)
			}
			w.write(t, a.prim, 10)
			waitCaughtUp(t, a.prim, b)
			sameData(t, a, b)
			if st := b.sec.Status(); st.Err != "" {
				t.Errorf("beta's error after the resync: %s", st.Err)
			}
		})
	}
}

// A damaged record in the secondary's own fetched log (not replayed yet)
// is cut and fetched again.
func TestLocalDamageRefetched(t *testing.T) {
	const size = 2 << 20
	a, b := newNode(t, "alpha", size), newNode(t, "beta", size)
	a.startPrimary(128 << 10)
	w := &writer{rng: rand.New(rand.NewPCG(51, 52))}
	w.write(t, a.prim, 20)
	b.startSecondary(func() []Peer { return []Peer{a.peer()} }, nil)
	waitCaughtUp(t, a.prim, b)
	b.sec.SetReplayPaused(true)
	w.write(t, a.prim, 40)
	testutil.WaitFor(t, 10*time.Second, "beta to fetch", func() bool {
		f, _ := b.sec.Positions()
		return f.Seq >= a.prim.Status().Written.Seq
	})
	f, _ := b.sec.Positions()
	flipInSegment(t, b, f.Segment)
	b.sec.SetReplayPaused(false)
	waitCaughtUp(t, a.prim, b)
	sameData(t, a, b)
	if d := b.sec.Damage(); len(d) != 1 {
		t.Errorf("beta's damage: %+v", d)
	}
}
