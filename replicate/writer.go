package replicate

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/tharsis/tharsis/blockdev"
)

// spaceReserve is kept free on the log filesystem for segment-end markers,
// new segment files and the applied-position file.
const spaceReserve = 64 << 10

// entry is one record on its way through the writer (and, in Primary, to the
// data device).
type entry struct {
	rec Record   // Kind, Offset, Length, Payload set by the appender
	pos Position // end of the record, set by the writer once written

	// Primary's bookkeeping, guarded by Primary.mu.
	idx      uint64        // index in Primary.pending
	finished chan struct{} // closed once applied or failed
	ok       bool          // applied to the data device
	done     bool
}

// ticket is one batch of the writer: done is closed once the batch is
// written to the segment file (err == nil) or failed. Written is not
// durable: see logWriter.waitDurable.
type ticket struct {
	done chan struct{}
	err  error
}

// logWriter appends records to the current segment in two stages, as
// pebble's LogWriter keeps flushing and syncing apart:
//
//   - whoever holds the writing right (an appender in lead, or flushLoop)
//     takes every pending record, writes them with one pwrite (the page
//     cache) and releases the batch's ticket;
//   - syncLoop calls fdatasync whenever some waiter wants a record durable
//     (syncEvery: every batch; otherwise Flush and Checkpoint), once for all
//     records written when it starts (group commit), and releases every
//     waiter those records cover.
//
// So the pwrites of the next batch proceed while an fdatasync runs.
type logWriter struct {
	fsys      FS
	dir       string
	node      string
	segSize   int64
	minFree   int64
	resource  string
	logger    *slog.Logger
	onRotate  func(sealed SegmentInfo)
	syncEvery bool // every written batch is synced at once (Options.Sync)

	mu      sync.Mutex
	cond    *sync.Cond // flushLoop waits here for records or rotations
	queue   []*entry
	cur     *ticket
	rotReq  []chan error
	closing bool
	err     error // sticky: the log can no longer be written
	// writing is the right to write to the segment: held by an appender
	// writing its batch itself, or by flushLoop.
	writing   bool
	rotFailed bool // rotation at the size threshold failed; retried after the next batch

	// Owned by whoever is writing; changed under mu so Status can read them.
	f       File
	segs    []SegmentInfo // every segment known; the last is current
	written int64         // bytes written to the current segment
	lastSeq uint64        // last record written
	lastPos Position      // end of the last record written

	// The sync stage, under mu.
	syncCond  *sync.Cond    // syncLoop waits here for wantSeq > durable.Seq
	durable   Position      // every record up to durable.Seq was fdatasync'd
	wantSeq   uint64        // highest record some waiter wants durable
	durableCh chan struct{} // closed and replaced when durable moves or the log fails
	syncStop  bool          // set by close once flushLoop has ended
	syncEnded bool          // syncLoop has returned
	// syncMu is held by syncLoop while it syncs a file outside mu, so a
	// rotation does not close the old segment under it.
	syncMu sync.Mutex

	loopDone chan struct{}
	syncDone chan struct{}
	buf      []byte   // record headers of the batch being written
	iov      [][]byte // what the batch's pwritev writes
	scratch  []byte   // the batch in one piece, for a File without pwritev

	// Free space of the log filesystem, owned by whoever is writing:
	// statfs runs again when the last answer is older than statfsMaxAge,
	// or the bytes written since could bring it near the minimum.
	statfsMaxAge time.Duration
	availBytes   int64 // statfs answer at availAt
	availAt      time.Time
	sinceStatfs  int64 // bytes written since availAt
}

// backgroundSyncBytes of unsynced log start an fdatasync in the background.
const backgroundSyncBytes = 16 << 20

// Limits of the cached free-space figure (see logWriter.statfsMaxAge).
const (
	defaultStatfsMaxAge = 50 * time.Millisecond
	statfsMaxBytes      = 8 << 20
)

// startWriter starts a writer appending to the open, empty segment f (the
// last of segs) after record lastSeq. Everything up to lastPos must be
// durable.
func startWriter(w *logWriter, f File, segs []SegmentInfo, lastSeq uint64, lastPos Position) *logWriter {
	w.cond = sync.NewCond(&w.mu)
	w.syncCond = sync.NewCond(&w.mu)
	w.f = f
	w.segs = segs
	w.lastSeq = lastSeq
	w.lastPos = lastPos
	w.durable = lastPos
	w.durableCh = make(chan struct{})
	w.loopDone = make(chan struct{})
	w.syncDone = make(chan struct{})
	w.statfsMaxAge = defaultStatfsMaxAge
	go w.flushLoop()
	go w.syncLoop()
	return w
}

func (w *logWriter) segPath(n SegmentName) string { return filepath.Join(w.dir, n.String()) }

func (w *logWriter) current() SegmentName { return w.segs[len(w.segs)-1].Name }

// append queues entries (in order, contiguously) and returns the ticket of
// their batch. The caller then calls lead (outside its own locks), which
// writes the batch unless another goroutine is writing and takes it.
func (w *logWriter) append(es []*entry) *ticket {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil || w.closing {
		t := &ticket{done: make(chan struct{}), err: w.err}
		if t.err == nil {
			t.err = errClosed
		}
		close(t.done)
		return t
	}
	w.queue = append(w.queue, es...)
	if w.cur == nil {
		w.cur = &ticket{done: make(chan struct{})}
	}
	return w.cur
}

// lead writes the queued batch in the calling goroutine if nobody is
// writing; otherwise the writer (or the flush loop after it) takes it.
// Handing every batch to the flush loop instead would make each write wait
// until the scheduler runs that goroutine, behind every runnable writer.
func (w *logWriter) lead() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.writing || len(w.queue) == 0 {
		return
	}
	// Batches queued meanwhile are written here too (a few at most, to
	// bound this caller's delay), which saves waking another goroutine.
	for range 4 {
		if len(w.queue) == 0 || w.flushLoopWork() || w.closing {
			break
		}
		q, t := w.queue, w.cur
		w.queue, w.cur = nil, nil
		w.writing = true
		w.mu.Unlock()
		t.err = w.writeBatch(q)
		close(t.done)
		w.mu.Lock()
		w.writing = false
	}
	if len(w.queue) > 0 || w.flushLoopWork() || w.closing {
		w.cond.Signal()
	}
}

// flushLoopWork says whether the flush loop has a rotation to do. Call with
// mu held.
func (w *logWriter) flushLoopWork() bool {
	return len(w.rotReq) > 0 || (w.written >= w.segSize && !w.rotFailed)
}

var errClosed = errors.New("the replicated device is closed")

// rotate asks the flush loop to seal the current segment and start a new
// one, and waits for it.
func (w *logWriter) rotate() error {
	ch := make(chan error, 1)
	w.mu.Lock()
	if w.err != nil || w.closing {
		err := w.err
		w.mu.Unlock()
		if err == nil {
			err = errClosed
		}
		return err
	}
	w.rotReq = append(w.rotReq, ch)
	w.cond.Signal()
	w.mu.Unlock()
	return <-ch
}

// close drains the queue, stops the flush loop, then the sync loop (after
// the syncs already asked for), and closes the segment. It neither syncs
// what nobody asked to be durable nor seals the segment.
func (w *logWriter) close() error {
	w.mu.Lock()
	if w.closing {
		w.mu.Unlock()
		<-w.loopDone
		<-w.syncDone
		return nil
	}
	w.closing = true
	w.cond.Signal()
	w.mu.Unlock()
	<-w.loopDone
	w.mu.Lock()
	w.syncStop = true
	w.syncCond.Signal()
	w.mu.Unlock()
	<-w.syncDone
	return w.f.Close()
}

// syncLoop is the second stage of the writer: it makes the written records
// durable when some waiter wants them so (see waitDurable).
func (w *logWriter) syncLoop() {
	defer close(w.syncDone)
	w.mu.Lock()
	defer w.mu.Unlock()
	for {
		for !w.syncStop && (w.err != nil || w.wantSeq <= w.durable.Seq || w.lastPos.Seq <= w.durable.Seq) {
			w.syncCond.Wait()
		}
		if w.err != nil || w.wantSeq <= w.durable.Seq || w.lastPos.Seq <= w.durable.Seq {
			// Stopping, and nothing (more) can be synced.
			w.syncEnded = true
			w.releaseDurable()
			return
		}
		// Every record up to target is in the file f: one fdatasync makes
		// all of them durable, whatever is written meanwhile.
		target, f := w.lastPos, w.f
		w.syncMu.Lock()
		w.mu.Unlock()
		err := f.Sync()
		w.syncMu.Unlock()
		w.mu.Lock()
		if err != nil {
			// After a failed fdatasync nothing is known about what
			// reached the disk (fsyncgate); only a restart (recovery)
			// can tell.
			if w.err == nil {
				w.err = fmt.Errorf("fdatasync log segment %s: %w; check the disk, then restart the daemon", w.segPath(SegmentName{Seq: target.Segment, Node: w.node}), err)
				w.logger.Error("transaction log failed; writes are refused until the daemon is restarted", "err", w.err)
			}
		} else if target.Seq > w.durable.Seq {
			w.durable = target
		}
		w.releaseDurable()
	}
}

// releaseDurable wakes every waitDurable. Call with mu held.
func (w *logWriter) releaseDurable() {
	close(w.durableCh)
	w.durableCh = make(chan struct{})
}

// waitDurable waits until every record up to seq is durable, asking the
// sync stage for an fdatasync if none that covers it is under way. seq may
// lie beyond what is written yet: the sync stage then syncs as soon as
// records up to it are written. Concurrent waiters share
// fdatasyncs. It returns at once when seq is durable already, and the
// sticky error if the log failed before seq became durable.
func (w *logWriter) waitDurable(seq uint64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for {
		if seq <= w.durable.Seq {
			return nil
		}
		if w.err != nil {
			return w.err
		}
		if w.syncEnded {
			return errClosed
		}
		if seq > w.wantSeq {
			w.wantSeq = seq
			w.syncCond.Signal()
		}
		ch := w.durableCh
		w.mu.Unlock()
		<-ch
		w.mu.Lock()
	}
}

// flush waits until every record written so far is durable (Flush). It
// reports a failed log even when nothing is pending.
func (w *logWriter) flush() error {
	w.mu.Lock()
	seq, err := w.lastSeq, w.err
	w.mu.Unlock()
	if err != nil {
		return err
	}
	return w.waitDurable(seq)
}

// lastPosition returns the end of the durable prefix of the log: what may
// be shipped to peers and what an applied position may claim.
func (w *logWriter) lastPosition() Position {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.durable
}

// writtenPosition returns the end of the last record written to the log
// file (durable or not).
func (w *logWriter) writtenPosition() Position {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastPos
}

// flushLoop writes the batches no appender is writing itself, rotates the
// segment (at the size threshold and when asked) and drains the queue on
// close.
func (w *logWriter) flushLoop() {
	defer close(w.loopDone)
	for {
		w.mu.Lock()
		for w.writing || (len(w.queue) == 0 && !w.flushLoopWork() && !w.closing) {
			w.cond.Wait()
		}
		if len(w.queue) == 0 && len(w.rotReq) == 0 && w.closing {
			w.mu.Unlock()
			return
		}
		q, t, rot := w.queue, w.cur, w.rotReq
		w.queue, w.cur, w.rotReq = nil, nil, nil
		w.writing = true
		w.mu.Unlock()

		if len(q) > 0 {
			t.err = w.writeBatch(q)
			close(t.done)
		}
		var rotErr error
		if len(rot) > 0 || w.written >= w.segSize {
			rotErr = w.rotateNow(len(rot) > 0)
			if rotErr != nil {
				w.logger.Error("cannot rotate the transaction log; writing on to the current segment", "segment", w.current(), "err", rotErr)
			}
			for _, ch := range rot {
				ch <- rotErr
			}
		}
		w.mu.Lock()
		w.writing = false
		w.rotFailed = rotErr != nil && w.written >= w.segSize
		w.mu.Unlock()
	}
}

// fail makes err sticky: nothing can be appended any more.
func (w *logWriter) fail(err error) error {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	err = w.err
	w.releaseDurable()
	w.mu.Unlock()
	w.logger.Error("transaction log failed; writes are refused until the daemon is restarted", "err", err)
	return err
}

func (w *logWriter) sticky() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (w *logWriter) noSpace(need int, cause error) error {
	if cause != nil {
		return fmt.Errorf("%w: the log directory %s of resource %s is full (%v); free space there or delete applied segments with `tharsis log-delete %s`",
			blockdev.ErrNoSpace, w.dir, w.resource, cause, w.resource)
	}
	return fmt.Errorf("%w: the log directory %s of resource %s has too little free space for %d more bytes (minimum free %d); free space there or delete applied segments with `tharsis log-delete %s`",
		blockdev.ErrNoSpace, w.dir, w.resource, need, w.minFree, w.resource)
}

// writeBatch writes the records of q (with syncEvery, it also asks the sync
// stage to make them durable). On failure nothing of q is left in the
// segment.
func (w *logWriter) writeBatch(q []*entry) error {
	err := w.writeBatchOnce(q)
	if err != nil {
		for _, e := range q {
			e.pos = Position{} // not logged
		}
	}
	return err
}

func (w *logWriter) writeBatchOnce(q []*entry) error {
	if err := w.sticky(); err != nil {
		return err
	}
	seg := w.current()
	start := w.written
	buf := w.buf[:0]
	seq := w.lastSeq
	// A record may only claim what an fdatasync has really covered.
	synced := w.durableIn(seg.Seq)
	// Headers go to buf, payloads are written from the appenders' buffers
	// (pwritev): no copy of the data.
	var size int64
	for _, e := range q {
		seq++
		e.rec.Segment, e.rec.Seq, e.rec.Synced = seg.Seq, seq, synced
		var err error
		if buf, err = e.rec.appendHeader(buf); err != nil {
			return fmt.Errorf("encode log record: %w", err)
		}
		size += HeaderSize + int64(len(e.rec.Payload))
		e.pos = Position{Segment: seg.Seq, Offset: start + size, Seq: seq}
	}
	iov := w.iov[:0]
	for i, e := range q {
		iov = append(iov, buf[i*HeaderSize:(i+1)*HeaderSize])
		if len(e.rec.Payload) > 0 {
			iov = append(iov, e.rec.Payload)
		}
	}
	w.buf = buf
	defer func() {
		clear(iov) // do not keep the appenders' buffers
		w.iov = iov[:0]
	}()
	if !w.spaceFor(size) {
		return w.noSpace(int(size), nil)
	}
	n, err := writeVAt(w.f, iov, start, &w.scratch)
	if cap(w.scratch) > 16<<20 {
		w.scratch = nil
	}
	if err == nil && int64(n) != size {
		err = fmt.Errorf("short write (%d of %d bytes)", n, size)
	}
	if err != nil {
		// Leave nothing that could later read as a record.
		if terr := w.f.Truncate(start); terr != nil {
			return w.fail(fmt.Errorf("write log segment %s: %w; cutting the failed write failed too: %v", w.segPath(seg), err, terr))
		}
		if isNoSpace(err) {
			return w.noSpace(int(size), err)
		}
		return fmt.Errorf("write log segment %s: %w", w.segPath(seg), err)
	}
	w.sinceStatfs += size
	w.mu.Lock()
	w.written = start + size
	w.lastSeq = seq
	w.lastPos = q[len(q)-1].pos
	cur := &w.segs[len(w.segs)-1]
	if cur.FirstSeq == 0 {
		cur.FirstSeq = q[0].pos.Seq
	}
	cur.LastSeq = seq
	cur.Records += len(q)
	cur.End = w.written
	w.rotFailed = false
	if w.syncEvery && seq > w.wantSeq {
		w.wantSeq = seq
	}
	if unsynced := w.written - w.durableInLocked(seg.Seq); unsynced >= backgroundSyncBytes && w.wantSeq <= w.durable.Seq {
		// Keep the unsynced part of the log short, in the background, so
		// that a Flush or the rotation's fdatasync has little to write.
		w.wantSeq = seq
	}
	if w.wantSeq > w.durable.Seq {
		w.syncCond.Signal()
	}
	w.mu.Unlock()
	return nil
}

// spaceFor says whether n more bytes leave MinFree (and the reserve) free
// on the log filesystem. It asks statfs only when the figure it has is old
// or could be too high; when statfs fails the write is tried anyway (ENOSPC
// from the write itself is handled too).
func (w *logWriter) spaceFor(n int64) bool {
	need := n + w.minFree + spaceReserve
	est := w.availBytes - w.sinceStatfs
	if now := time.Now(); now.Sub(w.availAt) >= w.statfsMaxAge || w.sinceStatfs > statfsMaxBytes || est < need {
		avail, err := w.fsys.Available(w.dir)
		if err != nil {
			w.availAt = time.Time{}
			return true
		}
		w.availBytes, w.availAt, w.sinceStatfs = avail, now, 0
		est = avail
	}
	return est >= need
}

// durableIn returns the offset up to which segment seg is known durable.
func (w *logWriter) durableIn(seg uint64) int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.durableInLocked(seg)
}

func (w *logWriter) durableInLocked(seg uint64) int64 {
	if w.durable.Segment == seg {
		return w.durable.Offset
	}
	return 0
}

// rotateNow seals the current segment with an end marker and continues in a
// new one. The new file is created (and the directory synced) first, so a
// crash leaves either the old segment unsealed and newest (an empty later
// segment is removed on recovery) or it sealed and the new one in place.
// An empty segment is rotated only when asked explicitly.
func (w *logWriter) rotateNow(explicit bool) error {
	if err := w.sticky(); err != nil {
		return err
	}
	if w.written == 0 && !explicit {
		return nil
	}
	if w.written == 0 {
		return nil // nothing to seal: the current segment is already fresh
	}
	old := w.current()
	next := SegmentName{Seq: old.Seq + 1, Node: w.node}
	nf, err := w.fsys.Create(w.segPath(next))
	if err != nil {
		return fmt.Errorf("create log segment: %w", err)
	}
	undo := func() {
		nf.Close()
		w.fsys.Remove(w.segPath(next))
	}
	if err := w.fsys.SyncDir(w.dir); err != nil {
		undo()
		return fmt.Errorf("sync log directory %s: %w", w.dir, err)
	}
	// The marker claims only what is durable already; its own fdatasync
	// then covers the rest of the segment before anything is written to
	// the next one.
	marker := Record{Kind: KindSegmentEnd, Segment: old.Seq, Seq: w.lastSeq + 1, Synced: w.durableIn(old.Seq)}
	b, _ := marker.AppendBinary(nil)
	if n, err := w.f.WriteAt(b, w.written); err != nil || n != len(b) {
		if terr := w.f.Truncate(w.written); terr != nil {
			undo()
			return w.fail(fmt.Errorf("write segment-end marker to %s: %v; cutting it failed too: %w", w.segPath(old), err, terr))
		}
		undo()
		return fmt.Errorf("write segment-end marker to %s: %w", w.segPath(old), err)
	}
	if err := w.f.Sync(); err != nil {
		undo()
		return w.fail(fmt.Errorf("fdatasync log segment %s: %w; check the disk, then restart the daemon", w.segPath(old), err))
	}
	oldf := w.f
	w.mu.Lock()
	w.f = nf
	w.lastSeq++
	w.lastPos = Position{Segment: old.Seq, Offset: w.written + int64(len(b)), Seq: w.lastSeq}
	cur := &w.segs[len(w.segs)-1]
	cur.Sealed = true
	cur.Records++
	cur.LastSeq = w.lastSeq
	cur.End = w.lastPos.Offset
	sealed := *cur
	w.segs = append(w.segs, SegmentInfo{Name: next})
	w.written = 0
	w.durable = w.lastPos // the marker's fdatasync covered the segment
	w.releaseDurable()
	w.mu.Unlock()
	// A sync of the old segment may still be running in syncLoop.
	w.syncMu.Lock()
	err = oldf.Close()
	w.syncMu.Unlock()
	if err != nil {
		w.logger.Warn("closing sealed log segment", "segment", old, "err", err)
	}
	w.logger.Info("transaction log rotated", "sealed", old.String(), "current", next.String())
	if w.onRotate != nil {
		w.onRotate(sealed)
	}
	return nil
}
