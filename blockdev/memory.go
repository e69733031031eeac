package blockdev

import (
	"bytes"
	"fmt"
	"sync"
)

// Memory is a Device held in memory, for tests and benchmarks. Its zero value
// is not usable; create it with NewMemory.
type Memory struct {
	mu   sync.RWMutex
	data []byte
}

var _ Device = (*Memory)(nil)

// NewMemory returns a zero-filled in-memory device of size bytes.
func NewMemory(size int64) *Memory {
	return &Memory{data: make([]byte, size)}
}

// ReadAt implements Device.
func (m *Memory) ReadAt(p []byte, off int64) (int, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if err := CheckRange(off, int64(len(p)), int64(len(m.data))); err != nil {
		return 0, err
	}
	return copy(p, m.data[off:]), nil
}

// WriteAt implements Device.
func (m *Memory) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := CheckRange(off, int64(len(p)), int64(len(m.data))); err != nil {
		return 0, err
	}
	return copy(m.data[off:], p), nil
}

// Flush implements Device; memory has nothing to flush.
func (m *Memory) Flush() error { return nil }

// Trim implements Device by zeroing the range.
func (m *Memory) Trim(off, length int64) error { return m.WriteZeroes(off, length) }

// WriteZeroes implements Device.
func (m *Memory) WriteZeroes(off, length int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := CheckRange(off, length, int64(len(m.data))); err != nil {
		return err
	}
	clear(m.data[off : off+length])
	return nil
}

// Size implements Device.
func (m *Memory) Size() int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return int64(len(m.data))
}

// Resize implements Resizer: the device grows by zeros.
func (m *Memory) Resize(size int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if size < int64(len(m.data)) {
		return fmt.Errorf("shrinking memory device from %d to %d bytes is not supported", len(m.data), size)
	}
	m.data = append(m.data, make([]byte, size-int64(len(m.data)))...)
	return nil
}

// Close implements Device.
func (m *Memory) Close() error { return nil }

// Bytes returns the device's contents. The caller must not write to the
// device while it uses the slice.
func (m *Memory) Bytes() []byte { return m.data }

var _ ExtentReporter = (*Memory)(nil)

// memoryExtentGrain is the granularity at which Memory reports zeros.
const memoryExtentGrain = 4096

// Extents implements ExtentReporter: aligned 4 KiB blocks that hold only
// zeros are reported Zero (never Hole: memory is always allocated), the
// rest as data.
func (m *Memory) Extents(dst []Extent, off, length int64, limit int) ([]Extent, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if err := CheckRange(off, length, int64(len(m.data))); err != nil {
		return dst, err
	}
	end := off + length
	start := len(dst)
	for off < end {
		next := min((off/memoryExtentGrain+1)*memoryExtentGrain, end)
		zero := isZero(m.data[off:next])
		if n := len(dst); n > start && dst[n-1].Zero == zero {
			dst[n-1].Length += next - off
		} else {
			if n-start == limit {
				break
			}
			dst = append(dst, Extent{Offset: off, Length: next - off, Zero: zero})
		}
		off = next
	}
	return dst, nil
}

// isZero reports whether b (at most len(zeroBuf) bytes) holds only zeros.
func isZero(b []byte) bool { return bytes.Equal(b, zeroBuf[:len(b)]) }
