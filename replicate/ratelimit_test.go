package replicate

import (
	"math/rand/v2"
	"testing"
	"time"
)

// A sync limited to 8 MiB/s copies a 16 MiB disk no faster than that; the
// rate measured is logged (the bound it must not beat is the limiter's
// promise, not the machine's speed).
func TestSyncRateLimit(t *testing.T) {
	const size, limit = 16 << 20, 8 << 20
	a, b := newNode(t, "alpha", size), newNode(t, "beta", size)
	rng := rand.New(rand.NewPCG(91, 92))
	buf := a.data.Bytes()
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	a.startPrimary(1 << 20)
	start := time.Now()
	b.startSecondary(func() []Peer { return []Peer{a.peer()} }, func(o *SecondaryOptions) {
		o.SyncLimiter = NewByteLimiter(limit)
		o.ChunkSize = 1 << 20
	})
	waitCaughtUp(t, a.prim, b)
	took := time.Since(start)
	sameData(t, a, b)
	ls := b.sec.Status().LastSync
	rate := float64(ls.Transferred) / took.Seconds()
	t.Logf("sync limited to %d B/s: %d bytes in %v = %.0f B/s (%.0f%% of the limit)", limit, ls.Transferred, took.Round(time.Millisecond), rate, 100*rate/limit)
	// The limiter's burst is a tenth of a second's worth: the copy cannot
	// be faster than (transferred - burst) / limit.
	if min := time.Duration(float64(ls.Transferred-limit/10) / limit * float64(time.Second)); took < min {
		t.Errorf("the sync took %v, less than the %v the limit allows", took, min)
	}
}
