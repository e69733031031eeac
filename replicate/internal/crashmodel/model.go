// Package crashmodel tracks what a crash test wrote and checks a recovered
// device against it, per 512-byte sector.
//
// Each write fills its sectors with a pattern naming the write and the
// sector, so the content read back says which write it came from. Time is a
// logical clock: Begin stamps a write's issue time, Acked its
// acknowledgement. A snapshot (or a kill) that starts at clock cs and ends at
// ce may hold, for each sector, the data of any write to it issued before ce
// unless that write was superseded: acknowledged before cs, and another
// write to the sector was issued after that acknowledgement and itself
// acknowledged before cs. A sector no acknowledged write covered may also
// still be zero. Anything else is lost or foreign data.
package crashmodel

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"sync"
)

// SectorSize is the unit the model tracks.
const SectorSize = 512

// Write is one write of the test.
type Write struct {
	ID         uint64
	Off, Len   int64
	Issue, Ack uint64 // logical times; Ack 0 while not acknowledged
}

// Model is safe for concurrent use.
type Model struct {
	mu       sync.Mutex
	size     int64
	clock    uint64
	writes   []*Write // index = ID-1
	bySector [][]uint32
}

// New returns a model of a zero-filled device of size bytes.
func New(size int64) *Model {
	return &Model{size: size, bySector: make([][]uint32, size/SectorSize)}
}

// Now returns the current logical time (and advances it).
func (m *Model) Now() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.clock++
	return m.clock
}

// Random returns a random sector-aligned range of 1..maxSectors sectors.
func (m *Model) Random(r *rand.Rand, maxSectors int) (off, length int64) {
	n := int64(1 + r.IntN(maxSectors))
	total := m.size / SectorSize
	n = min(n, total)
	s := r.Int64N(total - n + 1)
	return s * SectorSize, n * SectorSize
}

// Begin records a write of length bytes at off (sector aligned) that is
// about to be issued and returns it with its data.
func (m *Model) Begin(off, length int64) (*Write, []byte) {
	m.mu.Lock()
	m.clock++
	w := &Write{ID: uint64(len(m.writes) + 1), Off: off, Len: length, Issue: m.clock}
	m.writes = append(m.writes, w)
	for s := off / SectorSize; s < (off+length)/SectorSize; s++ {
		m.bySector[s] = append(m.bySector[s], uint32(w.ID))
	}
	m.mu.Unlock()
	p := make([]byte, length)
	for i := int64(0); i < length; i += SectorSize {
		fill(p[i:i+SectorSize], w.ID, (off+i)/SectorSize)
	}
	return w, p
}

// Acked records that w was acknowledged.
func (m *Model) Acked(w *Write) {
	m.mu.Lock()
	m.clock++
	w.Ack = m.clock
	m.mu.Unlock()
}

// Acks returns the number of acknowledged writes.
func (m *Model) Acks() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, w := range m.writes {
		if w.Ack != 0 {
			n++
		}
	}
	return n
}

func fill(p []byte, id uint64, sector int64) {
	binary.LittleEndian.PutUint64(p, id)
	binary.LittleEndian.PutUint64(p[8:], uint64(sector))
	x := id*0x9e3779b97f4a7c15 ^ uint64(sector)
	for i := 16; i < len(p); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(p[i:], x)
	}
}

// Check reads the whole device through read and checks every sector
// against a snapshot taken between logical times cs and ce. It returns the
// first few problems found.
func (m *Model) Check(read func(p []byte, off int64) error, cs, ce uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	const chunk = 1 << 20
	buf := make([]byte, chunk)
	want := make([]byte, SectorSize)
	var errs []string
	for off := int64(0); off < m.size; off += chunk {
		n := min(chunk, m.size-off)
		if err := read(buf[:n], off); err != nil {
			return fmt.Errorf("read %d bytes at %d: %w", n, off, err)
		}
		for i := int64(0); i < n; i += SectorSize {
			s := (off + i) / SectorSize
			if msg := m.checkSector(s, buf[i:i+SectorSize], want, cs, ce); msg != "" {
				errs = append(errs, msg)
				if len(errs) >= 5 {
					return fmt.Errorf("%d+ bad sectors: %v", len(errs), errs)
				}
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%d bad sectors: %v", len(errs), errs)
	}
	return nil
}

func (m *Model) checkSector(s int64, got, want []byte, cs, ce uint64) string {
	var lastAckedIssue uint64 // latest issue time of a write acked before cs
	var ackedID uint64
	for _, id := range m.bySector[s] {
		w := m.writes[id-1]
		if w.Ack != 0 && w.Ack < cs && w.Issue > lastAckedIssue {
			lastAckedIssue, ackedID = w.Issue, w.ID
		}
	}
	id := binary.LittleEndian.Uint64(got)
	if id == 0 {
		for _, b := range got {
			if b != 0 {
				return fmt.Sprintf("sector %d: neither zero nor written data", s)
			}
		}
		if ackedID != 0 {
			return fmt.Sprintf("sector %d: zero, but acknowledged write %d covered it", s, ackedID)
		}
		return ""
	}
	if id > uint64(len(m.writes)) {
		return fmt.Sprintf("sector %d: data of unknown write %d", s, id)
	}
	w := m.writes[id-1]
	if w.Off/SectorSize > s || (w.Off+w.Len)/SectorSize <= s {
		return fmt.Sprintf("sector %d: data of write %d, which did not cover it", s, id)
	}
	fill(want, id, s)
	if string(want) != string(got) {
		return fmt.Sprintf("sector %d: torn or foreign data with the header of write %d", s, id)
	}
	if w.Issue >= ce {
		return fmt.Sprintf("sector %d: data of write %d, issued after the snapshot", s, id)
	}
	if w.Ack != 0 && w.Ack < cs && w.Ack < lastAckedIssue {
		return fmt.Sprintf("sector %d: stale data of write %d; acknowledged write %d issued after it was acknowledged", s, id, ackedID)
	}
	return ""
}
