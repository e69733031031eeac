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
	pos Position // end of the record, set when its place is reserved
	// durable asks Primary to return only once the log is durable up to
	// the record (a FUA write), whatever Options.Sync says.
	durable bool

	// The writer's bookkeeping, guarded by logWriter.mu (start, f and hdr
	// belong to the appender between reserve and complete).
	start    int64            // offset of the record in its segment
	f        File             // the segment file
	hdr      [HeaderSize]byte // the encoded header
	wdone    bool             // the appender's pwrite returned
	werr     error            // it failed, or the record was dropped
	resolved bool             // written with every earlier record, or failed
	wake     chan struct{}    // closed once resolved (made by a waiter)
	iov      [2][]byte        // header and payload for pwritev

	// Primary's bookkeeping, guarded by Primary.mu: the record's state in
	// the unapplied window (winReserved, winLogged, winDropped).
	wstate uint8
}

// logWriter appends records to the current segment in two stages, as
// pebble's LogWriter keeps flushing and syncing apart:
//
//   - every appender reserves the place and sequence numbers of its records
//     under a short lock (reserve), writes them itself with one pwritev (the
//     page cache) in parallel with the others, and waits until every earlier
//     record is written too (ordered completion): so a kill of the process
//     never leaves an acknowledged record behind a hole, which recovery
//     would cut as a torn tail;
//   - syncLoop calls fdatasync whenever some waiter wants a record durable
//     (syncEvery: every write; otherwise Flush and Checkpoint), once for all
//     records written contiguously when it starts (group commit), and
//     releases every waiter those records cover.
//
// Holes (records reserved and not yet written) only ever lie after the
// contiguously written end, hence after every offset a record's synced
// field claims: the torn-tail rule of the package doc still applies. A
// failed pwrite fails its record and every later one in flight, and cuts
// the segment back to it once they have all returned (rewind). flushLoop
// rotates the segment, at the size threshold and when asked, once every
// record in flight is written; appenders wait for the rotation.
type logWriter struct {
	fsys     FS
	dir      string
	node     string
	segSize  int64
	minFree  int64
	resource string
	logger   *slog.Logger
	onRotate func(sealed SegmentInfo)
	// afterRotate, if set, runs after each rotation, once appenders may
	// go on (in flushLoop, without mu).
	afterRotate func()
	syncEvery   bool // every written record is synced at once (Options.Sync)
	// zeroAhead, if > 0: how far past the reserved records the current
	// segment is kept written with zeros and fdatasync'd (grow), so that
	// the fdatasync after an append overwrites blocks the file already
	// has instead of allocating them and growing the file (ext4 then
	// commits no metadata for it). Zeros are written only while the log
	// is synced often (syncs of less than zeroSyncMax bytes each);
	// readers take an all-zero tail of the newest segment as its end, and
	// a sealed segment, or one closed cleanly, is cut to its end.
	zeroAhead int64

	mu       sync.Mutex
	cond     *sync.Cond // flushLoop waits here for rotations, and for the records in flight
	rotReq   []chan error
	closing  bool
	err      error // sticky: the log can no longer be written
	rotating bool  // flushLoop waits for the records in flight to rotate: no reservations
	rotDone  chan struct{}
	// rotFailed: rotation at the size threshold failed; retried after the
	// next record.
	rotFailed bool

	// Reservations: records in flight (reserved, not yet resolved), in log
	// order; reserved is the end of the last one in the current segment,
	// resSeq its sequence number.
	inflight []*entry
	reserved int64
	resSeq   uint64
	// rewindErr: a record in flight failed; reservations fail with it until
	// every record in flight has returned and the segment is cut back.
	rewindErr error

	// The written prefix, under mu (flushLoop changes f and segs while
	// nothing is in flight).
	f       File
	segs    []SegmentInfo // every segment known; the last is current
	written int64         // bytes of the current segment written contiguously
	lastSeq uint64        // last record written contiguously
	lastPos Position      // end of the last record written contiguously

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
	// abandoned: close leaves the segment as a kill would (tests' crash).
	abandoned bool

	// Free space of the log filesystem, under mu: statfs runs again when
	// the last answer is older than statfsMaxAge, or the bytes reserved
	// since could bring it near the minimum.
	statfsMaxAge time.Duration
	availBytes   int64 // statfs answer at availAt
	availAt      time.Time
	sinceStatfs  int64 // bytes reserved since availAt

	// Zeros ahead of the records (see grow), under mu: allocated is the
	// offset up to which the current segment is written (records or
	// zeros), and [zeroLo, allocated) is zeros (before zeroLo there may
	// be a hole the records have not reached yet). While grow writes
	// zeros from zeroFrom on, zeroing is open and reservations that
	// would reach zeroFrom wait for it to close;
	// zeroGen counts rewinds (a zero write that straddles one does not
	// count). growMu is held while zeros are written and by the rotation,
	// which cuts the sealed segment to its end: nothing is written past
	// it after.
	growMu    sync.Mutex
	zeroLo    int64 // [zeroLo, allocated) is zeros
	allocated int64
	zeroFrom  int64
	zeroing   chan struct{}
	zeroGen   uint64
	zeroOff   bool // a zero write failed (ENOSPC): none until the next segment
}

// DefaultZeroAhead is how far ahead of the records the current segment is
// kept zeroed (Options.ZeroAhead).
const DefaultZeroAhead = 4 << 20

// zeroSyncMax: zeros are written ahead only after an fdatasync that
// covered less than this. A log synced in larger batches gains little
// from it (the data dominates the sync) and would write twice the bytes.
const zeroSyncMax = 1 << 20

// zeroGap: when the records have caught up with the zeros, the next zeros
// start this far past them, so appenders do not wait for the zero write.
const zeroGap = 128 << 10

// zeroMinFree: no zeros are written ahead while the log filesystem has
// less than this many times zeroAhead free; a log that is nearly full is
// retention's and emergency mode's business.
const zeroMinFree = 16

// zeroChunk is the largest single write of zeros.
const zeroChunk = 1 << 20

// zeros is the source of every zero write.
var zeros [zeroChunk]byte

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
	w.resSeq = lastSeq
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

// reserve gives es (in order, contiguously) their places in the current
// segment and their sequence numbers, and sets their positions. While the
// segment rotates (or zeros are written where they would go) it reserves
// nothing and returns a channel closed when that is over: try again then.
// The caller then calls write.
func (w *logWriter) reserve(es []*entry) (retry <-chan struct{}, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.err != nil:
		return nil, w.err
	case w.closing:
		return nil, errClosed
	case w.rewindErr != nil:
		return nil, w.rewindErr
	case w.rotating:
		return w.rotDone, nil
	case w.reserved >= w.segSize && !w.rotFailed:
		// At the size threshold: nothing more goes into this segment.
		w.startRotation()
		return w.rotDone, nil
	}
	var size int64
	for _, e := range es {
		size += HeaderSize + int64(len(e.rec.Payload))
	}
	if w.zeroing != nil && w.reserved+size > w.zeroFrom {
		// grow is writing zeros where these records would go.
		return w.zeroing, nil
	}
	if !w.spaceFor(size) {
		return nil, w.noSpace(int(size), nil)
	}
	seg := w.current()
	// A record may only claim what an fdatasync has really covered.
	synced := w.durableInLocked(seg.Seq)
	for _, e := range es {
		w.resSeq++
		e.rec.Segment, e.rec.Seq, e.rec.Synced = seg.Seq, w.resSeq, synced
		e.start, e.f = w.reserved, w.f
		w.reserved += HeaderSize + int64(len(e.rec.Payload))
		e.pos = Position{Segment: seg.Seq, Offset: w.reserved, Seq: w.resSeq}
		w.inflight = append(w.inflight, e)
	}
	w.sinceStatfs += size
	return nil, nil
}

// startRotation holds back reservations and wakes flushLoop to rotate. Call
// with mu held.
func (w *logWriter) startRotation() {
	if !w.rotating {
		w.rotating = true
		w.rotDone = make(chan struct{})
		w.cond.Signal()
	}
}

// write writes the reserved records es and waits until they and every
// earlier record are written (with syncEvery, it also asks the sync stage to
// make them durable). On failure none of es is logged (their positions are
// cleared) and nothing of them is left in the segment.
func (w *logWriter) write(es []*entry) error {
	for _, e := range es {
		w.complete(e, w.pwrite(e))
	}
	last := es[len(es)-1]
	w.mu.Lock()
	for !last.resolved {
		if last.wake == nil {
			last.wake = make(chan struct{})
		}
		ch := last.wake
		w.mu.Unlock()
		<-ch
		w.mu.Lock()
	}
	var err error
	for _, e := range es {
		if e.werr != nil && err == nil {
			err = e.werr
		}
	}
	w.mu.Unlock()
	if err != nil {
		for _, e := range es {
			e.pos = Position{} // not logged
		}
	}
	return err
}

// pwrite encodes e's header and writes the record at its place. Headers and
// payloads are written from the appenders' buffers (pwritev): no copy of the
// data.
func (w *logWriter) pwrite(e *entry) error {
	b, err := e.rec.appendHeader(e.hdr[:0])
	if err != nil {
		return fmt.Errorf("encode log record: %w", err)
	}
	iov := append(e.iov[:0], b)
	if len(e.rec.Payload) > 0 {
		iov = append(iov, e.rec.Payload)
	}
	size := HeaderSize + len(e.rec.Payload)
	var scratch []byte
	n, err := writeVAt(e.f, iov, e.start, &scratch)
	e.iov = [2][]byte{} // do not keep the appender's buffer
	if err == nil && n != size {
		err = fmt.Errorf("short write (%d of %d bytes)", n, size)
	}
	if err != nil {
		seg := SegmentName{Seq: e.rec.Segment, Node: w.node}
		if isNoSpace(err) {
			return w.noSpace(size, err)
		}
		return fmt.Errorf("write log segment %s: %w", w.segPath(seg), err)
	}
	return nil
}

// complete records that e's pwrite returned (err) and moves the written
// prefix over every record in flight that is written.
func (w *logWriter) complete(e *entry, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	e.wdone, e.werr = true, err
	if err != nil && w.rewindErr == nil {
		w.rewindErr = err
	}
	n := 0
	for _, x := range w.inflight {
		if !x.wdone || x.werr != nil {
			break
		}
		n++
	}
	if n > 0 {
		done := w.inflight[:n]
		last := done[n-1]
		w.written = last.pos.Offset
		w.lastSeq = last.pos.Seq
		w.lastPos = last.pos
		cur := &w.segs[len(w.segs)-1]
		if cur.FirstSeq == 0 {
			cur.FirstSeq = done[0].pos.Seq
		}
		cur.LastSeq = w.lastSeq
		cur.Records += n
		cur.End = w.written
		w.rotFailed = false
		for i, x := range done {
			if x.durable && x.pos.Seq > w.wantSeq {
				// A FUA write: its fdatasync starts now, not once its
				// appender comes back to wait for it (waitDurable).
				w.wantSeq = x.pos.Seq
			}
			w.resolve(x)
			done[i] = nil
		}
		w.inflight = w.inflight[n:]
		if w.syncEvery && w.lastSeq > w.wantSeq {
			w.wantSeq = w.lastSeq
		}
		if unsynced := w.written - w.durableInLocked(cur.Name.Seq); unsynced >= backgroundSyncBytes && w.wantSeq <= w.durable.Seq {
			// Keep the unsynced part of the log short, in the background,
			// so that a Flush or the rotation's fdatasync has little to
			// write.
			w.wantSeq = w.lastSeq
		}
		if w.wantSeq > w.durable.Seq {
			w.syncCond.Signal()
		}
	}
	if w.rewindErr != nil {
		w.rewindLocked()
	}
	if len(w.inflight) == 0 && (w.rotating || w.closing) {
		w.cond.Broadcast()
	}
}

// rewindLocked, once every record in flight has returned after one failed,
// fails them all and cuts the segment back to the written prefix, so
// nothing of them could later read as a record. Call with mu held.
func (w *logWriter) rewindLocked() {
	for _, x := range w.inflight {
		if !x.wdone {
			return
		}
	}
	cause := w.rewindErr
	w.rewindErr = nil
	if len(w.inflight) > 0 {
		if terr := w.inflight[0].f.Truncate(w.written); terr != nil && w.err == nil {
			w.err = fmt.Errorf("%w; cutting the failed write from log segment %s failed too: %v; check the disk, then restart the daemon",
				cause, w.segPath(w.current()), terr)
			w.logger.Error("transaction log failed; writes are refused until the daemon is restarted", "err", w.err)
			w.releaseDurable()
		}
	}
	for i, x := range w.inflight {
		if x.werr == nil {
			x.werr = fmt.Errorf("an earlier record could not be logged: %w", cause)
		}
		w.resolve(x)
		w.inflight[i] = nil
	}
	w.inflight = w.inflight[:0]
	w.reserved = w.written
	w.resSeq = w.lastSeq
	// The cut took the zeros ahead too.
	w.allocated = min(w.allocated, w.written)
	w.zeroLo = 0
	w.zeroGen++
}

// resolve wakes e's waiter. Call with mu held.
func (w *logWriter) resolve(e *entry) {
	e.resolved = true
	if e.wake != nil {
		close(e.wake)
	}
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
	w.cond.Broadcast()
	w.mu.Unlock()
	return <-ch
}

// close refuses new records, waits for those in flight, stops the flush
// loop, then the sync loop (after the syncs already asked for), cuts the
// zeros written ahead, and closes the segment. It neither syncs what nobody
// asked to be durable nor seals the segment.
func (w *logWriter) close() error {
	w.mu.Lock()
	if w.closing {
		w.mu.Unlock()
		<-w.loopDone
		<-w.syncDone
		return nil
	}
	w.closing = true
	w.cond.Broadcast()
	w.mu.Unlock()
	<-w.loopDone
	w.mu.Lock()
	w.syncStop = true
	w.syncCond.Signal()
	w.mu.Unlock()
	<-w.syncDone
	w.growMu.Lock()
	defer w.growMu.Unlock()
	w.mu.Lock()
	written, failed := w.written, w.err != nil
	w.mu.Unlock()
	if size, err := w.f.Size(); err == nil && size > written && !failed && !w.abandoned {
		// The zeros ahead are not left behind (nor those of a zero write
		// a rewind or ENOSPC cut short): a closed segment's size is its
		// end, as a crash's are cut by the next open.
		if err := w.f.Truncate(written); err != nil {
			w.logger.Warn("cannot cut the zeros written ahead from the log segment; the next open cuts them", "segment", w.current(), "err", err)
		}
	}
	return w.f.Close()
}

// syncLoop is the sync stage: it fdatasyncs the segment to make records
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
		target, f, before := w.lastPos, w.f, w.durableInLocked(w.lastPos.Segment)
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
		if w.zeroAhead > 0 && err == nil && target.Offset-before < zeroSyncMax && w.wantsZeros() {
			w.mu.Unlock()
			w.grow()
			w.mu.Lock()
		}
	}
}

// wantsZeros says whether less than half of zeroAhead is left zeroed past
// the reserved records. Call with mu held.
func (w *logWriter) wantsZeros() bool {
	return w.zeroAhead > 0 && !w.zeroOff && w.err == nil && !w.closing &&
		w.reserved+w.zeroAhead/2 > w.allocated && w.allocated < w.segSize &&
		w.availBytes-w.sinceStatfs >= zeroMinFree*w.zeroAhead
}

// zeroCredit returns the bytes of zeros past the reserved records: appends
// into them take no more space. Call with mu held.
func (w *logWriter) zeroCredit() int64 {
	return max(0, w.allocated-max(w.reserved, w.zeroLo))
}

// grow writes zeros ahead of the reserved records of the current segment,
// up to zeroAhead past them (not past the segment size), and fdatasyncs
// them, when less than half of that is left (wantsZeros). It runs in the
// sync stage after an fdatasync (before the first, nothing says how the
// log is synced, nor how much room its filesystem has). Appenders go on
// meanwhile below the zeros; one that would reach them waits (reserve).
// Failure (ENOSPC) costs only the gain: the records are then plain
// appends, until the next segment. Call without mu.
func (w *logWriter) grow() {
	w.growMu.Lock()
	defer w.growMu.Unlock()
	w.mu.Lock()
	if !w.wantsZeros() {
		w.mu.Unlock()
		return
	}
	f, gen := w.f, w.zeroGen
	from := max(w.allocated, w.reserved+min(zeroGap, w.zeroAhead/4))
	to := min(w.reserved+w.zeroAhead, w.segSize)
	if to <= from {
		w.mu.Unlock()
		return
	}
	w.zeroFrom, w.zeroing = from, make(chan struct{})
	w.mu.Unlock()
	err := writeZeros(f, from, to)
	w.mu.Lock()
	close(w.zeroing) // appenders may go on while the zeros are synced
	w.zeroing = nil
	w.sinceStatfs += to - from // (what a statfs has not seen yet is not free)
	if err != nil || gen != w.zeroGen {
		if err != nil && gen == w.zeroGen {
			w.zeroOff = true
			w.logger.Debug("cannot write zeros ahead of the log records; appending without", "segment", w.current(), "from", from, "to", to, "err", err)
		}
		// (After a rewind, which cut the segment, what is zeroed is
		// unknown: the next grow starts again from the records.)
		w.mu.Unlock()
		return
	}
	// The fdatasync covers every record written before it, too.
	target := w.lastPos
	w.mu.Unlock()
	err = f.Sync()
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		// As in syncLoop: after a failed fdatasync nothing is known about
		// what reached the disk, the records included.
		if w.err == nil {
			w.err = fmt.Errorf("fdatasync log segment %s: %w; check the disk, then restart the daemon", w.segPath(w.current()), err)
			w.logger.Error("transaction log failed; writes are refused until the daemon is restarted", "err", w.err)
		}
		w.releaseDurable()
		return
	}
	if target.Seq > w.durable.Seq {
		w.durable = target
		w.releaseDurable()
	}
	if gen == w.zeroGen {
		if from > w.allocated {
			w.zeroLo = from // a gap before the zeros: no credit for it
		}
		w.allocated = to
	}
}

// writeZeros writes zeros over [from, to) of f.
func writeZeros(f File, from, to int64) error {
	for off := from; off < to; {
		n, err := f.WriteAt(zeros[:min(to-off, zeroChunk)], off)
		if err != nil {
			return err
		}
		off += int64(n)
	}
	return nil
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

// flushLoop rotates the segment (at the size threshold and when asked) once
// every record in flight is written, holding back new reservations
// meanwhile, and waits for the records in flight on close.
func (w *logWriter) flushLoop() {
	defer close(w.loopDone)
	w.mu.Lock()
	defer w.mu.Unlock()
	for {
		for len(w.rotReq) == 0 && !w.closing && !w.rotating {
			w.cond.Wait()
		}
		rot := w.rotReq
		w.rotReq = nil
		w.startRotation()
		for len(w.inflight) > 0 {
			w.cond.Wait()
		}
		if len(rot) == 0 && w.closing {
			w.rotating = false
			close(w.rotDone)
			return
		}
		// Nothing is in flight and nothing can be reserved: the rotation
		// owns the segment.
		w.mu.Unlock()
		rotErr := w.rotateNow(len(rot) > 0)
		if rotErr != nil {
			w.logger.Error("cannot rotate the transaction log; writing on to the current segment", "segment", w.current(), "err", rotErr)
		}
		for _, ch := range rot {
			ch <- rotErr
		}
		w.mu.Lock()
		w.rotating = false
		close(w.rotDone)
		w.rotFailed = rotErr != nil && w.written >= w.segSize
		if rotErr == nil && w.afterRotate != nil {
			w.mu.Unlock()
			w.afterRotate()
			w.mu.Lock()
		}
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

// spaceFor says whether n more bytes leave MinFree (and the reserve) free
// on the log filesystem. Call with mu held. It asks statfs only when the figure it has is old
// or could be too high; when statfs fails the write is tried anyway (ENOSPC
// from the write itself is handled too).
//
// Zeros written past the reserved records (grow) count as free: the
// records written over them take no more space, so a full filesystem
// refuses the same writes as without them.
func (w *logWriter) spaceFor(n int64) bool {
	need := n + w.minFree + spaceReserve - w.zeroCredit()
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
	// No growing of the old segment after it is cut to its end below.
	w.growMu.Lock()
	defer w.growMu.Unlock()
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
	// the next one. The segment is cut to its end (the zeros written
	// past it are freed): a sealed segment's size is its end.
	marker := Record{Kind: KindSegmentEnd, Segment: old.Seq, Seq: w.lastSeq + 1, Synced: w.durableIn(old.Seq)}
	b, _ := marker.AppendBinary(nil)
	n, err := w.f.WriteAt(b, w.written)
	if err == nil && n != len(b) {
		err = fmt.Errorf("short write (%d of %d bytes)", n, len(b))
	}
	if err == nil {
		err = w.f.Truncate(w.written + int64(len(b)))
	}
	if err != nil {
		if terr := w.f.Truncate(w.written); terr != nil {
			undo()
			return w.fail(fmt.Errorf("write segment-end marker to %s: %v; cutting it failed too: %w", w.segPath(old), err, terr))
		}
		w.mu.Lock()
		w.allocated, w.zeroLo = min(w.allocated, w.written), 0 // the cut took the zeros ahead
		w.mu.Unlock()
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
	w.allocated, w.zeroLo = 0, 0
	w.zeroOff = false
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
	w.reserved = 0
	w.resSeq = w.lastSeq
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
