package nbd

import (
	"context"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
)

// DefaultMemory is the size of the payload budget a Server makes for itself
// when Server.Memory is nil.
const DefaultMemory = 256 << 20

// Giving memory back after a burst: once a budget that held at least
// trimAbove is unused for trimDelay, the idle payload buffers are freed and
// the process's free memory is returned to the operating system.
// Otherwise pooled buffers live until two garbage collections, which an
// idle daemon runs only every two minutes, and the runtime returns freed
// pages slowly.
const (
	trimAbove = 64 << 20
	trimDelay = 5 * time.Second
)

// MemoryBudget is a budget of payload bytes shared by every connection of
// one or more Servers (a daemon gives all its listeners one). A connection
// takes a share before it allocates the buffer of a WRITE's payload or a
// READ's data, and gives it back when the reply has been sent, so the
// payload buffers of all clients together never exceed the budget: a client
// that sends a request while the budget is spent is not read from until
// other requests finish (TCP pushes back on it).
//
// Shares are granted in the order they were asked for, so a large request
// is not starved by a stream of small ones. A share is the size of the
// buffer the request gets (its length rounded up to a power of two, at
// least 4 KiB). A request whose buffer is larger than the whole budget
// waits until it can have all of it and then runs alone, so the budget
// should be at least the largest request (Server.MaxPayload). A
// MemoryBudget is safe for concurrent use.
//
// After a burst that held at least 64 MiB, once the budget has been unused
// for 5 seconds, it frees the idle payload buffers and returns free memory
// to the operating system (runtime.GC, debug.FreeOSMemory), so the
// memory a burst of clients took is given back.
type MemoryBudget struct {
	sem  *semaphore.Weighted
	size int64
	used atomic.Int64
	peak atomic.Int64 // the most used since the last trim

	mu        sync.Mutex
	trimArmed bool
	trimDelay time.Duration // trimDelay; tests shorten it
	trims     atomic.Int64  // trims done, for tests
}

// NewMemoryBudget returns a budget of size bytes; size <= 0 means DefaultMemory.
func NewMemoryBudget(size int64) *MemoryBudget {
	if size <= 0 {
		size = DefaultMemory
	}
	return &MemoryBudget{sem: semaphore.NewWeighted(size), size: size, trimDelay: trimDelay}
}

// Size returns the budget in bytes.
func (m *MemoryBudget) Size() int64 { return m.size }

// InUse returns the bytes currently granted.
func (m *MemoryBudget) InUse() int64 { return m.used.Load() }

// acquire waits until n bytes (at most the whole budget) are granted, or
// ctx ends (then it returns ctx.Err() and holds nothing).
func (m *MemoryBudget) acquire(ctx context.Context, n int64) error {
	n = min(n, m.size)
	if err := m.sem.Acquire(ctx, n); err != nil {
		return err
	}
	used := m.used.Add(n)
	for p := m.peak.Load(); used > p && !m.peak.CompareAndSwap(p, used); p = m.peak.Load() {
	}
	return nil
}

// release gives back n bytes granted by acquire(n).
func (m *MemoryBudget) release(n int64) {
	n = min(n, m.size)
	idle := m.used.Add(-n) == 0
	m.sem.Release(n)
	if idle && m.peak.Load() >= trimAbove {
		m.mu.Lock()
		if !m.trimArmed {
			m.trimArmed = true
			time.AfterFunc(m.trimDelay, m.trim)
		}
		m.mu.Unlock()
	}
}

// trim gives the memory of a burst back if the budget is still unused;
// otherwise the next release that leaves it unused tries again.
func (m *MemoryBudget) trim() {
	m.mu.Lock()
	m.trimArmed = false
	m.mu.Unlock()
	if m.used.Load() != 0 {
		return
	}
	m.peak.Store(0)
	runtime.GC() // moves pooled buffers to the pool's victim cache
	debug.FreeOSMemory()
	m.trims.Add(1)
}

// payloadCost is the share of the budget a payload of n bytes holds: the
// capacity of the buffer getBuf returns for it.
func payloadCost(n uint32) int64 {
	return 1 << (bufClass(int(n)) + minBufShift)
}
