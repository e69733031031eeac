package replicate

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/tharsis/tharsis/blockdev"
)

// Defaults of Options.
const (
	DefaultSegmentSize        = 256 << 20
	DefaultCheckpointInterval = 2 * time.Second
	// chunkSize splits long writes into records.
	chunkSize = 8 << 20
	// DefaultApplyWindow bounds the unapplied window (Options.ApplyWindow).
	DefaultApplyWindow = 64 << 20
)

// Options configure OpenPrimary.
type Options struct {
	Dir      string // log directory of the resource (created if missing)
	Node     string // this node's name, part of segment names
	Resource string // the resource's name, used in messages
	// SegmentSize is the rotation threshold; 0 means DefaultSegmentSize.
	SegmentSize int64
	// MinFree is kept free on the log filesystem: a write that would leave
	// less fails with blockdev.ErrNoSpace.
	MinFree int64
	// CheckpointInterval is how often the applied position is persisted
	// (after flushing the data device); 0 means the default. It is also
	// persisted on every rotation and on Close.
	CheckpointInterval time.Duration
	// Logger gets the attribute resource=Resource added: pass one without.
	Logger *slog.Logger
	FS     FS // nil: OSFS
	// Sync makes every write durable before it is acknowledged: WriteAt
	// returns after the group-committed fdatasync of its record (TOML
	// `sync = true`). Without it (the default) WriteAt returns once the
	// record is written to the log file (the page cache: it survives a kill
	// of the process, not a crash of the machine), and Flush makes every
	// write acknowledged before it durable, the promise of a plain file
	// device with an fdatasync per FLUSH/FUA. Either way the data device
	// is written behind the acknowledgement (apply.go).
	Sync bool
	// ApplyWindow bounds the bytes of records acknowledged but not yet
	// applied to the data device (TOML `apply_window`); a writer waits
	// while it is full. 0 means DefaultApplyWindow.
	ApplyWindow int64
	// ZeroAhead is how far ahead of its records the current log segment
	// is kept written with zeros and fdatasync'd while the log is synced
	// often, so an fdatasync overwrites blocks instead of allocating them
	// (bench/RESULTS.md, "Zeros ahead"). 0 means DefaultZeroAhead, or
	// off where it gains nothing: on a copy-on-write filesystem (btrfs,
	// ZFS), where overwrites allocate too, and on tmpfs; < 0 turns it off.
	ZeroAhead int64
	// MinAppliedByPeers, if set, returns the lowest position applied on
	// every other node of the resource; DeleteApplied keeps what it does
	// not cover. Nil: only this node counts.
	MinAppliedByPeers func() Position
	// Ack makes writes wait for secondaries (ack.go); the zero value:
	// asynchronous.
	Ack AckOptions
	// NoEmergency makes a write that finds the log full (and nothing to
	// delete) fail with blockdev.ErrNoSpace, instead of emergency mode
	// (emergency.go). For tests of the log itself.
	NoEmergency bool
}

// Primary is the replicated blockdev.Device of a resource's primary: every
// WriteAt, Trim and WriteZeroes returns once it is appended to the log;
// with Options.Sync it also waits until the record is durable (group
// commit), otherwise Flush does. The data device is written behind, in log
// order, from the unapplied window (apply.go); reads and Extents see the
// window over the data device, so they see every acknowledged write.
type Primary struct {
	data   blockdev.Device
	opts   Options
	fsys   FS
	logger *slog.Logger
	w      *logWriter

	mu sync.Mutex
	// The unapplied window (apply.go), under mu: every record reserved in
	// the log and not yet applied, in log order, and an index of them by
	// device range for reads.
	win       []*entry
	winHead   uint64     // position of win[0] in winIdx
	winIdx    winIndex   // the records of win by device range
	winBytes  int64      // what win holds (windowCost)
	winLimit  int64      // Options.ApplyWindow
	winCond   *sync.Cond // the applier moved on: writers wait for room, drains for the end
	winWait   int        // goroutines waiting on winCond
	applyKick chan struct{}
	applyStop bool          // the applier returns
	applyDone chan struct{} // closed when it has returned
	applied   Position      // every record up to here is applied
	persisted Position      // applied position on disk
	failed    error         // the data device failed: refuse writes
	closed    bool
	replayed  int

	idxMu sync.Mutex // serialises writeIndex
	book  segBook    // the segment index (segindex.go)

	inflight sync.WaitGroup
	ckMu     sync.Mutex
	kick     chan struct{}
	stop     chan struct{}
	bg       sync.WaitGroup

	damage damageBook

	acks *acks // synchronous acknowledgement (ack.go)

	freeMu     sync.Mutex
	freeFailed time.Time

	// Emergency mode (emergency.go): emMu serializes entering and
	// leaving; emPending and emLeaving (under mu) hold writers back while
	// it switches.
	em        *emergency
	emMu      sync.Mutex
	emPending bool
	emLeaving bool
}

var _ blockdev.Device = (*Primary)(nil)

// OpenPrimary recovers the log in opts.Dir onto data and returns the
// replicated device. It scans the log, cuts a torn tail of the newest
// segment, replays every record after the persisted applied position,
// flushes data, persists the new position, seals the newest segment and
// starts a new one. Every retained segment is read and checked (sealed
// segments are shipped to peers, so damage must surface), except those the
// segment index (segindex.go) lists as checked before and wholly applied:
// so start-up time does not grow with retention. Damage in the log returns
// an error wrapping ErrCorrupt
// that names the segment, the offset and what to do. The Primary owns data
// and closes it in Close.
func OpenPrimary(data blockdev.Device, opts Options) (*Primary, error) {
	if opts.Dir == "" || !validNode(opts.Node) {
		return nil, fmt.Errorf("replicate: need a log directory and a node name of letters, digits, '_', '.', '-' (got dir %q node %q)", opts.Dir, opts.Node)
	}
	if opts.ZeroAhead == 0 {
		opts.ZeroAhead = DefaultZeroAhead
		if _, osfs := opts.FS.(OSFS); (opts.FS == nil || osfs) && zerosAheadUseless(opts.Dir) {
			opts.ZeroAhead = -1
		}
	}
	if opts.SegmentSize <= 0 {
		opts.SegmentSize = DefaultSegmentSize
	}
	if opts.CheckpointInterval <= 0 {
		opts.CheckpointInterval = DefaultCheckpointInterval
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.FS == nil {
		opts.FS = OSFS{}
	}
	if opts.ApplyWindow <= 0 {
		opts.ApplyWindow = DefaultApplyWindow
	}
	p := &Primary{data: data, opts: opts, fsys: opts.FS, logger: opts.Logger.With("resource", opts.Resource),
		kick: make(chan struct{}, 1), stop: make(chan struct{}),
		winLimit: opts.ApplyWindow, applyKick: make(chan struct{}, 1), applyDone: make(chan struct{})}
	p.winCond = sync.NewCond(&p.mu)
	p.acks = newAcks(opts.Ack, p.logger)
	if err := p.recover(); err != nil {
		return nil, err
	}
	em, err := openEmergency(p.fsys, opts.Dir, data.Size())
	if err != nil {
		p.w.close()
		return nil, err
	}
	p.em = em
	if em.st.Active {
		p.logger.Error("EMERGENCY MODE (still): writes go to the disk without the log until the log filesystem has space again", "since", em.st.Since.Format(time.RFC3339))
	}
	go p.applyLoop()
	p.bg.Add(1)
	go p.checkpointLoop()
	return p, nil
}

func (p *Primary) recover() error {
	fsys, dir := p.fsys, p.opts.Dir
	if err := fsys.MkdirAll(dir); err != nil {
		return fmt.Errorf("create log directory: %w", err)
	}
	// A crash during rotation can leave an empty newest segment: drop it.
	names, err := listSegments(fsys, dir)
	if err != nil {
		return fmt.Errorf("list log directory: %w", err)
	}
	for len(names) > 0 {
		last := filepath.Join(dir, names[len(names)-1].String())
		f, err := fsys.Open(last)
		if err != nil {
			return fmt.Errorf("open log segment: %w", err)
		}
		size, err := f.Size()
		f.Close()
		if err != nil || size != 0 {
			break
		}
		if err := fsys.Remove(last); err != nil {
			return fmt.Errorf("remove empty log segment: %w", err)
		}
		names = names[:len(names)-1]
	}
	from, err := ReadApplied(fsys, dir)
	if err != nil {
		return err
	}
	idx, err := readIndex(fsys, dir)
	if err != nil {
		p.logger.Warn("reading and checking every log segment: the segment index is unusable", "err", err)
	}
	start := time.Now()
	res, err := replayLog(dir, p.data, from, ReplayOptions{FS: fsys, Resource: p.opts.Resource, Logger: p.logger, CutTornTail: true, VerifyAll: true, SkipDamagedApplied: true, index: idx})
	if err != nil {
		return p.unappliedDamage(err, names)
	}
	p.replayed = res.n
	if res.n > 0 || res.cut > 0 || res.zero > 0 {
		// zero_bytes_cut: the zeros written ahead of the records (after a
		// machine crash, also unsynced records that never reached the
		// disk, which no flush had made durable).
		p.logger.Info("transaction log replayed", "records", res.n, "bytes", res.bytes, "from", from.String(), "to", res.last.String(),
			"torn_bytes_cut", res.cut, "zero_bytes_cut", res.zero, "took", time.Since(start).Round(time.Millisecond))
	}
	p.logger.Debug("transaction log opened", "segments", len(res.segs), "trusted_from_index", res.trusted, "took", time.Since(start).Round(time.Millisecond))
	if err := p.data.Flush(); err != nil {
		return fmt.Errorf("flush data device after replay: %w", err)
	}

	// Seal the newest segment and start a new one (every restart rotates).
	segs := res.segs
	last := res.last
	if n := len(segs); n > 0 && !segs[n-1].Sealed && segs[n-1].Records > 0 {
		if last, err = sealSegment(fsys, dir, &segs[n-1]); err != nil {
			return err
		}
	}
	// Everything up to the end of the log (the marker included) is applied
	// and flushed.
	if last != from {
		if err := WriteApplied(fsys, dir, last); err != nil {
			return err
		}
	}
	p.applied, p.persisted = last, last

	var cur File
	if n := len(segs); n > 0 && segs[n-1].Records == 0 {
		// The newest segment is empty (its whole content was a torn
		// tail): it is as good as a new one.
		cur, err = fsys.Open(filepath.Join(dir, segs[n-1].Name.String()))
		if err != nil {
			return fmt.Errorf("open log segment: %w", err)
		}
	} else {
		next := SegmentName{Seq: 1, Node: p.opts.Node}
		if n > 0 {
			next.Seq = segs[n-1].Name.Seq + 1
		}
		cur, err = fsys.Create(filepath.Join(dir, next.String()))
		if err == nil {
			err = fsys.SyncDir(dir)
		}
		if err != nil {
			if isNoSpace(err) {
				err = fmt.Errorf("%w: %w", blockdev.ErrNoSpace, err)
			}
			return fmt.Errorf("start log segment %s: %w", next, err)
		}
		segs = append(segs, SegmentInfo{Name: next})
	}
	// Damaged segments hold only applied records now (the newest was
	// sealed above): out of the log with them, to be fetched again.
	if segs, err = p.quarantineDamaged(res.damaged, segs); err != nil {
		return err
	}
	p.w = startWriter(&logWriter{
		fsys: fsys, dir: dir, node: p.opts.Node, segSize: p.opts.SegmentSize, minFree: p.opts.MinFree,
		resource: resName(p.opts.Resource), logger: p.logger, onRotate: func(SegmentInfo) { p.kickCheckpoint() },
		syncEvery: p.opts.Sync, afterRotate: p.writeIndex, zeroAhead: max(0, p.opts.ZeroAhead),
	}, cur, segs, last.Seq, last)
	p.book.load(idx)
	p.writeIndex()
	return nil
}

// sealSegment appends the segment-end marker to the unsealed segment s
// (every record of which is intact) after making what it holds durable,
// cuts the file to the marker's end (freeing the zeros written past it),
// and returns the position after the marker.
func sealSegment(fsys FS, dir string, s *SegmentInfo) (Position, error) {
	path := filepath.Join(dir, s.Name.String())
	f, err := fsys.Open(path)
	if err != nil {
		return Position{}, fmt.Errorf("open log segment: %w", err)
	}
	// What was read may have been only in the page cache (the daemon was
	// killed before a Flush): make it durable before the marker claims so,
	// and before the applied position is persisted.
	err = f.Sync()
	marker := Record{Kind: KindSegmentEnd, Segment: s.Name.Seq, Seq: s.LastSeq + 1, Synced: s.End}
	b, _ := marker.AppendBinary(nil)
	if err == nil {
		_, err = f.WriteAt(b, s.End)
	}
	if err == nil {
		err = f.Truncate(s.End + int64(len(b)))
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		if isNoSpace(err) {
			err = fmt.Errorf("%w: %w", blockdev.ErrNoSpace, err)
		}
		return Position{}, fmt.Errorf("seal log segment %s: %w", path, err)
	}
	s.Sealed, s.Records, s.LastSeq, s.End = true, s.Records+1, marker.Seq, s.End+int64(len(b))
	return Position{Segment: s.Name.Seq, Offset: s.End, Seq: marker.Seq}, nil
}

// Replayed is the number of records replayed when the Primary was opened.
func (p *Primary) Replayed() int { return p.replayed }

// Size implements blockdev.Device.
func (p *Primary) Size() int64 { return p.data.Size() }

// WriteAt implements blockdev.Device: it returns once the write is in the
// log, and with Options.Sync durable in the log (otherwise after the next
// Flush); the data device is written behind. b is copied (the window owns
// the copy): the caller may reuse it at once. A write that cannot be logged
// for lack of space returns an error wrapping blockdev.ErrNoSpace.
func (p *Primary) WriteAt(b []byte, off int64) (int, error) { return p.writeAt(b, off, false) }

var _ blockdev.FUAWriter = (*Primary)(nil)

// WriteAtFUA implements blockdev.FUAWriter: WriteAt that returns once the
// record is durable in the log, whatever Options.Sync says. Its fdatasync
// starts as soon as the record is written, shared with every writer waiting
// meanwhile (group commit), instead of after a later Flush.
func (p *Primary) WriteAtFUA(b []byte, off int64) (int, error) { return p.writeAt(b, off, true) }

func (p *Primary) writeAt(b []byte, off int64, durable bool) (int, error) {
	if err := blockdev.CheckRange(off, int64(len(b)), p.data.Size()); err != nil {
		return 0, err
	}
	if len(b) == 0 {
		return 0, nil
	}
	es := make([]*entry, 0, (len(b)+chunkSize-1)/chunkSize)
	for o := 0; o < len(b); o += chunkSize {
		c := b[o:min(o+chunkSize, len(b))]
		es = append(es, &entry{rec: Record{Kind: KindWrite, Offset: off + int64(o), Length: int64(len(c)), Payload: bytes.Clone(c)}})
	}
	if durable {
		es[len(es)-1].durable = true
	}
	if err := p.do(es); err != nil {
		return 0, err
	}
	return len(b), nil
}

// Resize grows the device to size bytes (`tharsis resize`): the resize is
// logged, so every secondary grows at the same point of the history, and
// applied like a write (the data device must be a blockdev.Resizer with
// room for it). It never shrinks.
func (p *Primary) Resize(size int64) error {
	cur := p.data.Size()
	switch {
	case size%512 != 0:
		return fmt.Errorf("size %d is not a multiple of 512", size)
	case size < cur:
		return fmt.Errorf("the resource has %d bytes; shrinking to %d is not supported", cur, size)
	case size == cur:
		return nil
	}
	if _, ok := p.data.(blockdev.Resizer); !ok {
		return fmt.Errorf("the data device cannot grow")
	}
	if err := p.em.grow(size); err != nil {
		return err
	}
	// The new space reads as zeros on every node (not as whatever each
	// disk held there): the zeroing is logged right after the resize.
	es := []*entry{{rec: Record{Kind: KindResize, Length: size}}, {rec: Record{Kind: KindWriteZeroes, Offset: cur, Length: size - cur}}}
	if err := p.do(es); err != nil {
		return err
	}
	// Synchronous: the device has its new size when Resize returns.
	return p.waitApplied(es[1].pos.Seq)
}

// Trim implements blockdev.Device.
func (p *Primary) Trim(off, length int64) error { return p.zero(KindTrim, off, length) }

// WriteZeroes implements blockdev.Device.
func (p *Primary) WriteZeroes(off, length int64) error { return p.zero(KindWriteZeroes, off, length) }

func (p *Primary) zero(k Kind, off, length int64) error {
	if err := blockdev.CheckRange(off, length, p.data.Size()); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	return p.do([]*entry{{rec: Record{Kind: k, Offset: off, Length: length}}})
}

// do logs es (the window takes them, to be applied behind) and, with
// Options.Sync, waits for their fdatasync (which runs meanwhile).
func (p *Primary) do(es []*entry) error {
	err := p.write(es, false)
	if !errors.Is(err, blockdev.ErrNoSpace) || p.opts.NoEmergency {
		return err
	}
	// The log is full and deleting what every node replayed freed
	// nothing: none of es was logged. Write without the log rather than
	// refuse the write.
	if p.enterEmergency(err) != nil {
		return err
	}
	fresh := make([]*entry, len(es))
	for i, e := range es {
		fresh[i] = &entry{rec: Record{Kind: e.rec.Kind, Offset: e.rec.Offset, Length: e.rec.Length, Payload: e.rec.Payload}, durable: e.durable}
	}
	return p.write(fresh, false)
}

// write is do; mark says es is the emergency mark, logged while other
// writers wait.
func (p *Primary) write(es []*entry, mark bool) error {
	cost := windowCost(es)
	freed := false
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return errClosed
		}
		if p.failed != nil {
			p.mu.Unlock()
			return p.failed
		}
		if !mark && (p.emPending || p.emLeaving) {
			// Emergency mode starts or ends: wait for it.
			p.mu.Unlock()
			p.emMu.Lock()
			p.emMu.Unlock()
			continue
		}
		if !mark && p.inEmergency() {
			p.mu.Unlock()
			retry, err := p.writeEmergency(es)
			if retry {
				continue
			}
			return err
		}
		if p.winBytes > 0 && p.winBytes+cost > p.winLimit {
			// Back-pressure: the window is full until the applier
			// catches up (a write larger than the window waits until it
			// is empty).
			p.winWait++
			p.winCond.Wait()
			p.winWait--
			p.mu.Unlock()
			continue
		}
		// Under p.mu: window order == log order.
		retry, err := p.w.reserve(es)
		if err != nil {
			p.mu.Unlock()
			if !errors.Is(err, blockdev.ErrNoSpace) || mark {
				return err
			}
			if !freed && p.freeSpace() {
				freed = true
				continue // once, with what every node has replayed gone
			}
			return err
		}
		if retry != nil {
			p.mu.Unlock()
			<-retry // the segment rotates
			continue
		}
		p.admit(es, cost)
		p.inflight.Add(1)
		p.mu.Unlock()
		break
	}
	err := p.w.write(es)
	p.logged(es, err == nil)
	p.inflight.Done()
	if err != nil {
		return err
	}
	if last := es[len(es)-1]; p.opts.Sync || last.durable {
		if err := p.w.waitDurable(last.pos.Seq); err != nil {
			return err
		}
	}
	return p.waitAcks(es[len(es)-1].pos.Seq)
}

// Flush implements blockdev.Device: it returns once every record written
// to the log before it is durable. Concurrent callers share one fdatasync;
// it returns at once when nothing is pending (always the case for
// acknowledged writes with Options.Sync). It reports a failure of the log or
// of the data device.
func (p *Primary) Flush() error {
	p.mu.Lock()
	err := p.failed
	p.mu.Unlock()
	if err != nil {
		return err
	}
	if p.inEmergency() {
		if err := p.data.Flush(); err != nil {
			return err
		}
	}
	return p.w.flush()
}

func (p *Primary) kickCheckpoint() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

func (p *Primary) checkpointLoop() {
	defer p.bg.Done()
	t := time.NewTicker(p.opts.CheckpointInterval)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		case <-p.kick:
		}
		if err := p.Checkpoint(); err != nil {
			p.logger.Error("cannot persist the applied position; replay on restart will start further back", "err", err)
		}
		p.saveIndex() // segment sums computed since (never after Close)
		if _, err := p.MaybeLeaveEmergency(false); err != nil {
			p.logger.Warn("cannot leave emergency mode yet", "err", err)
		}
		p.maybeForgetEmergency()
	}
}

// Checkpoint makes the log durable up to the applied position, flushes the
// data device and persists the position (see "Invariants" in the package
// doc). It runs in the background every CheckpointInterval, on rotation and
// on Close; calling it directly is cheap when nothing was applied since.
func (p *Primary) Checkpoint() error {
	p.ckMu.Lock()
	defer p.ckMu.Unlock()
	p.mu.Lock()
	if len(p.win) == 0 && p.failed == nil {
		// Everything logged is applied; cover segment-end markers too.
		if lp := p.w.writtenPosition(); lp.Seq > p.applied.Seq {
			p.applied = lp
		}
	}
	pos, persisted := p.applied, p.persisted
	p.mu.Unlock()
	if pos == persisted {
		return nil
	}
	// Never persist an applied position past the durable end of the log:
	// after a machine crash the log could end before it, and replay would
	// skip (by sequence number) the records logged anew in its place.
	if err := p.w.waitDurable(pos.Seq); err != nil {
		return fmt.Errorf("make the log durable up to the applied position: %w", err)
	}
	if err := p.data.Flush(); err != nil {
		return fmt.Errorf("flush data device: %w", err)
	}
	if err := WriteApplied(p.fsys, p.opts.Dir, pos); err != nil {
		return err
	}
	p.mu.Lock()
	p.persisted = pos
	p.mu.Unlock()
	return nil
}

// freeSpaceEvery bounds how often a full log filesystem makes a write try
// to delete applied segments again after a try that deleted nothing (each
// try checkpoints the data device).
const freeSpaceEvery = time.Second

// freeSpace deletes, at once, every segment that every node has replayed,
// because the log filesystem is full; it reports whether any went.
func (p *Primary) freeSpace() bool {
	p.freeMu.Lock()
	defer p.freeMu.Unlock()
	if time.Since(p.freeFailed) < freeSpaceEvery {
		return false
	}
	removed, err := p.DeleteApplied(true)
	if err != nil {
		p.freeFailed = time.Now()
		p.logger.Warn("the log filesystem is full and no segment can be deleted: writes fail until space is freed", "why", err)
		return false
	}
	p.logger.Warn("the log filesystem was full: deleted the segments every node has replayed", "removed", removed)
	return true
}

// Rotate seals the current segment and starts a new one (`tharsis
// log-rotate`). It does nothing when the current segment is empty.
func (p *Primary) Rotate() error { return p.w.rotate() }

// DeleteApplied removes applied segments (`tharsis log-delete`): the oldest
// one, or with all every one but the current segment (`log-delete-all`). A
// segment counts as applied when the persisted applied position (and
// MinAppliedByPeers, if set) covers all its records. It returns the names
// removed, or an error saying why nothing could be.
func (p *Primary) DeleteApplied(all bool) ([]string, error) {
	if err := p.Checkpoint(); err != nil {
		return nil, err
	}
	p.mu.Lock()
	upto := p.persisted
	p.mu.Unlock()
	if p.opts.MinAppliedByPeers != nil {
		if peers := p.opts.MinAppliedByPeers(); peers.Seq < upto.Seq {
			upto = peers
		}
	}
	w := p.w
	w.mu.Lock()
	defer w.mu.Unlock()
	var removed []string
	var why error
	for len(w.segs) > 1 && (all || len(removed) == 0) {
		s := w.segs[0]
		applied := s.Name.Seq < upto.Segment || (s.LastSeq != 0 && s.LastSeq <= upto.Seq)
		if !applied {
			why = fmt.Errorf("segment %s is not applied yet (records up to %d, applied up to %d%s)",
				s.Name, s.LastSeq, upto.Seq, map[bool]string{true: " on every node", false: ""}[p.opts.MinAppliedByPeers != nil])
			break
		}
		if err := p.fsys.Remove(filepath.Join(p.opts.Dir, s.Name.String())); err != nil {
			why = fmt.Errorf("remove log segment: %w", err)
			break
		}
		removed = append(removed, s.Name.String())
		w.segs = w.segs[1:]
	}
	if len(removed) > 0 {
		if err := p.fsys.SyncDir(p.opts.Dir); err != nil {
			p.logger.Warn("sync log directory after deleting segments", "err", err)
		}
		p.logger.Info("deleted applied log segments", "segments", removed)
		return removed, nil
	}
	if why == nil {
		why = fmt.Errorf("only the current segment %s is left; rotate first with `tharsis log-rotate %s`", w.current(), resName(p.opts.Resource))
	}
	return nil, fmt.Errorf("nothing deleted from the log of %s: %w", resName(p.opts.Resource), why)
}

// Close stops accepting writes, waits for those in flight, applies the
// window, flushes the data device, persists the applied position and closes
// the log and the data device. It does not seal the current segment (the
// next open does).
func (p *Primary) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	p.acks.close() // writes waiting for secondaries fail: not acknowledged
	p.inflight.Wait()
	p.em.rw.Lock() // every emergency write has returned (see writeEmergency)
	p.em.rw.Unlock()
	// A failed data device keeps the rest of the window unapplied: the
	// next open replays it from the log.
	p.drain()
	p.stopApplier()
	close(p.stop)
	p.bg.Wait()
	err := p.Checkpoint()
	if werr := p.w.close(); err == nil {
		err = werr
	}
	p.em.close()
	if derr := p.data.Close(); err == nil {
		err = derr
	}
	return err
}

// CloseSealed is Close for a primary that gives up its role (handover,
// `tharsis secondary`): after the writes in flight are answered and the
// window is applied it makes the log durable, seals the current segment with
// an end marker (when it holds any record), persists the applied position
// past the marker and closes.
// It returns the end of the sealed log: where the next primary must replay
// to exactly.
func (p *Primary) CloseSealed() (Position, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return Position{}, errClosed
	}
	p.closed = true
	p.mu.Unlock()
	p.acks.close() // writes waiting for secondaries fail: not acknowledged
	p.inflight.Wait()
	p.em.rw.Lock() // every emergency write has returned (see writeEmergency)
	p.em.rw.Unlock()
	// The data device must hold everything before the position past the
	// marker is persisted: a failed one keeps the window unapplied, and the
	// log (not sealed then) replays it on the next open.
	derr := p.drain()
	p.stopApplier()
	close(p.stop)
	p.bg.Wait()
	err := p.w.flush()
	if err == nil {
		err = derr
	}
	if err == nil {
		err = p.Checkpoint()
	}
	w := p.w
	if cerr := w.close(); err == nil {
		err = cerr
	}
	w.mu.Lock()
	cur := w.segs[len(w.segs)-1]
	cur.LastSeq, cur.End = w.lastSeq, w.written
	end := w.lastPos
	w.mu.Unlock()
	if err == nil && w.written > 0 && !cur.Sealed {
		if end, err = sealSegment(p.fsys, p.opts.Dir, &cur); err == nil {
			// Index it as the rotation does: the next open (or a
			// promotion after this handover) need not read it.
			w.mu.Lock()
			w.segs[len(w.segs)-1] = cur
			w.mu.Unlock()
			p.writeIndex()
		}
	}
	if err == nil {
		if err = p.data.Flush(); err == nil {
			err = WriteApplied(p.fsys, p.opts.Dir, end)
		}
	}
	p.em.close()
	if derr := p.data.Close(); err == nil {
		err = derr
	}
	if err != nil {
		return Position{}, fmt.Errorf("seal the log of %s: %w", resName(p.opts.Resource), err)
	}
	p.logger.Info("log sealed: this node no longer writes it", "end", end.String())
	return end, nil
}

// SegmentStatus describes one segment for Status.
type SegmentStatus struct {
	Name    string `json:"name"`
	Size    int64  `json:"size"`
	Records int    `json:"records"` // -1: not scanned since the daemon started
	Sealed  bool   `json:"sealed"`
	Applied bool   `json:"applied"`
}

// Status is the state of the log for `tharsis view`.
type Status struct {
	Current   string   `json:"current"`
	Written   Position `json:"written"`   // end of the durable log (what peers may fetch)
	Logged    Position `json:"logged"`    // end of the records in the log file, durable or not (≥ Written)
	Applied   Position `json:"applied"`   // applied to the data device
	Persisted Position `json:"persisted"` // applied position on disk
	// PendingReplay is the number of log bytes after Persisted: what a
	// restart would replay now.
	PendingReplay int64 `json:"pending_replay_bytes"`
	// UnappliedRecords and UnappliedBytes are the records acknowledged (or
	// being logged) and not yet applied to the data device, and the window
	// memory they hold (at most ApplyWindow, of ApplyWindow).
	UnappliedRecords int             `json:"unapplied_records"`
	UnappliedBytes   int64           `json:"unapplied_bytes"`
	ApplyWindow      int64           `json:"apply_window_bytes"`
	Segments         []SegmentStatus `json:"segments"`
	Err              string          `json:"error,omitempty"`
}

// Status returns the state of the log.
func (p *Primary) Status() Status {
	p.mu.Lock()
	st := Status{Applied: p.applied, Persisted: p.persisted, UnappliedRecords: len(p.win), UnappliedBytes: p.winBytes, ApplyWindow: p.winLimit}
	if p.failed != nil {
		st.Err = p.failed.Error()
	}
	p.mu.Unlock()
	w := p.w
	w.mu.Lock()
	defer w.mu.Unlock()
	st.Written = w.durable
	st.Logged = w.lastPos
	st.Current = w.current().String()
	if w.err != nil && st.Err == "" {
		st.Err = w.err.Error()
	}
	for _, s := range w.segs {
		st.Segments = append(st.Segments, SegmentStatus{Name: s.Name.String(), Size: s.End, Records: s.Records, Sealed: s.Sealed,
			Applied: s.Name.Seq < st.Persisted.Segment || (s.LastSeq != 0 && s.LastSeq <= st.Persisted.Seq)})
		switch {
		case s.Name.Seq > st.Persisted.Segment:
			st.PendingReplay += s.End
		case s.Name.Seq == st.Persisted.Segment:
			st.PendingReplay += max(0, s.End-st.Persisted.Offset)
		}
	}
	return st
}
