package replicate

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/tharsis/tharsis/blockdev"
)

// Apply behind (MARS's design).
//
// A write is acknowledged once its record is in the log (and, with
// Options.Sync, durable there); the data device is written behind it. The
// unapplied window (Primary.win) holds every record from its reservation in
// the log until it is applied, in log order, with its payload (a copy: the
// client's buffer is its own again once WriteAt returns). One applier
// goroutine takes the logged prefix of the window in log order and applies
// it in waves of records that do not overlap (each wave in parallel, one
// after the other), so overlapping records reach the data device in the
// order of the log, and advances the applied position over them.
//
// Reads and Extents take the window's logged records that overlap them
// (found through an index by device range, winIndex) first, then ask the
// data device, then lay the records over its answer in log order (zeros
// for trim and write-zeroes). A record applied in between is on the device
// and in the overlay alike; a record logged in between raced the read,
// which may then see it or not. So a read sees every write
// acknowledged before it started, never an older version.
//
// The window is bounded (Options.ApplyWindow): a writer waits while it is
// full. When the data device fails, the applier stops (Primary.failed:
// writes are refused), the window keeps the unapplied records, so reads
// still see them, and the log keeps them for the replay on restart.

// Window states of a record (entry.wstate).
const (
	winReserved uint8 = iota // reserved in the log, being written
	winLogged                // in the log: visible to reads, to be applied
	winDropped               // could not be logged: never visible
)

// windowCost is what es take of the window: the payload and a record
// header each (trims cost only the header).
func windowCost(es []*entry) int64 {
	var n int64
	for _, e := range es {
		n += HeaderSize + int64(len(e.rec.Payload))
	}
	return n
}

// recordRange returns the device range a record changes ([off, off) for
// the kinds that change none).
func recordRange(r Record) (off, end int64) {
	switch r.Kind {
	case KindWrite, KindTrim, KindWriteZeroes:
		return r.Offset, r.Offset + r.Length
	}
	return r.Offset, r.Offset
}

// admit appends es (just reserved, in log order) to the window. Call with
// mu held.
func (p *Primary) admit(es []*entry, cost int64) {
	for _, e := range es {
		off, end := recordRange(e.rec)
		p.winIdx.add(p.winHead+uint64(len(p.win)), off, end)
		e.wstate = winReserved
		p.win = append(p.win, e)
	}
	p.winBytes += cost
}

// logged marks es as written to the log (ok) or dropped, and wakes the
// applier.
func (p *Primary) logged(es []*entry, ok bool) {
	state := winDropped
	if ok {
		state = winLogged
	}
	p.mu.Lock()
	for _, e := range es {
		e.wstate = state
	}
	p.mu.Unlock()
	select {
	case p.applyKick <- struct{}{}:
	default:
	}
}

// applyBatch is the most records the applier takes at once.
const applyBatch = 256

// applyLoop is the applier: it applies the logged prefix of the window to
// the data device, in log order, until stopApplier.
func (p *Primary) applyLoop() {
	defer close(p.applyDone)
	batch := make([]*entry, 0, applyBatch)
	for {
		p.mu.Lock()
		// Drop what was never logged from the front; take the logged
		// prefix after it.
		dropped := false
		for len(p.win) > 0 && p.win[0].wstate == winDropped {
			p.popWindow()
			dropped = true
		}
		if dropped {
			p.wakeWindow()
		}
		n := 0
		for n < len(p.win) && n < applyBatch && p.win[n].wstate == winLogged {
			n++
		}
		stop, failed := p.applyStop, p.failed != nil
		batch = append(batch[:0], p.win[:n]...)
		p.mu.Unlock()
		if stop || failed {
			return
		}
		if n == 0 {
			<-p.applyKick
			continue
		}
		done, err := applyAll(p.data, batch)
		p.mu.Lock()
		for _, e := range batch[:done] {
			p.applied = e.pos
			p.popWindow()
		}
		if err != nil {
			e := batch[done]
			err = fmt.Errorf("apply logged record %d to the data device: %w; the record is safe in the log and is replayed on restart (reads still see it): check the disk, then restart the daemon", e.pos.Seq, err)
			if p.failed == nil {
				p.failed = err
			}
		}
		p.wakeWindow()
		p.mu.Unlock()
		clear(batch)
		if err != nil {
			p.logger.Error("data device failed; writes are refused", "err", err)
			return
		}
	}
}

// applyWorkers is how many goroutines apply a wave of records that do not
// overlap: a data device's writes may block (page cache writeback, a disk's
// queue), and one at a time would bound the write rate by their latency.
const applyWorkers = 4

// applyAll applies batch (in log order) to data: in waves of records that
// do not overlap, each wave in parallel, one wave after the other, so
// overlapping records reach data in log order. It returns how many records
// from the start of batch are applied, and the error of the first that
// failed (records of its wave after it may be applied too: replay is
// idempotent).
func applyAll(data blockdev.Device, batch []*entry) (int, error) {
	errs := make([]error, len(batch))
	for start := 0; start < len(batch); {
		end := start + 1
		if r := batch[start].rec; r.Kind != KindResize {
		wave:
			for ; end < len(batch) && batch[end].rec.Kind != KindResize; end++ {
				off, stop := recordRange(batch[end].rec)
				for _, x := range batch[start:end] {
					if xo, xe := recordRange(x.rec); xo < stop && off < xe {
						break wave
					}
				}
			}
		}
		applyWave(data, batch[start:end], errs[start:end])
		for i := start; i < end; i++ {
			if errs[i] != nil {
				return i, errs[i]
			}
		}
		start = end
	}
	return len(batch), nil
}

// applyWave applies the records of wave, which do not overlap, with up to
// applyWorkers goroutines (this one among them), errs[i] for wave[i].
func applyWave(data blockdev.Device, wave []*entry, errs []error) {
	if len(wave) == 1 {
		errs[0] = apply(data, wave[0].rec)
		return
	}
	var next atomic.Int64
	work := func() {
		for {
			i := next.Add(1) - 1
			if i >= int64(len(wave)) {
				return
			}
			errs[i] = apply(data, wave[i].rec)
		}
	}
	var wg sync.WaitGroup
	for range min(applyWorkers, len(wave)) - 1 {
		wg.Go(work)
	}
	work()
	wg.Wait()
}

// popWindow removes the window's first record. Call with mu held.
func (p *Primary) popWindow() {
	e := p.win[0]
	p.winBytes -= HeaderSize + int64(len(e.rec.Payload))
	off, end := recordRange(e.rec)
	p.winIdx.remove(p.winHead, off, end)
	p.winHead++
	p.win[0] = nil
	p.win = p.win[1:]
	if len(p.win) == 0 {
		// Start the slice over instead of letting it creep through
		// memory.
		p.win = p.win[:0:0]
	}
}

// wakeWindow wakes whoever waits for the applier. Call with mu held.
func (p *Primary) wakeWindow() {
	if p.winWait > 0 {
		p.winCond.Broadcast()
	}
}

// waitWindow waits, with mu held, until cond holds or the applier has
// failed or stopped; it returns the failure.
func (p *Primary) waitWindow(cond func() bool) error {
	for !cond() && p.failed == nil && !p.applyStop {
		p.winWait++
		p.winCond.Wait()
		p.winWait--
	}
	if cond() {
		return nil
	}
	if p.failed != nil {
		return p.failed
	}
	return errClosed
}

// drain waits until every logged record is applied (the writers in flight
// must have returned: the window then holds no reserved record).
func (p *Primary) drain() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waitWindow(func() bool { return len(p.win) == 0 })
}

// waitApplied waits until every record up to seq is applied.
func (p *Primary) waitApplied(seq uint64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waitWindow(func() bool { return p.applied.Seq >= seq })
}

// stopApplier stops the applier (after the batch it is applying) and waits
// for it. What the window still holds stays unapplied (replayed on open).
func (p *Primary) stopApplier() {
	p.mu.Lock()
	p.applyStop = true
	p.winCond.Broadcast()
	p.mu.Unlock()
	select {
	case p.applyKick <- struct{}{}:
	default:
	}
	<-p.applyDone
}

// overlay returns the logged window records that overlap [off, end), in
// log order. Call with mu held.
func (p *Primary) overlay(off, end int64) []*entry {
	var out []*entry
	p.overlapping(off, end, func(e *entry, _, _ int64) { out = append(out, e) })
	return out
}

// overlapping calls fn, in log order, with each logged record of the
// window that overlaps [off, end) (found through winIdx) and the device
// range it changes. Call with mu held.
func (p *Primary) overlapping(off, end int64, fn func(e *entry, roff, rend int64)) {
	if p.winIdx.empty() {
		return
	}
	var buf [16]uint64
	for _, pos := range p.winIdx.find(buf[:0], off, end) {
		e := p.win[pos-p.winHead]
		if roff, rend := recordRange(e.rec); e.wstate == winLogged && roff < end && off < rend {
			fn(e, roff, rend)
		}
	}
}

// ReadAt implements blockdev.Device. It sees every acknowledged write: the
// unapplied window over the data device.
func (p *Primary) ReadAt(b []byte, off int64) (int, error) {
	p.mu.Lock()
	if len(p.win) == 0 {
		p.mu.Unlock()
		return p.data.ReadAt(b, off)
	}
	ov := p.overlay(off, off+int64(len(b)))
	p.mu.Unlock()
	n, err := p.data.ReadAt(b, off)
	if err != nil {
		return n, err
	}
	for _, e := range ov {
		applyClipped(e.rec, off, b)
	}
	return n, nil
}

var _ blockdev.ExtentReporter = (*Primary)(nil)

// Extents implements blockdev.ExtentReporter: the data device's extents
// (all data if it cannot tell), with the ranges of the unapplied window laid
// over them as the last record there leaves them: data, or known zero
// (trim, write-zeroes; not a hole: the device may still hold blocks there).
func (p *Primary) Extents(dst []blockdev.Extent, off, length int64, limit int) ([]blockdev.Extent, error) {
	end := off + length
	p.mu.Lock()
	var over []span
	p.overlapping(off, end, func(e *entry, roff, rend int64) {
		over = overwrite(over, span{max(roff, off), min(rend, end), e.rec.Kind != KindWrite})
	})
	p.mu.Unlock()
	start := len(dst)
	dst, err := blockdev.Extents(p.data, dst, off, length, limit)
	if err != nil || len(over) == 0 {
		return dst, err
	}
	ext := layOver(slices.Clone(dst[start:]), over)
	dst = append(dst[:start], ext...)
	if len(dst)-start > max(limit, 1) {
		dst = dst[:start+max(limit, 1)] // still a prefix of the range
	}
	return dst, nil
}

// span is a device range [off, end) the window changes, to zeros or data.
type span struct {
	off, end int64
	zero     bool
}

// overwrite lays x over ss (sorted, disjoint) and returns the result,
// sorted and disjoint.
func overwrite(ss []span, x span) []span {
	out := make([]span, 0, len(ss)+2)
	placed := false
	for _, s := range ss {
		if s.end <= x.off || s.off >= x.end {
			if !placed && s.off >= x.end {
				out = append(out, x)
				placed = true
			}
			out = append(out, s)
			continue
		}
		if s.off < x.off {
			out = append(out, span{s.off, x.off, s.zero})
		}
		if !placed {
			out = append(out, x)
			placed = true
		}
		if s.end > x.end {
			out = append(out, span{x.end, s.end, s.zero})
		}
	}
	if !placed {
		out = append(out, x)
	}
	return out
}

// layOver returns ext (back to back, in order) with the parts covered by ss
// (sorted, disjoint) replaced by their state, neighbours of one state
// merged.
func layOver(ext []blockdev.Extent, ss []span) []blockdev.Extent {
	var out []blockdev.Extent
	add := func(x blockdev.Extent) {
		if n := len(out); n > 0 && out[n-1].Hole == x.Hole && out[n-1].Zero == x.Zero {
			out[n-1].Length += x.Length
			return
		}
		out = append(out, x)
	}
	for _, e := range ext {
		pos, end := e.Offset, e.Offset+e.Length
		for _, s := range ss {
			if s.end <= pos || s.off >= end {
				continue
			}
			if s.off > pos {
				add(blockdev.Extent{Offset: pos, Length: s.off - pos, Hole: e.Hole, Zero: e.Zero})
				pos = s.off
			}
			hi := min(s.end, end)
			add(blockdev.Extent{Offset: pos, Length: hi - pos, Zero: s.zero})
			pos = hi
		}
		if pos < end {
			add(blockdev.Extent{Offset: pos, Length: end - pos, Hole: e.Hole, Zero: e.Zero})
		}
	}
	return out
}
