package nbd

import (
	"math/bits"
	"sync"
)

// Buffers for request and reply payloads come from power-of-two size
// classes, so a steady stream of requests allocates nothing.
const (
	minBufShift = 12 // 4 KiB
	maxBufShift = 31 // 2 GiB: above any MaxPayload we accept
)

var bufPools [maxBufShift - minBufShift + 1]sync.Pool

// getBuf returns a buffer of length n from the pool of the smallest class
// that holds n. Return it with putBuf.
func getBuf(n int) *[]byte {
	c := bufClass(n)
	if p, ok := bufPools[c].Get().(*[]byte); ok {
		*p = (*p)[:n]
		return p
	}
	b := make([]byte, n, 1<<(c+minBufShift))
	return &b
}

// putBuf returns a buffer obtained from getBuf to its pool.
func putBuf(p *[]byte) {
	if p == nil {
		return
	}
	c := cap(*p)
	if c < 1<<minBufShift || c&(c-1) != 0 {
		return // not one of ours
	}
	bufPools[bufClass(c)].Put(p)
}

func bufClass(n int) int {
	if n <= 1<<minBufShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufShift
}

// budget bounds the bytes and the number of requests in flight on one
// connection. acquire blocks while the budget is exhausted; a single request
// larger than the whole byte budget is admitted when nothing else is in
// flight, so it cannot block forever.
type budget struct {
	mu       sync.Mutex
	cond     sync.Cond
	bytes    int64
	count    int
	maxBytes int64
	maxCount int
}

func newBudget(maxBytes int64, maxCount int) *budget {
	b := &budget{maxBytes: maxBytes, maxCount: maxCount}
	b.cond.L = &b.mu
	return b
}

func (b *budget) acquire(n int64) {
	b.mu.Lock()
	for b.count > 0 && (b.bytes+n > b.maxBytes || b.count >= b.maxCount) {
		b.cond.Wait()
	}
	b.bytes += n
	b.count++
	b.mu.Unlock()
}

func (b *budget) release(n int64) {
	b.mu.Lock()
	b.bytes -= n
	b.count--
	b.mu.Unlock()
	b.cond.Signal()
}
