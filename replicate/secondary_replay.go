package replicate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// replayBatch bounds the records applied between two looks at the
// switches and the fetched position.
const replayBatch = 4096

func (s *Secondary) setReplayErr(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		s.replayErr = ""
	} else {
		s.replayErr = err.Error()
	}
}

// replayLoop applies fetched records to the data device in log order,
// independently of fetching, and persists the replay position (after a
// flush of the data device) every CheckpointInterval and whenever it
// catches up.
func (s *Secondary) replayLoop(ctx context.Context) {
	rr := &replayReader{dir: s.opts.Dir}
	defer rr.close()
	lastCk := time.Now()
	for ctx.Err() == nil {
		s.mu.Lock()
		blocked := s.st.ReplayPaused || s.opts.Detached || s.st.Sync == SyncNeeded || s.st.Sync == SyncRunning || s.st.StoppedAt != nil
		todo := s.fetched.Seq > s.replayed.Seq
		s.mu.Unlock()
		if blocked || !todo {
			if err := s.checkpoint(); err != nil {
				s.setReplayErr(err)
				s.logger.Error("cannot persist the replay position", "err", err)
			}
			s.maybeConsistent()
			s.wait(ctx, s.kickReplay, s.opts.CheckpointInterval)
			lastCk = time.Now()
			continue
		}
		n, err := s.replaySome(rr)
		var ld *localDamage
		if errors.As(err, &ld) {
			// The local copy is damaged where the source's was intact
			// (records are verified when fetched): cut it there and
			// fetch the rest again.
			s.damage.note(ld.cerr, "the local log is cut there and fetched again from a peer", s.logger)
			s.requestCut(ld.at)
			s.wait(ctx, s.kickReplay, s.opts.RetryInterval)
			continue
		}
		if err != nil {
			s.setReplayErr(err)
			if s.replayErrLog.changed(err.Error()) {
				s.logger.Error("replay stopped", "err", err)
			}
			s.wait(ctx, s.kickReplay, s.opts.RetryInterval)
			continue
		}
		if n > 0 {
			s.setReplayErr(nil)
		}
		if time.Since(lastCk) >= s.opts.CheckpointInterval {
			if err := s.checkpoint(); err != nil {
				s.setReplayErr(err)
			}
			lastCk = time.Now()
		}
	}
}

// maybeConsistent marks the node consistent once a finished sync's
// catch-up is replayed (and persisted).
func (s *Secondary) maybeConsistent() {
	s.mu.Lock()
	done := s.st.Sync == SyncCatchingUp && s.persisted.Seq >= s.st.ConsistentAt.Seq
	s.mu.Unlock()
	if !done {
		return
	}
	if err := s.update(func(st *secondaryState) { st.Sync, st.Consistent, st.SyncChunk = SyncNone, true, 0 }); err != nil {
		s.setReplayErr(err)
		return
	}
	s.logger.Info("full sync done: the data device is consistent")
}

// replaySome applies up to replayBatch records after the replay position,
// up to the fetched position.
func (s *Secondary) replaySome(rr *replayReader) (int, error) {
	s.mu.Lock()
	pos, end, gen := s.replayed, s.fetched, s.replayGen
	s.mu.Unlock()
	if gen != rr.gen {
		// A sync reset the position (and may have refetched the log).
		rr.close()
		rr.gen = gen
	}
	n := 0
	for n < replayBatch && pos.Seq < end.Seq {
		seg, err := rr.segmentAt(pos)
		if err != nil {
			return n, err
		}
		if pos.Segment != seg.Seq {
			pos = Position{Segment: seg.Seq, Offset: 0, Seq: pos.Seq}
		}
		limit := rr.size
		if seg.Seq == end.Segment {
			limit = end.Offset
		}
		if pos.Offset >= limit {
			if seg.Seq >= end.Segment {
				return n, nil
			}
			// Segment done: the next one.
			pos = Position{Segment: seg.Seq + 1, Offset: 0, Seq: pos.Seq}
			continue
		}
		rr.ra.limit = limit
		rec, next, err := readRecord(&rr.ra, limit, pos.Offset, &rr.buf)
		if err == nil && rec.Segment != seg.Seq {
			err = fmt.Errorf("%w: record belongs to segment %d", ErrInvalidRecord, rec.Segment)
		}
		if err != nil {
			return n, &localDamage{at: pos, cerr: &CorruptError{File: filepath.Join(rr.dir, seg.String()), Offset: pos.Offset, Reason: err.Error(), Resource: s.opts.Resource}}
		}
		if pos.Seq != 0 && rec.Seq != pos.Seq+1 {
			if rec.Seq <= pos.Seq {
				// Before the replay position (a sync's start inside the
				// segment): already in the data device.
				pos.Offset = next
				continue
			}
			return n, &localDamage{at: pos, cerr: &CorruptError{File: filepath.Join(rr.dir, seg.String()), Offset: pos.Offset, Resource: s.opts.Resource,
				Reason: fmt.Sprintf("record %d follows record %d (records missing)", rec.Seq, pos.Seq)}}
		}
		if rec.Kind == KindEmergency {
			s.mu.Lock()
			pass := rec.Seq <= s.st.PassMarksUpTo
			s.mu.Unlock()
			if !pass {
				return n, s.stopAtMark(pos)
			}
		}
		// Under applyMu, so a sync that starts now writes its first chunk
		// only after this record.
		s.applyMu.Lock()
		s.mu.Lock()
		stale := s.replayGen != gen || s.st.Sync == SyncNeeded || s.st.Sync == SyncRunning
		s.mu.Unlock()
		if stale {
			s.applyMu.Unlock()
			return n, nil
		}
		err = apply(s.data, rec)
		recBytes := next - pos.Offset
		pos = Position{Segment: seg.Seq, Offset: next, Seq: rec.Seq}
		if err == nil {
			s.mu.Lock()
			s.replayed = pos
			s.mu.Unlock()
			s.replayRate.Add(recBytes, time.Now())
		}
		s.applyMu.Unlock()
		if err != nil {
			return n, fmt.Errorf("apply record %d of %s to the data device: %w; check the disk", rec.Seq, seg, err)
		}
		n++
	}
	return n, nil
}

// replayReader reads records of the local log.
type replayReader struct {
	dir  string
	name SegmentName
	f    *os.File
	size int64
	buf  []byte
	ra   readAhead
	gen  uint64
}

func (rr *replayReader) close() {
	if rr.f != nil {
		rr.f.Close()
		rr.f = nil
	}
	rr.ra = readAhead{win: rr.ra.win[:0]}
}

// readAhead reads a segment in large blocks, so replaying small records
// does not cost two system calls each. It never caches bytes at or past
// limit (the fetched, durable end when they were read): bytes before it
// never change, bytes after it may still be being written.
type readAhead struct {
	f      *os.File
	limit  int64
	win    []byte
	winOff int64
}

const readAheadSize = 1 << 20

func (r *readAhead) ReadAt(p []byte, off int64) (int, error) {
	if off >= r.winOff && off+int64(len(p)) <= r.winOff+int64(len(r.win)) {
		return copy(p, r.win[off-r.winOff:]), nil
	}
	if len(p) >= readAheadSize/2 {
		return r.f.ReadAt(p, off)
	}
	n := min(int64(readAheadSize), r.limit-off)
	if n < int64(len(p)) {
		return r.f.ReadAt(p, off)
	}
	if cap(r.win) < readAheadSize {
		r.win = make([]byte, 0, readAheadSize)
	}
	w := r.win[:n]
	m, err := r.f.ReadAt(w, off)
	r.win, r.winOff = w[:m], off
	if m < len(p) {
		copy(p, w[:m])
		return m, err
	}
	return copy(p, w), nil
}

// segmentAt opens the segment holding the records after pos (pos.Segment,
// or the first local segment when pos.Segment is 0 or gone) and refreshes
// its size.
func (rr *replayReader) segmentAt(pos Position) (SegmentName, error) {
	if rr.f == nil || rr.name.Seq != pos.Segment {
		rr.close()
		names, err := listSegments(OSFS{}, rr.dir)
		if err != nil {
			return SegmentName{}, err
		}
		var n SegmentName
		for _, x := range names {
			if x.Seq >= pos.Segment {
				n = x
				break
			}
		}
		if n.Seq == 0 {
			return SegmentName{}, fmt.Errorf("the local log holds no segment %d", pos.Segment)
		}
		if n.Seq != pos.Segment && pos.Segment != 0 && pos.Seq != 0 {
			return SegmentName{}, fmt.Errorf("the local log has no segment %d (next: %s)", pos.Segment, n)
		}
		f, err := os.Open(filepath.Join(rr.dir, n.String()))
		if err != nil {
			return SegmentName{}, err
		}
		rr.f, rr.name = f, n
		rr.ra = readAhead{f: f, win: rr.ra.win[:0]}
	}
	st, err := rr.f.Stat()
	if err != nil {
		return SegmentName{}, err
	}
	rr.size = st.Size()
	return rr.name, nil
}

// localDamage is a damaged record of the local log at the replay position
// at: the log is cut there and fetched again.
type localDamage struct {
	at   Position
	cerr *CorruptError
}

func (e *localDamage) Error() string { return e.cerr.Error() }
func (e *localDamage) Unwrap() error { return e.cerr }

// requestCut asks the fetcher to cut the local log at at (dropping every
// record after it) and fetch from there again.
func (s *Secondary) requestCut(at Position) {
	s.mu.Lock()
	s.cut = &at
	if s.cancelStream != nil {
		s.cancelStream()
	}
	s.mu.Unlock()
	kick(s.kickFetch)
}

// cutLocalLog carries out a requested cut: the segment holding at is
// truncated there, later segments are removed.
func (s *Secondary) cutLocalLog(fl *fetchLog, at Position) error {
	fl.close()
	fl.unsynced = 0
	fl.synced = fetchTally{} // the records before the cut are not counted
	s.forgetIndexed(func(n SegmentName) bool { return n.Seq >= at.Segment })
	dir := s.opts.Dir
	names, err := listSegments(OSFS{}, dir)
	if err != nil {
		return err
	}
	for _, n := range names {
		path := filepath.Join(dir, n.String())
		switch {
		case n.Seq == at.Segment:
			err = os.Truncate(path, at.Offset)
		case n.Seq > at.Segment:
			err = os.Remove(path)
		}
		if err != nil {
			return fmt.Errorf("cut the local log at %v: %w", at, err)
		}
	}
	if err := (OSFS{}).SyncDir(dir); err != nil {
		return err
	}
	s.mu.Lock()
	if s.fetched.Seq > at.Seq {
		s.fetched = at
	}
	s.replayGen++ // the replay reader must not keep damaged bytes cached
	s.mu.Unlock()
	s.logger.Warn("cut the damaged local log; fetching it again", "at", at.String())
	return nil
}

// stopAtMark stops replay before an emergency mark of the primary, at pos:
// after it, the primary wrote to its disk without the log, so this node
// stays consistent at pos (outdated) until `tharsis invalidate` copies the
// chunks written meanwhile.
func (s *Secondary) stopAtMark(pos Position) error {
	if err := s.update(func(st *secondaryState) { p := pos; st.StoppedAt = &p }); err != nil {
		return err
	}
	s.logger.Warn("replay stopped at the primary's emergency mark: this disk is consistent but outdated; run `tharsis invalidate` here to copy the chunks the primary wrote without its log", "at", pos.String())
	return nil
}
