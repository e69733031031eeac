package replicate

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// Emergency mode (MARS's, improved).
//
// When an append finds the log filesystem full and deleting what every node
// has replayed frees nothing, the primary does not refuse the write: it
// enters emergency mode. The writes in flight to the log finish, the applied
// position is persisted at the end of the log, and from then on writes go
// straight to the data device; the chunks they touch are recorded in a
// bitmap (emergency.bitmap, preallocated at open, fdatasync'd before the
// write it covers goes to the disk). When space is back (checked with
// hysteresis: two segments more than a record needs) the primary logs a
// KindEmergency mark and logs again. A secondary's replay stops before the
// mark: its disk stays consistent (the primary's state at the mark),
// outdated. `invalidate` on it then copies only the chunks in the bitmap and
// replays the log from the mark on (EmergencySync), instead of comparing the
// whole disk. The bitmap is kept until every node has replayed past the
// last mark.

const (
	emergencyFile   = "emergency.json"
	emergencyBitmap = "emergency.bitmap"
	// EmergencyChunk is the granularity of the emergency bitmap.
	EmergencyChunk = 1 << 20
)

// EmergencyState is what emergency.json holds, and what Status reports.
type EmergencyState struct {
	// Active: writes go to the disk without the log since Since.
	Active bool      `json:"active"`
	Since  time.Time `json:"since,omitzero"`
	// At is where the log ended when the current (or last) emergency
	// began; Marks are the positions of the marks logged when each ended
	// (oldest first), since every node last caught up.
	At    Position   `json:"at"`
	Marks []Position `json:"marks,omitempty"`
	// Chunks is the number of chunks written without the log (bits set).
	Chunks int `json:"chunks"`
}

// emergency is the Primary's emergency bookkeeping.
type emergency struct {
	// active mirrors st.Active for the check every write makes (no lock
	// on the write path); it changes only under mu.
	active atomic.Bool

	mu     sync.Mutex // bitmap and state writes
	st     EmergencyState
	bitmap []byte
	f      File // emergency.bitmap
	// rw: emergency writes hold it shared; leaving takes it exclusively to
	// drain them before the mark is logged.
	rw sync.RWMutex
}

// openEmergency reads the persisted state and opens (creating and sizing)
// the bitmap of a device of size bytes.
func openEmergency(fsys FS, dir string, size int64) (*emergency, error) {
	em := &emergency{bitmap: make([]byte, (size/EmergencyChunk+1+7)/8)}
	b, err := readFile(fsys, filepath.Join(dir, emergencyFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("read emergency state: %w", err)
	default:
		if err := json.Unmarshal(b, &em.st); err != nil {
			return nil, fmt.Errorf("%w: emergency state file %s is unreadable (%v)", ErrCorrupt, filepath.Join(dir, emergencyFile), err)
		}
	}
	path := filepath.Join(dir, emergencyBitmap)
	f, err := fsys.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		f, err = fsys.Create(path)
	}
	if err != nil {
		return nil, fmt.Errorf("open emergency bitmap: %w", err)
	}
	n, _ := f.ReadAt(em.bitmap, 0)
	if n < len(em.bitmap) {
		// Allocate it now, while there is space: it is written in place.
		clear(em.bitmap[n:])
		_, err = f.WriteAt(em.bitmap[n:], int64(n))
		if err == nil {
			err = f.Sync()
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("allocate emergency bitmap: %w", err)
		}
	}
	em.f = f
	em.active.Store(em.st.Active)
	return em, nil
}

func (em *emergency) close() {
	if em.f != nil {
		em.f.Close()
	}
}

// save persists the state (atomically). Call with em.mu held.
func (em *emergency) save(fsys FS, dir string) error {
	b, _ := json.Marshal(em.st)
	if err := writeFileAtomic(fsys, filepath.Join(dir, emergencyFile), append(b, '\n')); err != nil {
		return fmt.Errorf("persist emergency state: %w", err)
	}
	return nil
}

// grow makes the bitmap cover a device of size bytes (before a resize,
// while there is space to allocate it).
func (em *emergency) grow(size int64) error {
	em.mu.Lock()
	defer em.mu.Unlock()
	n := int((size/EmergencyChunk + 1 + 7) / 8)
	if n <= len(em.bitmap) {
		return nil
	}
	old := len(em.bitmap)
	em.bitmap = append(em.bitmap, make([]byte, n-old)...)
	if _, err := em.f.WriteAt(em.bitmap[old:], int64(old)); err != nil {
		return fmt.Errorf("grow the emergency bitmap: %w", err)
	}
	if err := em.f.Sync(); err != nil {
		return fmt.Errorf("grow the emergency bitmap: %w", err)
	}
	return nil
}

// mark sets the bits of the chunks [off, off+n) and makes the bitmap
// durable when one was new.
func (em *emergency) mark(off, n int64) error {
	if n <= 0 {
		return nil
	}
	em.mu.Lock()
	defer em.mu.Unlock()
	lo, hi := -1, -1
	if last := (off + n - 1) / EmergencyChunk; last/8 >= int64(len(em.bitmap)) {
		return fmt.Errorf("chunk %d is past the emergency bitmap", last)
	}
	for c := off / EmergencyChunk; c <= (off+n-1)/EmergencyChunk; c++ {
		i, bit := c/8, byte(1)<<(c%8)
		if em.bitmap[i]&bit == 0 {
			em.bitmap[i] |= bit
			em.st.Chunks++
			if lo < 0 {
				lo = int(i)
			}
			hi = int(i)
		}
	}
	if lo < 0 {
		return nil
	}
	if _, err := em.f.WriteAt(em.bitmap[lo:hi+1], int64(lo)); err != nil {
		return fmt.Errorf("write emergency bitmap: %w", err)
	}
	if err := em.f.Sync(); err != nil {
		return fmt.Errorf("sync emergency bitmap: %w", err)
	}
	return nil
}

// chunks lists the chunk indexes set in the bitmap.
func (em *emergency) chunks() []uint64 {
	em.mu.Lock()
	defer em.mu.Unlock()
	var out []uint64
	for i, b := range em.bitmap {
		for j := range 8 {
			if b&(1<<j) != 0 {
				out = append(out, uint64(i*8+j))
			}
		}
	}
	return out
}

// Emergency returns the emergency state (Active false and no Marks when
// there is none to report).
func (p *Primary) Emergency() EmergencyState {
	em := p.em
	em.mu.Lock()
	defer em.mu.Unlock()
	st := em.st
	st.Marks = append([]Position(nil), st.Marks...)
	return st
}

// EmergencyChunks lists the chunks written without the log since every
// node last caught up (what an emergency sync copies).
func (p *Primary) EmergencyChunks() []uint64 { return p.em.chunks() }

func (p *Primary) inEmergency() bool { return p.em.active.Load() }

// setActive sets st.Active and its mirror. Call with em.mu held.
func (em *emergency) setActive(on bool) {
	em.st.Active = on
	em.active.Store(on)
}

// enterEmergency switches writes to the data device without the log. It
// returns an error (and the write fails as before) only when the switch
// cannot be made safe.
func (p *Primary) enterEmergency(cause error) error {
	p.emMu.Lock()
	defer p.emMu.Unlock()
	if p.inEmergency() {
		return nil
	}
	// No write reserves a place in the log from now on: those in flight
	// finish, then the end of the log is the state the disk holds.
	p.mu.Lock()
	p.emPending = true
	p.mu.Unlock()
	p.inflight.Wait()
	// Emergency writes go straight to the data device: none may overtake
	// an unapplied record of the log.
	err := p.drain()
	if err == nil {
		err = p.w.flush()
	}
	if err == nil {
		err = p.Checkpoint()
	}
	em := p.em
	em.mu.Lock()
	if err == nil {
		at := p.w.writtenPosition()
		em.st.Since, em.st.At = time.Now(), at
		em.setActive(true)
		if err = em.save(p.fsys, p.opts.Dir); err != nil {
			em.setActive(false)
		}
	}
	em.mu.Unlock()
	p.mu.Lock()
	p.emPending = false
	p.mu.Unlock()
	if err != nil {
		p.logger.Error("the log is full and emergency mode cannot start: writes fail", "err", err, "cause", cause)
		return err
	}
	p.logger.Error("EMERGENCY MODE: the log filesystem is full; writes go to the disk without the log. Secondaries stop at this point (consistent, outdated). Free space in the log directory (`tharsis log-delete-all`, or a larger filesystem); the log resumes by itself, then run `tharsis invalidate` on each secondary (only the chunks written meanwhile are copied)",
		"dir", p.opts.Dir, "log_end", em.st.At.String(), "cause", cause)
	return nil
}

// writeEmergency performs es on the data device without the log; retry is
// true when emergency mode ended meanwhile (log them instead).
func (p *Primary) writeEmergency(es []*entry) (retry bool, err error) {
	em := p.em
	em.rw.RLock()
	defer em.rw.RUnlock()
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return false, errClosed
	}
	if !p.inEmergency() {
		return true, nil
	}
	for _, e := range es {
		r := e.rec
		if r.Kind == KindResize {
			return false, errors.New("a resize cannot be carried out in emergency mode: free space in the log first")
		}
		if err := em.mark(r.Offset, r.Length); err != nil {
			return false, err
		}
		if err := apply(p.data, r); err != nil {
			return false, fmt.Errorf("write to the data device in emergency mode: %w", err)
		}
	}
	if p.opts.Sync || es[len(es)-1].durable {
		if err := p.data.Flush(); err != nil {
			return false, err
		}
	}
	return false, nil
}

// emergencyHeadroom is how much free space beyond a record's needs brings
// the log back: two segments, so it does not flap.
func (p *Primary) emergencyHeadroom() int64 { return 2 * p.opts.SegmentSize }

// MaybeLeaveEmergency logs again when the log filesystem has room for two
// segments more than it needs (or force is set and there is room for the
// mark at all, after `log-delete-all`). It reports whether emergency mode
// ended.
func (p *Primary) MaybeLeaveEmergency(force bool) (bool, error) {
	if !p.inEmergency() {
		return false, nil
	}
	p.emMu.Lock()
	defer p.emMu.Unlock()
	if !p.inEmergency() {
		return false, nil
	}
	need := int64(HeaderSize)
	if !force {
		need += p.emergencyHeadroom()
	}
	p.w.mu.Lock()
	p.w.availAt = time.Time{} // ask statfs now
	ok := p.w.spaceFor(need)
	p.w.mu.Unlock()
	if !ok {
		return false, nil
	}
	em := p.em
	em.rw.Lock() // every emergency write has returned
	defer em.rw.Unlock()
	if err := p.data.Flush(); err != nil {
		return false, fmt.Errorf("flush the data device before leaving emergency mode: %w", err)
	}
	// The mark is the first record after the emergency writes: other
	// writers wait (emLeaving) until it is logged.
	p.mu.Lock()
	p.emLeaving = true
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.emLeaving = false
		p.mu.Unlock()
	}()
	em.mu.Lock()
	em.setActive(false)
	em.mu.Unlock()
	mark := &entry{rec: Record{Kind: KindEmergency}}
	if err := p.write([]*entry{mark}, true); err != nil {
		em.mu.Lock()
		em.setActive(true)
		em.mu.Unlock()
		return false, fmt.Errorf("log the emergency mark: %w", err)
	}
	if err := p.w.waitDurable(mark.pos.Seq); err != nil {
		return false, err
	}
	em.mu.Lock()
	em.st.Marks = append(em.st.Marks, mark.pos)
	err := em.save(p.fsys, p.opts.Dir)
	st := em.st
	em.mu.Unlock()
	if err != nil {
		p.logger.Warn("cannot persist the end of emergency mode", "err", err)
	}
	p.logger.Warn("emergency mode over: the log is written again; run `tharsis invalidate` on each secondary to copy the chunks written meanwhile",
		"mark", mark.pos.String(), "chunks", st.Chunks, "since", st.Since.Format(time.RFC3339))
	return true, nil
}

// maybeForgetEmergency clears the bitmap and the marks once every node has
// replayed past the last mark.
func (p *Primary) maybeForgetEmergency() {
	em := p.em
	em.mu.Lock()
	defer em.mu.Unlock()
	if em.st.Active || len(em.st.Marks) == 0 || p.opts.MinAppliedByPeers == nil {
		return
	}
	last := em.st.Marks[len(em.st.Marks)-1]
	if p.opts.MinAppliedByPeers().Seq < last.Seq {
		return
	}
	clear(em.bitmap)
	if _, err := em.f.WriteAt(em.bitmap, 0); err == nil {
		em.f.Sync()
	}
	em.st = EmergencyState{}
	if err := em.save(p.fsys, p.opts.Dir); err != nil {
		p.logger.Warn("cannot persist the emergency state", "err", err)
	}
	p.logger.Info("every node replayed past the emergency mark: the emergency bitmap is cleared")
}
