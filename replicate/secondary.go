package replicate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"golang.org/x/time/rate"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/tharsis/tharsis/blockdev"
)

// Defaults of SecondaryOptions.
const (
	DefaultRetryInterval = 2 * time.Second
	DefaultChunkSize     = 1 << 20
)

// stateFile holds a secondary's switches and sync state (JSON, replaced
// atomically) beside its segments and its replay position ("applied").
const stateFile = "secondary.json"

// SecondaryOptions configure OpenSecondary.
type SecondaryOptions struct {
	// SyncLimiter and FetchLimiter, if set, bound the bytes per second a
	// full (or emergency) sync copies and the log fetched (tokens are
	// bytes; one limiter may be shared by every resource of the node).
	SyncLimiter, FetchLimiter *rate.Limiter

	Dir      string // log directory of the resource on this node (created if missing)
	Node     string // this node's name
	Resource string
	Secret   []byte // the cluster secret (contents of secret_file)
	TLS      *TLS   // see Auth
	// Peers returns the nodes to fetch from, most preferred first (the
	// resource's connect list, or just the primary). It is called on every
	// (re)connect, so it may change while running. This node must not be
	// in it.
	Peers func() []Peer
	// Logger gets the attribute resource=Resource added: pass one without.
	Logger *slog.Logger
	// RetryInterval is the pause between connection attempts and how often
	// a more preferred peer is probed while fetching from a fallback; 0
	// means DefaultRetryInterval.
	RetryInterval time.Duration
	// CheckpointInterval is how often the replay position is persisted
	// (after flushing the data device) while replaying; 0 means
	// DefaultCheckpointInterval. It is also persisted whenever replay
	// catches up and on shutdown.
	CheckpointInterval time.Duration
	// ChunkSize is the chunk size of a full sync; 0 means DefaultChunkSize.
	ChunkSize int
	// MinAppliedByPeers, if set, returns the lowest position applied by
	// the nodes that fetch from this one (cascading); DeleteApplied keeps
	// what it does not cover. Nil: only this node counts.
	MinAppliedByPeers func() Position
	// WasPrimary says the directory was a primary's log until now (a
	// handover or resignation): the data device holds every record of the
	// log, so the node starts out consistent, whatever state it persisted
	// when it last was a secondary.
	WasPrimary bool
	// VerifyInterval, if > 0, runs an online verify (no repair) that often
	// (TOML `verify_interval`); VerifyRate bounds its bytes compared per
	// second (0: DefaultVerifyRate). See verify.go.
	VerifyInterval time.Duration
	VerifyRate     int64
	// Detached: the data device is detached (`tharsis detach`): the log is
	// fetched, but nothing is replayed, synced or verified (none of which
	// may touch the device) until the Secondary is opened attached.
	Detached bool
	// Designation, if set, returns the designation of the resource this
	// node follows (ok false: none yet): every fetch says it, so a peer of
	// an older designation refuses to ship (its log may be the losing side
	// of a fork) and learns the newer one, and such peers are not probed
	// as preferred sources.
	Designation func() (d Designation, ok bool)
	// fsys (tests; nil: OSFS) is what opening reads the log and the
	// segment index through.
	fsys FS
}

// secondaryState is what stateFile holds.
type secondaryState struct {
	FetchPaused  bool `json:"fetch_paused"`
	ReplayPaused bool `json:"replay_paused"`
	SyncPaused   bool `json:"sync_paused"`
	// Consistent: the data device equals the source's after a prefix of
	// the log. False from the start of a full sync until ConsistentAt is
	// replayed.
	Consistent   bool      `json:"consistent"`
	Sync         SyncState `json:"sync,omitempty"`
	SyncStart    Position  `json:"sync_start"`
	SyncChunk    uint64    `json:"sync_chunk"` // chunks done (flushed) by a running sync
	ConsistentAt Position  `json:"consistent_at"`
	// DiscardLog: every local segment must be removed before anything is
	// fetched or replayed again (set by Invalidate: the local log may hold
	// segments of another history).
	DiscardLog bool `json:"discard_log,omitempty"`
	// StoppedAt: replay stopped before an emergency mark of the primary,
	// at this position (consistent, outdated). EmergencySync: invalidate
	// asked for an emergency sync (only the chunks the primary wrote
	// without its log). PassMarksUpTo: replay passes emergency marks up to
	// this record (those an emergency sync covered).
	StoppedAt     *Position `json:"stopped_at,omitempty"`
	EmergencySync bool      `json:"emergency_sync,omitempty"`
	PassMarksUpTo uint64    `json:"pass_marks_up_to,omitempty"`
}

// Secondary fetches a resource's log from its peers into its own log
// directory and replays it onto its data device, independently: both
// positions survive a crash (the fetched log is its own record, the replay
// position is persisted after flushing the data device). A Secondary also
// serves what it fetched to other nodes (Source), and runs a fast full sync
// when it joins or is invalidated.
//
// Its log directory holds, like a primary's, the segment files (byte-for-byte
// copies of the source's, same names; records are verified before they are
// written and fdatasync'd before the fetched position moves, so the fetched
// position is the end of the last good record, found again on open) and
// "applied" (the replay position, JSON). Beside them "secondary.json" holds
// the switches (fetch, replay, sync paused), whether the data device is
// consistent, and the state of a full sync.
//
// Fetching uses the first reachable peer of Options.Peers that holds the log
// it needs, falls back to the next on failure, and every RetryInterval probes
// the more preferred ones to return to the first that is back and not behind.
// A full sync compares SHA-256 checksums (truncated to 16 bytes) of ChunkSize
// chunks, 256 chunks per request, and copies only the chunks that differ
// (pipelined), while fetching goes on; it records the source's applied
// position first and replays the log from there afterwards. The data device
// is consistent (equal to the source's state after some prefix of the log)
// except from the start of a sync until that replay passes the source's log
// end as of the sync's end.
type Secondary struct {
	data   blockdev.Device
	opts   SecondaryOptions
	logger *slog.Logger

	mu        sync.Mutex
	st        secondaryState
	fetched   Position // durable end of the local log
	replayed  Position // applied to the data device
	persisted Position // replay position on disk
	endCh     chan struct{}
	source    string
	sourceEnd Position
	// bestEnd is the furthest log end any peer reported (a fallback
	// source may be behind the primary): the lag is counted to it.
	bestEnd Position
	// lagMarks remember when the source's log end was first seen past
	// each sequence number not yet replayed (increasing seq): the oldest
	// gives the lag in seconds, without comparing clocks.
	lagMarks []lagMark
	// contact is when a source last sent anything (zero: never).
	contact   time.Time
	prog      SyncProgress
	lastSync  *SyncProgress
	fetchErr  string
	replayErr string
	syncErr   string
	running   bool
	closed    bool
	// replayGen changes when a sync resets the replay position, so a
	// replay batch in flight does not overwrite it.
	replayGen uint64

	// damage lists damaged places found in the local log; cut is a
	// damaged place replay asks the fetcher to cut the log at;
	// peerDamaged remembers, per peer, the fetched position at which it
	// reported its own copy damaged (it is not preferred again until the
	// log is fetched past it elsewhere).
	damage       damageBook
	cut          *Position
	peerDamaged  map[string]peerDamage
	replayErrLog repeatLog
	fetchErrLog  repeatLog

	kickFetch  chan struct{}
	kickReplay chan struct{}
	kickSync   chan struct{}
	// cancelStream ends the current fetch stream (pause, preferred peer).
	cancelStream context.CancelFunc

	stateMu sync.Mutex // serialises saveState
	// ckMu serialises writes of the replay position (checkpoints, and a
	// sync resetting it).
	ckMu sync.Mutex

	// applyMu is held while a record is applied to the data device, while
	// a sync writes chunks and while a verify compares (and repairs) them.
	applyMu sync.Mutex

	vf verifier // online verify (verify.go)

	// fetchRate and replayRate count the log bytes fetched and replayed,
	// for the rates in Status.
	fetchRate, replayRate rateWindow
	// fetchLog and fetchWire count the log fetched and its bytes on the
	// network; fetchComp is the compression seen on the current stream.
	fetchLog, fetchWire int64
	fetchComp           string
	// noAccept makes the fetcher act as one of an older release (tests):
	// it never sends Fetch.Accept (nor Fetch.Designation).
	noAccept bool

	// discardLog asks the fetcher to drop the local log (a sync starts
	// before its beginning).
	discardLog bool

	// crashed makes Run return without the final checkpoint (tests).
	crashed bool

	// book is the segment index (segindex.go): the sealed segments
	// fetched and checked whole, which a promotion does not read again.
	// openTail is what opening found of the newest segment, for the
	// fetcher's tally.
	book     segBook
	openTail fetchTally
}

// OpenSecondary opens (or creates) the secondary side of a resource in
// opts.Dir: it finds the end of the fetched log (cutting a torn tail left by
// a crash), reads the replay position and the persisted switches. A node
// that never synced starts out inconsistent and needing a full sync (or
// FakeSync). The Secondary owns data and closes it in Close.
func (o *SecondaryOptions) auth() Auth { return Auth{Secret: o.Secret, TLS: o.TLS} }

func OpenSecondary(data blockdev.Device, opts SecondaryOptions) (*Secondary, error) {
	if opts.Dir == "" || !validNode(opts.Node) {
		return nil, fmt.Errorf("replicate: need a log directory and a node name of letters, digits, '_', '.', '-' (got dir %q node %q)", opts.Dir, opts.Node)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.RetryInterval <= 0 {
		opts.RetryInterval = DefaultRetryInterval
	}
	if opts.CheckpointInterval <= 0 {
		opts.CheckpointInterval = DefaultCheckpointInterval
	}
	if opts.ChunkSize <= 0 {
		opts.ChunkSize = DefaultChunkSize
	}
	if opts.ChunkSize < 4096 || opts.ChunkSize > MaxChunkSize {
		return nil, fmt.Errorf("replicate: sync chunk size %d is not within 4 KiB..%d", opts.ChunkSize, MaxChunkSize)
	}
	if opts.Peers == nil {
		opts.Peers = func() []Peer { return nil }
	}
	s := &Secondary{data: data, opts: opts, logger: opts.Logger.With("resource", opts.Resource),
		endCh: make(chan struct{}), kickFetch: make(chan struct{}, 1), kickReplay: make(chan struct{}, 1), kickSync: make(chan struct{}, 1),
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create log directory: %w", err)
	}
	b, err := os.ReadFile(filepath.Join(opts.Dir, stateFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		s.st = secondaryState{Sync: SyncNeeded}
	case err != nil:
		return nil, fmt.Errorf("read secondary state: %w", err)
	default:
		if err := json.Unmarshal(b, &s.st); err != nil {
			return nil, fmt.Errorf("%w: secondary state file %s is unreadable (%v); remove it and run `tharsis invalidate %s`",
				ErrCorrupt, filepath.Join(opts.Dir, stateFile), err, resName(opts.Resource))
		}
	}
	if opts.WasPrimary {
		s.st.Consistent, s.st.Sync, s.st.SyncChunk, s.st.SyncStart, s.st.DiscardLog = true, SyncNone, 0, Position{}, false
	}
	s.vf.open(opts.Dir)
	if s.persisted, err = ReadApplied(OSFS{}, opts.Dir); err != nil {
		return nil, err
	}
	s.replayed = s.persisted
	s.openIndex()
	var tail SegmentInfo
	if s.fetched, tail, err = s.recoverFetched(); err != nil {
		return nil, fmt.Errorf("recover the fetched log of %s: %w", resName(opts.Resource), err)
	}
	s.openTail = fetchTally{info: tail, whole: tail.Records > 0}
	s.saveIndex()
	if err := s.saveState(); err != nil {
		return nil, err
	}
	return s, nil
}

// openIndex reads the segment index and keeps the entries whose segment
// file still has the listed size (nothing of them is read).
func (s *Secondary) openIndex() {
	fsys, dir := s.fsys(), s.opts.Dir
	idx, err := readIndex(fsys, dir)
	if err != nil {
		s.logger.Warn("the segment index is unusable; a promotion reads and checks every log segment", "err", err)
	}
	for n, e := range idx {
		f, err := fsys.Open(filepath.Join(dir, n.String()))
		if err == nil {
			var size int64
			size, err = f.Size()
			f.Close()
			if err == nil && size != e.Size {
				err = errors.New("size changed")
			}
		}
		if err != nil {
			delete(idx, n)
		}
	}
	s.book.load(idx)
	s.book.written = nil // the file may list more: written again
}

func (s *Secondary) fsys() FS {
	if s.opts.fsys != nil {
		return s.opts.fsys
	}
	return OSFS{}
}

// saveIndex writes the segment index if it changed. A failure is only
// logged: a promotion then reads more.
func (s *Secondary) saveIndex() {
	if err := s.book.save(s.fsys(), s.opts.Dir); err != nil {
		s.logger.Warn("cannot write the segment index; a promotion reads and checks the segments it would list", "err", err)
	}
}

// forgetIndexed drops the index entries of the segments that match (all
// with nil) before their files are changed or removed.
func (s *Secondary) forgetIndexed(match func(SegmentName) bool) {
	s.book.forget(s.fsys(), s.opts.Dir, match, s.logger)
}

// recoverFetched finds the end of the fetched log: the last good record of
// the newest segment, which is read whole unless the segment index lists it
// (sealed: only its end marker is read). A torn tail (a crash during a fetch
// write) is cut; empty newest segments are removed. It also returns what it
// found of the newest segment; a sealed one is entered in the index.
func (s *Secondary) recoverFetched() (Position, SegmentInfo, error) {
	fsys, dir, res := s.fsys(), s.opts.Dir, s.opts.Resource
	for {
		names, err := listSegments(fsys, dir)
		if err != nil {
			return Position{}, SegmentInfo{}, err
		}
		if len(names) == 0 {
			return Position{}, SegmentInfo{}, nil
		}
		last := names[len(names)-1]
		path := filepath.Join(dir, last.String())
		if e, ok := s.book.entry(last); ok {
			var buf []byte
			if info, ok := trustIndexed(fsys, path, last, e, &buf); ok {
				return Position{Segment: last.Seq, Offset: info.End, Seq: info.LastSeq}, info, nil
			}
			s.forgetIndexed(func(n SegmentName) bool { return n == last })
		}
		f, err := fsys.Open(path)
		if err != nil {
			return Position{}, SegmentInfo{}, err
		}
		size, err := f.Size()
		if err != nil {
			f.Close()
			return Position{}, SegmentInfo{}, err
		}
		info, err := ScanSegment(f, size, last, ScanOptions{Newest: true, Path: path, Resource: res}, nil)
		if err != nil {
			f.Close()
			return Position{}, SegmentInfo{}, err
		}
		if info.Torn > 0 || info.Zero > 0 {
			if info.Torn > 0 {
				s.logger.Warn("cutting the torn tail of the newest fetched segment (it was never reported as fetched)", "segment", path, "offset", info.End, "bytes", info.Torn)
			}
			if err := f.Truncate(info.End); err != nil {
				f.Close()
				return Position{}, SegmentInfo{}, err
			}
			if err := f.Sync(); err != nil {
				f.Close()
				return Position{}, SegmentInfo{}, err
			}
		}
		f.Close()
		if info.Records == 0 {
			if err := fsys.Remove(path); err != nil {
				return Position{}, SegmentInfo{}, err
			}
			continue
		}
		if info.Sealed {
			s.book.add(info)
		}
		return Position{Segment: last.Seq, Offset: info.End, Seq: info.LastSeq}, info, nil
	}
}

// saveState persists s.st; the caller must not hold s.mu.
func (s *Secondary) saveState() error {
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	s.mu.Lock()
	b, _ := json.Marshal(s.st)
	s.mu.Unlock()
	if err := writeFileAtomic(OSFS{}, filepath.Join(s.opts.Dir, stateFile), append(b, '\n')); err != nil {
		return fmt.Errorf("persist secondary state of %s: %w", resName(s.opts.Resource), err)
	}
	return nil
}

// update changes the persisted state with fn and saves it.
func (s *Secondary) update(fn func(st *secondaryState)) error {
	s.mu.Lock()
	fn(&s.st)
	s.mu.Unlock()
	return s.saveState()
}

func kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// Run fetches, replays and syncs until ctx is done, then persists the
// replay position (after flushing the data device) and returns. Errors of
// peers and of the log are logged and shown in Status; Run keeps trying.
func (s *Secondary) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.running || s.closed {
		s.mu.Unlock()
		return errors.New("replicate: secondary already running or closed")
	}
	s.running = true
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, fn := range []func(context.Context){s.fetchLoop, s.replayLoop, s.syncLoop, s.verifyLoop} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(ctx)
		}()
	}
	<-ctx.Done()
	wg.Wait()
	s.mu.Lock()
	s.running = false
	crashed := s.crashed
	s.mu.Unlock()
	if crashed {
		return ctx.Err()
	}
	return s.checkpoint()
}

// Close closes the data device. Call it after Run returned.
func (s *Secondary) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	return s.data.Close()
}

// SetFetchPaused stops (true) or resumes fetching (`tharsis disconnect` /
// `connect`); the switch persists across restarts.
func (s *Secondary) SetFetchPaused(paused bool) error {
	err := s.update(func(st *secondaryState) { st.FetchPaused = paused })
	s.mu.Lock()
	if paused && s.cancelStream != nil {
		s.cancelStream()
	}
	s.mu.Unlock()
	kick(s.kickFetch)
	return err
}

// SetReplayPaused stops or resumes replaying (`pause-replay` /
// `resume-replay`); the switch persists across restarts.
func (s *Secondary) SetReplayPaused(paused bool) error {
	err := s.update(func(st *secondaryState) { st.ReplayPaused = paused })
	kick(s.kickReplay)
	return err
}

// SetSyncPaused stops or resumes a full sync (`pause-sync` /
// `resume-sync`); the switch persists across restarts.
func (s *Secondary) SetSyncPaused(paused bool) error {
	err := s.update(func(st *secondaryState) { st.SyncPaused = paused })
	kick(s.kickSync)
	return err
}

// FakeSync marks the data device consistent without copying anything
// (`tharsis fake-sync`: both disks are known to be identical, e.g. freshly
// zeroed), and cancels a needed or running sync.
func (s *Secondary) FakeSync() error {
	err := s.update(func(st *secondaryState) {
		st.Consistent, st.Sync, st.SyncChunk = true, SyncNone, 0
	})
	kick(s.kickReplay)
	kick(s.kickFetch)
	return err
}

// Invalidate forces a fresh full sync (`tharsis invalidate`): the data
// device is inconsistent until the sync and the replay after it are done.
// The whole local log is discarded first (it may hold another history's
// segments after a split brain: replaying them after the sync would put
// the other side's writes back) and fetched afresh from the sync's start.
func (s *Secondary) Invalidate() error {
	err := s.update(func(st *secondaryState) {
		if st.StoppedAt != nil && !st.EmergencySync {
			// Stopped at the primary's emergency mark: the local log is
			// the primary's, only the chunks it wrote without the log
			// are copied (a second invalidate asks for a full sync).
			st.Consistent, st.Sync, st.SyncChunk, st.SyncStart, st.EmergencySync = false, SyncNeeded, 0, *st.StoppedAt, true
			return
		}
		st.Consistent, st.Sync, st.SyncChunk, st.SyncStart, st.DiscardLog = false, SyncNeeded, 0, Position{}, true
		st.StoppedAt, st.EmergencySync = nil, false
	})
	s.Reconnect()
	kick(s.kickSync)
	return err
}

// Reconnect ends the current fetch stream, so the next one starts with the
// peers Options.Peers returns now (the designated primary changed).
func (s *Secondary) Reconnect() {
	s.mu.Lock()
	s.bestEnd = Position{} // the history may have moved to another node
	if s.cancelStream != nil {
		s.cancelStream()
	}
	s.mu.Unlock()
	kick(s.kickFetch)
}

// Consistent reports whether the data device holds the source's state
// after some prefix of the log.
func (s *Secondary) Consistent() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.Consistent
}

// Positions returns the fetched (durable) and replayed positions.
func (s *Secondary) Positions() (fetched, replayed Position) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fetched, s.replayed
}

// Status returns the replication state of the resource on this node.
func (s *Secondary) Status() ResourceStatus {
	s.mu.Lock()
	rs := ResourceStatus{Resource: s.opts.Resource, Role: RoleSecondary, End: s.fetched, Logged: s.fetched, Applied: s.persisted,
		Consistent: s.st.Consistent, Source: s.source, SourceEnd: s.sourceEnd,
		FetchPaused: s.st.FetchPaused, ReplayPaused: s.st.ReplayPaused, SyncPaused: s.st.SyncPaused, Damage: s.damage.all()}
	if p := s.st.StoppedAt; p != nil && !s.st.EmergencySync {
		at := *p
		rs.StoppedAtMark = &at
	}
	if s.st.Sync != SyncNone {
		p := s.prog
		p.State = s.st.Sync
		p.Start = s.st.SyncStart
		if p.Compared > 0 && !p.Started.IsZero() && p.Compared < p.Total {
			rate := float64(p.Compared) / time.Since(p.Started).Seconds()
			p.ETASeconds = float64(p.Total-p.Compared) / rate
		}
		rs.Sync = &p
		if s.st.Sync == SyncRunning || s.st.Sync == SyncCatchingUp {
			// The log this node needs starts after the sync's start.
			rs.Applied = minPos(s.persisted, s.st.SyncStart)
		}
	}
	if s.lastSync != nil {
		ls := *s.lastSync
		rs.LastSync = &ls
	}
	rs.LagSeconds = s.lagSeconds()
	now := time.Now()
	rs.FetchRate, rs.ReplayRate = s.fetchRate.Rate(now), s.replayRate.Rate(now)
	rs.FetchLogBytes, rs.FetchWireBytes, rs.FetchCompression = s.fetchLog, s.fetchWire, s.fetchComp
	rs.Verify = s.vf.report()
	for _, e := range []string{s.fetchErr, s.replayErr, s.syncErr, s.damagedPeersErr()} {
		if e != "" {
			rs.Err = e
			break
		}
	}
	fetched, replayed, srcEnd := s.fetched, s.replayed, s.sourceEnd
	if s.bestEnd.Seq > srcEnd.Seq {
		srcEnd = s.bestEnd
	}
	s.mu.Unlock()

	names, _ := listSegments(OSFS{}, s.opts.Dir)
	sizes := map[uint64]int64{}
	for _, n := range names {
		var size int64
		if st, err := os.Stat(filepath.Join(s.opts.Dir, n.String())); err == nil {
			size = st.Size()
		}
		sealed := n.Seq < fetched.Segment
		if n.Seq == fetched.Segment {
			size = fetched.Offset
		}
		sizes[n.Seq] = size
		sum := ""
		if sealed {
			sum = s.book.sum(s.opts.Dir, n, size, nil) // saved by the next checkpoint
		}
		rs.Segments = append(rs.Segments, SegmentSummary{Name: n.String(), Size: size, Sealed: sealed, SHA256: sum})
	}
	rs.LagBytes = logDistance(replayed, fetched, sizes) + logDistance(fetched, srcEnd, sizes)
	return rs
}

type lagMark struct {
	seq uint64
	at  time.Time
}

// noteSourceEnd records that the source's log reaches end now; call with
// s.mu held.
func (s *Secondary) noteSourceEnd(end Position) {
	now := time.Now()
	s.contact = now
	n := len(s.lagMarks)
	switch {
	case end.Seq <= s.replayed.Seq:
	case n > 0 && end.Seq <= s.lagMarks[n-1].seq:
	case n > 0 && (now.Sub(s.lagMarks[n-1].at) < 10*time.Millisecond || n >= 4096):
		// Extend the newest mark (over-estimates by at most its age).
		s.lagMarks[n-1].seq = end.Seq
	default:
		s.lagMarks = append(s.lagMarks, lagMark{seq: end.Seq, at: now})
	}
}

// lagSeconds is how long the oldest record known at the source but not yet
// replayed here has been known (0 when caught up). With no source for a
// while it is the time since the last contact: the source may have moved
// on. Call with s.mu held.
func (s *Secondary) lagSeconds() float64 {
	i := 0
	for i < len(s.lagMarks) && s.lagMarks[i].seq <= s.replayed.Seq {
		i++
	}
	s.lagMarks = s.lagMarks[i:]
	if len(s.lagMarks) > 0 {
		return time.Since(s.lagMarks[0].at).Seconds()
	}
	if s.source == "" && !s.contact.IsZero() && time.Since(s.contact) > fetchStreamTimeout {
		return time.Since(s.contact).Seconds()
	}
	return 0
}

// logDistance is the number of log bytes from a to b (0 if b is not after
// a), using sizes of the segments in between where known.
func logDistance(a, b Position, sizes map[uint64]int64) int64 {
	if b.Seq <= a.Seq {
		return 0
	}
	if a.Segment == b.Segment {
		return max(0, b.Offset-a.Offset)
	}
	d := max(0, sizes[a.Segment]-a.Offset)
	for seg := a.Segment + 1; seg < b.Segment; seg++ {
		d += sizes[seg]
	}
	return d + b.Offset
}

func minPos(a, b Position) Position {
	if b.Seq < a.Seq {
		return b
	}
	return a
}

// checkpoint flushes the data device and persists the replay position.
func (s *Secondary) checkpoint() error {
	s.ckMu.Lock()
	defer s.ckMu.Unlock()
	s.saveIndex() // segment sums computed since (never after Run returned)
	s.mu.Lock()
	pos, persisted := s.replayed, s.persisted
	s.mu.Unlock()
	if pos == persisted {
		return nil
	}
	if err := s.data.Flush(); err != nil {
		return fmt.Errorf("flush data device: %w", err)
	}
	if err := WriteApplied(OSFS{}, s.opts.Dir, pos); err != nil {
		return err
	}
	s.mu.Lock()
	s.persisted = pos
	s.mu.Unlock()
	return nil
}

// Source returns the Source serving this secondary's fetched log and (once
// consistent) its data device to other nodes: give it to
// ShipServer.AddResource for cascading.
func (s *Secondary) Source() Source { return secondarySource{s} }

type secondarySource struct{ s *Secondary }

func (ss secondarySource) LogDir() string { return ss.s.opts.Dir }

func (ss secondarySource) End() Position {
	s := ss.s
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fetched
}

func (ss secondarySource) WaitEnd(ctx context.Context, after Position) (Position, error) {
	s := ss.s
	t := time.NewTimer(waitSlice)
	defer t.Stop()
	for {
		s.mu.Lock()
		e, ch := s.fetched, s.endCh
		s.mu.Unlock()
		if e.Seq > after.Seq {
			return e, nil
		}
		select {
		case <-ch:
		case <-t.C:
			return e, nil
		case <-ctx.Done():
			return e, ctx.Err()
		}
	}
}

func (ss secondarySource) SyncData() (blockdev.Device, Position, error) {
	s := ss.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.st.Consistent || s.st.Sync != SyncNone {
		return nil, Position{}, errNotConsistent
	}
	return s.data, s.persisted, nil
}

func (ss secondarySource) Status() ResourceStatus { return ss.s.Status() }

// NoteDamage implements DamageSink.
func (ss secondarySource) NoteDamage(cerr *CorruptError) { ss.s.noteDamage(cerr) }

// Damage returns the damaged places found in the local log.
func (s *Secondary) Damage() []Damage { return s.damage.all() }

// noteDamage is called by the ship server when it finds a damaged record
// in the local log while shipping it to another node (cascading). A
// segment that is replayed already leaves the log (it is kept aside); one
// that is not is cut and fetched again when replay reaches it.
func (s *Secondary) noteDamage(cerr *CorruptError) {
	name, ok := segmentOf(cerr)
	s.mu.Lock()
	replayed := s.replayed
	s.mu.Unlock()
	if !ok || name.Seq >= replayed.Segment {
		s.damage.note(cerr, "replay cuts the local log there and fetches it again; nodes fetching from this one go to another", s.logger)
		return
	}
	to := QuarantinePrefix + name.String()
	if !s.damage.note(cerr, fmt.Sprintf("moved out of the log (kept as %s): this node has replayed it; nodes that need it fetch it from another node", to), s.logger) {
		return
	}
	s.forgetIndexed(func(n SegmentName) bool { return n == name })
	if _, err := quarantine(OSFS{}, s.opts.Dir, name); err != nil {
		s.logger.Error("cannot move the damaged segment out of the log", "err", err)
		return
	}
	s.damage.update(name.String(), func(d *Damage) { d.Quarantined = to })
}

// DeleteApplied removes segments of the local log (`tharsis log-delete` on
// a secondary): the oldest one, or with all every one it can. A segment can
// go when it is complete, this node replayed it (persisted) and
// MinAppliedByPeers, if set, covers it; never during a full sync. It
// returns the names removed, or an error saying why nothing could be.
func (s *Secondary) DeleteApplied(all bool) ([]string, error) {
	if err := s.checkpoint(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	upto, fetched, syncing := s.persisted, s.fetched, s.st.Sync
	s.mu.Unlock()
	res := resName(s.opts.Resource)
	if syncing != SyncNone {
		return nil, fmt.Errorf("nothing deleted from the log of %s: a full sync is under way (%s) and needs the log", res, syncing)
	}
	if s.opts.MinAppliedByPeers != nil {
		upto = minPos(upto, s.opts.MinAppliedByPeers())
	}
	names, err := listSegments(OSFS{}, s.opts.Dir)
	if err != nil {
		return nil, err
	}
	var removed []string
	var why error
	for _, n := range names {
		if !all && len(removed) > 0 {
			break
		}
		path := filepath.Join(s.opts.Dir, n.String())
		if n.Seq >= fetched.Segment {
			why = fmt.Errorf("segment %s is the one being fetched", n)
			break
		}
		done := n.Seq < upto.Segment
		if !done && n.Seq == upto.Segment {
			if st, err := os.Stat(path); err == nil && st.Size() == upto.Offset {
				done = true
			}
		}
		if !done {
			why = fmt.Errorf("segment %s is not replayed yet (replayed up to %v%s)", n, upto, map[bool]string{true: " by every node fetching from this one", false: ""}[s.opts.MinAppliedByPeers != nil])
			break
		}
		s.forgetIndexed(func(x SegmentName) bool { return x == n })
		if err := os.Remove(path); err != nil {
			why = fmt.Errorf("remove log segment: %w", err)
			break
		}
		removed = append(removed, n.String())
	}
	if len(removed) > 0 {
		OSFS{}.SyncDir(s.opts.Dir)
		s.logger.Info("deleted replayed log segments", "segments", removed)
		return removed, nil
	}
	if why == nil {
		why = errors.New("the log is empty")
	}
	return nil, fmt.Errorf("nothing deleted from the log of %s: %w", res, why)
}
