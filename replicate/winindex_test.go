package replicate

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// TestWinIndexModel drives a winIndex as the window does (records added at
// the end, removed from the front) with small and large (wide) ranges,
// some crossing bucket boundaries, and checks that every lookup finds, in
// ascending order and without duplicates, every record that overlaps the
// range (a linear scan of the same records).
func TestWinIndexModel(t *testing.T) {
	type rec struct {
		pos      uint64
		off, end int64
	}
	r := rand.New(rand.NewPCG(7, 8))
	var x winIndex
	var win []rec
	next := uint64(100)
	const dev = 64 << 20
	randRange := func() (int64, int64) {
		off := r.Int64N(dev)
		var n int64
		switch r.IntN(10) {
		case 0:
			n = r.Int64N(32 << 20) // wide
		case 1:
			n = 0 // a resize: no range (an empty range overlaps nothing)
		default:
			n = 512 * (1 + r.Int64N(256))
		}
		return off, min(off+n, dev)
	}
	for step := range 20000 {
		switch {
		case len(win) > 0 && r.IntN(3) == 0:
			x.remove(win[0].pos, win[0].off, win[0].end)
			win = win[1:]
		default:
			off, end := randRange()
			x.add(next, off, end)
			win = append(win, rec{next, off, end})
			next++
		}
		off, end := randRange()
		if off == end {
			end++ // a read is never empty
		}
		if r.IntN(20) == 0 {
			off, end = 0, dev // a block status of the whole device
		}
		var want []uint64
		for _, w := range win {
			if w.off < w.end && w.off < end && off < w.end {
				want = append(want, w.pos)
			}
		}
		got := x.find(nil, off, end)
		if !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != len(got) {
			t.Fatalf("step %d: find(%d, %d) = %v: not ascending without duplicates", step, off, end, got)
		}
		var overlapping []uint64
		for _, pos := range got {
			w := win[pos-win[0].pos]
			if w.off < w.end && w.off < end && off < w.end {
				overlapping = append(overlapping, pos)
			}
		}
		if !slices.Equal(overlapping, want) {
			t.Fatalf("step %d: find(%d, %d) yields %v, want %v", step, off, end, overlapping, want)
		}
	}
	for _, w := range win {
		x.remove(w.pos, w.off, w.end)
	}
	if !x.empty() {
		t.Fatalf("index not empty after every record was removed: %d buckets, %d wide", len(x.buckets), len(x.wide))
	}
}
