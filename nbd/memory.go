package nbd

import (
	"context"
	"sync/atomic"

	"golang.org/x/sync/semaphore"
)

// DefaultMemory is the size of the payload budget a Server makes for itself
// when Server.Memory is nil.
const DefaultMemory = 256 << 20

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
type MemoryBudget struct {
	sem  *semaphore.Weighted
	size int64
	used atomic.Int64
}

// NewMemoryBudget returns a budget of size bytes; size <= 0 means DefaultMemory.
func NewMemoryBudget(size int64) *MemoryBudget {
	if size <= 0 {
		size = DefaultMemory
	}
	return &MemoryBudget{sem: semaphore.NewWeighted(size), size: size}
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
	m.used.Add(n)
	return nil
}

// release gives back n bytes granted by acquire(n).
func (m *MemoryBudget) release(n int64) {
	n = min(n, m.size)
	m.used.Add(-n)
	m.sem.Release(n)
}

// payloadCost is the share of the budget a payload of n bytes holds: the
// capacity of the buffer getBuf returns for it.
func payloadCost(n uint32) int64 {
	return 1 << (bufClass(int(n)) + minBufShift)
}
