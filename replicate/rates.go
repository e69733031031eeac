package replicate

import (
	"sync"
	"time"
)

// rateWindow measures a byte rate from a monotonic counter: Add counts
// bytes as they are fetched or replayed, Rate reports the bytes per second
// over the last rateSpan (or since the first Add, if later). It is safe
// for concurrent use.
type rateWindow struct {
	mu      sync.Mutex
	total   int64
	samples []rateSample // oldest first, at least rateStep apart
}

type rateSample struct {
	at    time.Time
	total int64
}

const (
	// rateSpan is the time over which a rate is averaged.
	rateSpan = 10 * time.Second
	// rateStep is the spacing of the samples kept.
	rateStep = time.Second
)

// Add counts n bytes at time now.
func (w *rateWindow) Add(n int64, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.sample(now)
	w.total += n
}

// sample records the counter at now and forgets samples older than the
// span; call with w.mu held.
func (w *rateWindow) sample(now time.Time) {
	if k := len(w.samples); k == 0 || now.Sub(w.samples[k-1].at) >= rateStep {
		w.samples = append(w.samples, rateSample{at: now, total: w.total})
	}
	for len(w.samples) > 1 && now.Sub(w.samples[0].at) > rateSpan {
		w.samples = w.samples[1:]
	}
}

// Rate returns the bytes per second counted over the last rateSpan at time
// now (over at least rateStep, so a first burst is not overstated; 0 when
// nothing was counted in the span).
func (w *rateWindow) Rate(now time.Time) float64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.sample(now)
	base := w.samples[0]
	dt := max(now.Sub(base.at), rateStep)
	return float64(w.total-base.total) / dt.Seconds()
}

// LogBytes is the number of log bytes from position a to position b (0 if b
// is not after a), using the sizes of the segments in between from segs
// (the segment lists of nodes on the same history). exact is false when a
// segment in between is missing from segs, so the result counts it as
// empty: a lower bound.
func LogBytes(a, b Position, segs []SegmentSummary) (n int64, exact bool) {
	if b.Seq <= a.Seq {
		return 0, true
	}
	sizes := make(map[uint64]int64, len(segs))
	for _, s := range segs {
		if name, ok := ParseSegmentName(s.Name); ok && s.Size > sizes[name.Seq] {
			sizes[name.Seq] = s.Size
		}
	}
	exact = true
	for seg := max(a.Segment, 1); seg < b.Segment; seg++ {
		if _, ok := sizes[seg]; !ok {
			exact = false
			break
		}
	}
	return logDistance(a, b, sizes), exact
}
