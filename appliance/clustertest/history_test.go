package clustertest

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
)

// block is the granularity of the recorded writes: offsets and lengths are
// multiples of it, so the prefix check works per block.
const block = 4096

// Write is one write of a History.
type Write struct {
	Off  int64
	Data []byte
}

// History records the writes sent to the primary, in order, one at a time
// (each is acknowledged before the next is sent, so the order is the log's).
type History struct {
	mu     sync.Mutex
	writes []Write
	acked  int // writes[:acked] were acknowledged
}

// Issued and Acked count the writes sent and the writes acknowledged.
func (h *History) Counts() (issued, acked int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.writes), h.acked
}

// Writes returns the writes sent so far (not to be modified).
func (h *History) Writes() []Write {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.writes[:len(h.writes):len(h.writes)]
}

// Load writes random blocks through conn: n writes (0: until ctx is done or
// a write fails), each of 1..maxBlocks blocks at a random block-aligned
// offset below region, with random bytes, and a FLUSH every flushEvery
// writes. Every write is recorded in h
// before it is sent and marked acknowledged when its reply arrives. It
// returns nil when ctx ends it, else the first error.
func Load(ctx context.Context, conn *nbdConn, h *History, rng *rand.Rand, n int, region int64, maxBlocks int) error {
	for i := 0; n == 0 || i < n; i++ {
		if ctx.Err() != nil {
			return nil
		}
		nb := 1 + rng.IntN(maxBlocks)
		off := rng.Int64N(region/block-int64(nb)+1) * block
		data := make([]byte, nb*block)
		fillRandom(rng, data)
		h.mu.Lock()
		h.writes = append(h.writes, Write{Off: off, Data: data})
		h.mu.Unlock()
		if err := conn.WriteAt(data, off, false); err != nil {
			return fmt.Errorf("write %d (%d bytes at %d): %w", i, len(data), off, err)
		}
		h.mu.Lock()
		h.acked++
		h.mu.Unlock()
		if (i+1)%flushEvery == 0 {
			if err := conn.Flush(); err != nil {
				return fmt.Errorf("flush after write %d: %w", i, err)
			}
		}
	}
	return nil
}

// flushEvery is how often Load sends an NBD FLUSH, as a filesystem would
// (the primary ships only what is durable in its log).
const flushEvery = 64

func fillRandom(rng *rand.Rand, b []byte) {
	for i := 0; i+8 <= len(b); i += 8 {
		v := rng.Uint64()
		b[i], b[i+1], b[i+2], b[i+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
		b[i+4], b[i+5], b[i+6], b[i+7] = byte(v>>32), byte(v>>40), byte(v>>48), byte(v>>56)
	}
}

// Apply returns base (nil: zeros of size) with writes applied.
func Apply(base []byte, size int64, writes []Write) []byte {
	img := make([]byte, size)
	copy(img, base)
	for _, w := range writes {
		copy(img[w.Off:], w.Data)
	}
	return img
}

// PrefixOf returns the smallest k in [lo, len(writes)] such that snap
// equals base (nil: zeros) with writes[:k] applied, or -1 when there is
// none. It costs one pass over the written bytes: per block it tracks which
// write last covered it and whether snap matches that write's bytes there.
func PrefixOf(snap, base []byte, writes []Write, lo int) int {
	nblocks := len(snap) / block
	last := make([]int32, nblocks)
	for i := range last {
		last[i] = -1
	}
	zero := make([]byte, block)
	matches := func(b int, w int32) bool {
		s := snap[b*block : (b+1)*block]
		if w < 0 {
			if base == nil {
				return bytes.Equal(s, zero)
			}
			return bytes.Equal(s, base[b*block:(b+1)*block])
		}
		wr := writes[w]
		o := int64(b)*block - wr.Off
		return bytes.Equal(s, wr.Data[o:o+block])
	}
	mismatched := 0
	for b := range nblocks {
		if !matches(b, -1) {
			mismatched++
		}
	}
	for k := 0; ; k++ {
		if k >= lo && mismatched == 0 {
			return k
		}
		if k == len(writes) {
			return -1
		}
		w := writes[k]
		first, end := int(w.Off/block), int((w.Off+int64(len(w.Data)))/block)
		for b := first; b < end && b < nblocks; b++ {
			before := matches(b, last[b])
			last[b] = int32(k)
			after := matches(b, int32(k))
			switch {
			case before && !after:
				mismatched++
			case !before && after:
				mismatched--
			}
		}
	}
}
