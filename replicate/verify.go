package replicate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
)

// Online verify (`tharsis verify RES`, DRBD's online verify) compares a
// consistent secondary's data device with its source's while both run, and
// with Repair rewrites the chunks that differ.
//
// # Why a plain comparison is wrong
//
// Replication is asynchronous: the secondary replays the log later than the
// primary wrote it, and the primary's own data device may lag its log
// (records are logged, then applied). Comparing checksums of a chunk on both
// sides at "the same time" compares two different points of the history
// whenever the chunk was written recently, and would report it as different.
//
// # What verify does
//
//  1. Scan: every chunk is compared by checksum (Checksums, as the full sync
//     does), verifyBatch chunks per request, at most Rate bytes a second.
//     A chunk whose checksums agree is done. A chunk whose checksums differ
//     is only a candidate.
//  2. Recheck, exactly, for the candidates of a batch (verifyGroup at a
//     time), on one connection to the source, whose requests it answers in
//     order:
//     a. the source's status: its applied position A (every record up to A
//     is on its data device);
//     b. the candidates' bytes (ChunkRequest);
//     c. the source's status again: its log end L (logEnd: no record after
//     L can be on its device yet, because a record reaches the device only
//     after it is written to the log). The source must not have changed
//     role or generation in between.
//     Each byte of a chunk read between a and c holds the source's history
//     after some record in [A, L]. The secondary waits until its replay
//     passes L (position R ≥ L), then applies to the fetched copy every
//     record of its own log in (A, R], clipped to the chunk: the copy now
//     holds the history's state after R exactly (every byte some record in
//     (A, L] touched is overwritten by the last write to it up to R; every
//     other byte already held that state). Under applyMu (replay stopped
//     for the moment) it reads its own chunk, whose state is R's, and
//     compares the bytes. Only a chunk that still differs is reported.
//
// # Guarantee
//
// No false positives: a reported chunk differs from the current history's
// state at the position this node had replayed when it was compared, so
// its disk is wrong there, whatever was written meanwhile (settled or not).
// This holds as long as the data devices change only through the log: a
// write to a disk behind tharsis's back is exactly what verify finds. A
// chunk that differs and is not written during the verify is always found
// (its checksums differ in the scan, and so do its bytes in the recheck).
// A chunk written during the verify may be missed when the scan happened to
// read equal checksums of two different states (e.g. the damage was
// overwritten at the moment of the scan): run verify again.
//
// # Repair
//
// With Repair a differing chunk is replaced, still under applyMu, by the
// copy computed in the recheck: the source's chunk with the log from A to R
// replayed onto it, the same chunk-then-replay the full sync relies on, done
// at once for one chunk. The chunk then holds R's state, like every other
// chunk of the device, so the data device is consistent at every moment
// and replay goes on from R. The chunk is flushed before the group ends.
//
// # Running
//
// A verify never pauses fetch or replay and never blocks the source's
// writers (it reads the source's device like a sync does); replay waits for
// applyMu only while a group of at most verifyGroup chunks is compared. A
// connection that drops is dialled again (any peer of Options.Peers) and the
// verify resumes at the batch it was in; after verifyWait without progress
// it fails, saying where it stopped. It stops (cancelled) on StopVerify,
// when the node closes its data path, and when a full sync, invalidate or a
// pause of fetch or replay begins.

// Limits and defaults of a verify.
const (
	// DefaultVerifyRate bounds the bytes a verify compares per second when
	// VerifyOptions.Rate is 0: each side reads them from its data device.
	DefaultVerifyRate = 100 << 20
	// verifyBatch is the number of chunks compared per checksum request.
	verifyBatch = 64
	// verifyGroup is the number of candidate chunks rechecked at once (their
	// bytes are held in memory).
	verifyGroup = 16
	// verifyWait bounds waiting for replay to pass the source's log end,
	// and how long a verify keeps trying to reach a source.
	verifyWait = 60 * time.Second
	// maxVerifyListed bounds the differing chunks a report lists.
	maxVerifyListed = 1000
	// verifyFile holds the last verify's report in the log directory.
	verifyFile = "verify.json"
)

// VerifyState is where a verify stands.
type VerifyState uint8

// Verify states.
const (
	VerifyNone      VerifyState = iota
	VerifyRunning               // comparing
	VerifyDone                  // finished: the report's findings are complete
	VerifyFailed                // stopped by an error (Err)
	VerifyCancelled             // stopped by StopVerify, a role change or a sync
)

var verifyNames = [...]string{"", "running", "done", "failed", "cancelled"}

// String returns the state's name ("" for VerifyNone).
func (v VerifyState) String() string { return enumName(verifyNames[:], "verify", v) }

// MarshalText implements encoding.TextMarshaler.
func (v VerifyState) MarshalText() ([]byte, error) { return []byte(v.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (v *VerifyState) UnmarshalText(b []byte) error {
	x, err := parseEnum[VerifyState](verifyNames[:], "verify state", 0, b)
	*v = x
	return err
}

// VerifyOptions configure StartVerify.
type VerifyOptions struct {
	// Repair rewrites the chunks that differ (see "Repair" above).
	Repair bool
	// Rate bounds the bytes compared per second; 0 means DefaultVerifyRate.
	Rate int64
}

// VerifyReport is the progress or the outcome of an online verify.
type VerifyReport struct {
	// ID numbers the verifies of the resource on this node (1, 2, ...).
	ID        uint64      `json:"id"`
	State     VerifyState `json:"state"`
	Repair    bool        `json:"repair,omitempty"`
	Scheduled bool        `json:"scheduled,omitempty"` // started by verify_interval
	Source    string      `json:"source,omitempty"`    // the peer compared with
	ChunkSize int64       `json:"chunk_size"`
	// Compared and Total count bytes of the device.
	Compared int64 `json:"compared_bytes"`
	Total    int64 `json:"total_bytes"`
	// Rechecked counts chunks whose checksums differed in the scan and
	// that were compared exactly (most were written meanwhile).
	Rechecked int `json:"rechecked"`
	// Differ lists the chunks found different, in order (at most 1000;
	// DifferCount counts them all). Chunk i starts at byte i*ChunkSize.
	Differ      []uint64 `json:"differ,omitempty"`
	DifferCount int      `json:"differ_count"`
	// Repaired counts the differing chunks rewritten (Repair).
	Repaired   int       `json:"repaired"`
	Reconnects int       `json:"reconnects,omitempty"`
	Started    time.Time `json:"started,omitzero"`
	Finished   time.Time `json:"finished,omitzero"`
	ETASeconds float64   `json:"eta_seconds,omitempty"`
	Err        string    `json:"error,omitempty"`
}

func (r *VerifyReport) clone() *VerifyReport {
	c := *r
	c.Differ = slices.Clone(r.Differ)
	return &c
}

// verifier is a Secondary's verify: the running or last report, and the
// request the verify loop picks up. Its mu is taken after Secondary.mu
// (Status), never before.
type verifier struct {
	mu     sync.Mutex
	dir    string
	opened time.Time
	cur    *VerifyReport // running or last (nil: never)
	req    *VerifyOptions
	cancel context.CancelFunc // of the running verify
	kick   chan struct{}
}

// open loads the last report from the log directory.
func (v *verifier) open(dir string) {
	v.dir, v.opened, v.kick = dir, time.Now(), make(chan struct{}, 1)
	b, err := os.ReadFile(filepath.Join(dir, verifyFile))
	if err != nil {
		return
	}
	var r VerifyReport
	if json.Unmarshal(b, &r) == nil && r.ID > 0 {
		if r.State == VerifyRunning {
			r.State, r.Err = VerifyCancelled, "the daemon stopped during the verify"
		}
		v.cur = &r
	}
}

// report returns a copy of the running or last report, or nil.
func (v *verifier) report() *VerifyReport {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.cur == nil {
		return nil
	}
	r := v.cur.clone()
	if r.State == VerifyRunning && r.Compared > 0 && r.Compared < r.Total {
		rate := float64(r.Compared) / time.Since(r.Started).Seconds()
		r.ETASeconds = float64(r.Total-r.Compared) / rate
	}
	return r
}

// update changes report r under the lock.
func (v *verifier) update(r *VerifyReport, fn func(r *VerifyReport)) {
	v.mu.Lock()
	fn(r)
	v.mu.Unlock()
}

func (v *verifier) save(r *VerifyReport) error {
	b, _ := json.Marshal(r)
	return writeFileAtomic(OSFS{}, filepath.Join(v.dir, verifyFile), append(b, '\n'))
}

// Verify returns the running or last verify's report, or nil.
func (s *Secondary) Verify() *VerifyReport { return s.vf.report() }

// verifyReady says why this node cannot verify now, or nil.
func (s *Secondary) verifyReady() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	res := resName(s.opts.Resource)
	switch {
	case s.st.Sync != SyncNone || !s.st.Consistent || s.st.DiscardLog:
		return fmt.Errorf("this node's copy of %s is not consistent (full sync %s): there is nothing to verify before the sync is done", res, s.st.Sync)
	case s.opts.Detached:
		return fmt.Errorf("the data device of %s is detached (`tharsis attach %s` reattaches it): there is nothing to verify", res, res)
	case s.st.FetchPaused:
		return fmt.Errorf("fetching is paused (`tharsis connect %s` resumes it): verify compares with the source's current state and needs the log", res)
	case s.st.ReplayPaused:
		return fmt.Errorf("replay is paused (`tharsis resume-replay %s` resumes it): verify compares with the source's current state and needs the log replayed", res)
	}
	return nil
}

// StartVerify starts an online verify (see the top of verify.go) and
// returns its report as it starts. It refuses while a verify runs and when
// the node is not consistent or fetch or replay is paused. The verify runs
// in Run; follow it with Verify or Status, stop it with StopVerify.
func (s *Secondary) StartVerify(opts VerifyOptions) (VerifyReport, error) {
	if err := s.verifyReady(); err != nil {
		return VerifyReport{}, err
	}
	v := &s.vf
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.cur != nil && v.cur.State == VerifyRunning {
		return VerifyReport{}, fmt.Errorf("verify %d of %s runs already (started %s, %d of %d bytes compared); `tharsis verify --stop %s` stops it",
			v.cur.ID, resName(s.opts.Resource), v.cur.Started.Format(time.DateTime), v.cur.Compared, v.cur.Total, resName(s.opts.Resource))
	}
	v.cur = s.newVerify(v.cur, opts, false)
	v.req = &opts
	kick(v.kick)
	return *v.cur.clone(), nil
}

func (s *Secondary) newVerify(last *VerifyReport, opts VerifyOptions, scheduled bool) *VerifyReport {
	r := &VerifyReport{ID: 1, State: VerifyRunning, Repair: opts.Repair, Scheduled: scheduled, ChunkSize: int64(s.opts.ChunkSize),
		Total: s.data.Size(), Started: time.Now()}
	if last != nil {
		r.ID = last.ID + 1
	}
	return r
}

// StopVerify stops the running verify (its report says cancelled), or
// says that none runs.
func (s *Secondary) StopVerify() error {
	v := &s.vf
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.cur == nil || v.cur.State != VerifyRunning {
		return fmt.Errorf("no verify of %s runs", resName(s.opts.Resource))
	}
	v.cur.State, v.cur.Err, v.cur.Finished = VerifyCancelled, "stopped by `tharsis verify --stop`", time.Now()
	if v.cancel != nil {
		v.cancel()
	}
	v.req = nil // if not picked up yet
	return v.save(v.cur)
}

// verifyLoop runs requested verifies, and scheduled ones every
// SecondaryOptions.VerifyInterval (counted from the start of the last one,
// persisted; from the start of the node when none ran yet). A scheduled
// verify that is due while the node cannot verify (not consistent, paused)
// waits until it can.
func (s *Secondary) verifyLoop(ctx context.Context) {
	v := &s.vf
	defer func() {
		v.mu.Lock()
		r := v.cur
		if r != nil && r.State == VerifyRunning {
			r.State, r.Err, r.Finished = VerifyCancelled, errVerifyClosed, time.Now()
			v.save(r)
		}
		v.mu.Unlock()
	}()
	for ctx.Err() == nil {
		notReady := s.verifyReady() // before v.mu: Status holds s.mu while it takes v.mu
		v.mu.Lock()
		r, opts := v.cur, v.req
		v.req = nil
		if opts == nil && s.opts.VerifyInterval > 0 && (r == nil || r.State != VerifyRunning) {
			due := v.opened.Add(s.opts.VerifyInterval)
			if r != nil {
				due = r.Started.Add(s.opts.VerifyInterval)
			}
			if wait := time.Until(due); wait > 0 {
				v.mu.Unlock()
				s.wait(ctx, v.kick, wait)
				continue
			}
			if notReady != nil {
				v.mu.Unlock()
				s.wait(ctx, v.kick, min(time.Minute, s.opts.VerifyInterval))
				continue
			}
			opts = &VerifyOptions{Rate: s.opts.VerifyRate}
			r = s.newVerify(r, *opts, true)
			v.cur = r
		}
		if opts == nil {
			v.mu.Unlock()
			s.wait(ctx, v.kick, time.Hour)
			continue
		}
		jctx, cancel := context.WithCancel(ctx)
		v.cancel = cancel
		v.mu.Unlock()
		s.logger.Info("verify started", "id", r.ID, "repair", opts.Repair, "scheduled", r.Scheduled)
		err := s.runVerify(jctx, r, *opts)
		cancel()
		v.mu.Lock()
		v.cancel = nil
		if r.State == VerifyRunning {
			r.Finished = time.Now()
			switch {
			case ctx.Err() != nil:
				r.State, r.Err = VerifyCancelled, errVerifyClosed
			case err == nil:
				r.State = VerifyDone
			case errors.Is(err, errVerifyCancelled):
				r.State, r.Err = VerifyCancelled, err.Error()
			default:
				r.State = VerifyFailed
				r.Err = fmt.Sprintf("stopped at byte %d of %d: %v", r.Compared, r.Total, err)
			}
		}
		final := r.clone()
		if err := v.save(r); err != nil {
			s.logger.Warn("cannot persist the verify report", "err", err)
		}
		v.mu.Unlock()
		s.logVerify(final)
	}
}

func (s *Secondary) logVerify(r *VerifyReport) {
	args := []any{"id", r.ID, "state", r.State.String(), "source", r.Source, "compared_bytes", r.Compared,
		"differ", r.DifferCount, "repaired", r.Repaired, "rechecked", r.Rechecked, "took", r.Finished.Sub(r.Started).Round(time.Millisecond)}
	switch {
	case r.Err != "":
		s.logger.Warn("verify ended", append(args, "err", r.Err)...)
	case r.DifferCount > r.Repaired:
		s.logger.Warn("verify found chunks that differ from the source", append(args, "chunks", r.Differ)...)
	default:
		s.logger.Info("verify done", args...)
	}
}

// errVerifyClosed is the Err of a verify that ended with the secondary.
const errVerifyClosed = "this node's replication of the resource stopped (role change or shutdown)"

// errVerifyCancelled stops a verify when the node's state no longer allows
// it (a sync, invalidate or a pause began).
var errVerifyCancelled = errors.New("verify cancelled")

// runVerify compares the whole device with a source, filling r.
func (s *Secondary) runVerify(ctx context.Context, r *VerifyReport, opts VerifyOptions) error {
	rate := opts.Rate
	if rate <= 0 {
		rate = DefaultVerifyRate
	}
	size, cs := s.data.Size(), int64(s.opts.ChunkSize)
	nchunks := uint64((size + cs - 1) / cs)
	local := make([]byte, cs)
	found := map[uint64]bool{}
	var pc *peerConn
	defer func() {
		if pc != nil {
			pc.close()
		}
	}()
	var lastErr error
	progress := time.Now() // of the last batch done (or the start)
	// The scan is paced from paceAt and chunk paceIdx on (again after a
	// retry, so a stall is not made up for by a burst).
	paceAt, paceIdx := time.Now(), uint64(0)
	for idx := uint64(0); idx < nchunks; {
		if err := s.verifyReady(); err != nil {
			return fmt.Errorf("%w: %v", errVerifyCancelled, err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if lastErr != nil {
			if pc != nil {
				pc.close()
				pc = nil
			}
			var le *localError
			if errors.As(lastErr, &le) || errors.Is(lastErr, errVerifyCancelled) {
				return lastErr
			}
			if time.Since(progress) > verifyWait {
				return fmt.Errorf("no progress for %s: %w", verifyWait, lastErr)
			}
			s.logger.Info("verify: retrying", "err", lastErr)
			s.wait(ctx, nil, s.opts.RetryInterval)
			lastErr = nil
			paceAt, paceIdx = time.Now(), idx
			continue
		}
		if pc == nil {
			var err error
			if pc, err = s.dialVerifySource(ctx); err != nil {
				lastErr = err
				continue
			}
			s.vf.update(r, func(r *VerifyReport) {
				if r.Source != "" {
					r.Reconnects++
				}
				r.Source = pc.peer.Name
			})
		}
		// Pace the scan: at most rate bytes a second.
		due := paceAt.Add(time.Duration(float64(int64(idx-paceIdx)*cs) / float64(rate) * float64(time.Second)))
		if d := time.Until(due); d > 0 {
			s.wait(ctx, nil, d)
			continue
		}
		cnt := min(uint64(verifyBatch), nchunks-idx)
		cand, err := s.compareChunks(ctx, pc, idx, cnt, local)
		for len(cand) > 0 && err == nil {
			g := cand[:min(len(cand), verifyGroup)]
			cand = cand[len(g):]
			var differ []uint64
			var repaired int
			differ, repaired, err = s.recheck(ctx, pc, g, opts.Repair)
			s.vf.update(r, func(r *VerifyReport) {
				r.Rechecked += len(g)
				r.Repaired += repaired
				for _, i := range differ {
					if found[i] {
						continue // a batch done again after a reconnect
					}
					found[i] = true
					r.DifferCount++
					if len(r.Differ) < maxVerifyListed {
						r.Differ = append(r.Differ, i)
					}
				}
			})
		}
		if err != nil {
			lastErr = err
			continue
		}
		idx += cnt
		progress = time.Now()
		s.vf.update(r, func(r *VerifyReport) { r.Compared = min(size, int64(idx)*cs) })
	}
	return nil
}

// dialVerifySource connects to the first peer of Options.Peers that can be
// a source.
func (s *Secondary) dialVerifySource(ctx context.Context) (*peerConn, error) {
	peers := s.opts.Peers()
	if len(peers) == 0 {
		return nil, errors.New("no peer to verify against (connect list empty)")
	}
	var errs []error
	for _, p := range peers {
		pc, _, err := s.dialSource(ctx, p)
		if err == nil {
			return pc, nil
		}
		errs = append(errs, fmt.Errorf("verify against %s: %w", p, err))
	}
	return nil, errors.Join(errs...)
}

// recheck compares the chunks idx exactly (see the top of verify.go) and
// returns those that differ; with repair it rewrites them and returns how
// many it did.
func (s *Secondary) recheck(ctx context.Context, pc *peerConn, idx []uint64, repair bool) (differ []uint64, repaired int, err error) {
	cs := uint32(s.opts.ChunkSize)
	before, err := pc.sourceStatus(ctx, s.opts.Resource)
	if err != nil {
		return nil, 0, err
	}
	copies := make([][]byte, len(idx))
	k := 0
	err = s.requestChunks(ctx, pc, idx, cs, func(_ uint64, b []byte) error {
		copies[k] = bytes.Clone(b)
		k++
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	after, err := pc.sourceStatus(ctx, s.opts.Resource)
	if err != nil {
		return nil, 0, err
	}
	if after.Role != before.Role || after.Designation.Generation != before.Designation.Generation ||
		!before.Consistent || !after.Consistent || after.Applied.Seq < before.Applied.Seq {
		return nil, 0, fmt.Errorf("peer %s changed its role or state while chunks were compared", pc.peer)
	}
	from, end := before.Applied, after.logEnd()
	reached, err := s.waitReplayed(ctx, end)
	if err != nil {
		return nil, 0, err
	}
	// The log from the source's applied position to what replay reached,
	// onto the copies; then, under applyMu, what replay applied meanwhile.
	size := s.data.Size()
	onto := func(rec Record) error {
		if rec.Kind == KindResize && rec.Length != size {
			return &localError{fmt.Errorf("the log resizes the device to %d bytes during the verify", rec.Length)}
		}
		for i, c := range idx {
			applyClipped(rec, int64(c)*int64(cs), copies[i])
		}
		return nil
	}
	if err := forRecords(s.opts.Dir, from, reached, onto); err != nil {
		return nil, 0, err
	}
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	s.mu.Lock()
	now, settled := s.replayed, s.st.Sync == SyncNone && s.st.Consistent
	s.mu.Unlock()
	switch {
	case !settled:
		return nil, 0, fmt.Errorf("%w: a full sync began", errVerifyCancelled)
	case now.Seq < reached.Seq:
		return nil, 0, fmt.Errorf("the replay position went back from %v to %v during the verify", reached, now)
	}
	if err := forRecords(s.opts.Dir, reached, now, onto); err != nil {
		return nil, 0, err
	}
	local := make([]byte, cs)
	for i, c := range idx {
		off := int64(c) * int64(cs)
		b := local[:len(copies[i])]
		if _, err := s.data.ReadAt(b, off); err != nil {
			return differ, repaired, &localError{fmt.Errorf("read chunk %d of the local data device: %w", c, err)}
		}
		if bytes.Equal(b, copies[i]) {
			continue
		}
		differ = append(differ, c)
		if !repair {
			continue
		}
		if _, err := s.data.WriteAt(copies[i], off); err != nil {
			return differ, repaired, &localError{fmt.Errorf("repair chunk %d of the local data device: %w", c, err)}
		}
		repaired++
	}
	if repaired > 0 {
		if err := s.data.Flush(); err != nil {
			return differ, repaired, &localError{fmt.Errorf("flush the repaired chunks: %w", err)}
		}
		s.logger.Info("verify repaired chunks", "chunks", differ, "at", now.String())
	}
	return differ, repaired, nil
}

// waitReplayed waits until the local replay reaches end (by sequence
// number), at most verifyWait, and returns the replay position.
func (s *Secondary) waitReplayed(ctx context.Context, end Position) (Position, error) {
	deadline := time.Now().Add(verifyWait)
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for {
		s.mu.Lock()
		pos := s.replayed
		s.mu.Unlock()
		if pos.Seq >= end.Seq {
			return pos, nil
		}
		if err := s.verifyReady(); err != nil {
			return pos, fmt.Errorf("%w: %v", errVerifyCancelled, err)
		}
		if time.Now().After(deadline) {
			return pos, fmt.Errorf("replay did not reach the source's log end (%v) within %s; it is at %v", end, verifyWait, pos)
		}
		select {
		case <-ctx.Done():
			return pos, ctx.Err()
		case <-t.C:
		}
	}
}

// applyClipped applies the part of rec that falls into the chunk b at device
// offset off.
func applyClipped(rec Record, off int64, b []byte) {
	if rec.Kind != KindWrite && rec.Kind != KindTrim && rec.Kind != KindWriteZeroes {
		return
	}
	lo, hi := max(rec.Offset, off), min(rec.Offset+rec.Length, off+int64(len(b)))
	if lo >= hi {
		return
	}
	if rec.Kind == KindWrite {
		copy(b[lo-off:hi-off], rec.Payload[lo-rec.Offset:hi-rec.Offset])
	} else {
		clear(b[lo-off : hi-off]) // a trimmed range reads as zeros (blockdev.Device)
	}
}

// forRecords calls fn with every record of the local log in dir after from
// up to and including to (by sequence number). It fails when the log lacks
// any of them (segments deleted, or not fetched yet) or one is damaged.
func forRecords(dir string, from, to Position, fn func(Record) error) error {
	if to.Seq <= from.Seq {
		return nil
	}
	names, err := listSegments(OSFS{}, dir)
	if err != nil {
		return &localError{err}
	}
	var buf []byte
	next := from.Seq + 1
	for _, n := range names {
		if n.Seq < from.Segment {
			continue
		}
		err := func() error {
			path := filepath.Join(dir, n.String())
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			defer f.Close()
			st, err := f.Stat()
			if err != nil {
				return err
			}
			var off int64
			if n.Seq == from.Segment {
				off = from.Offset
			}
			for off < st.Size() && next <= to.Seq {
				rec, end, err := readRecord(f, st.Size(), off, &buf)
				if err != nil {
					return &CorruptError{File: path, Offset: off, Reason: err.Error()}
				}
				off = end
				switch {
				case rec.Seq < next:
					continue
				case rec.Seq > next:
					return fmt.Errorf("the local log lacks records %d..%d", next, rec.Seq-1)
				}
				next++
				if err := fn(rec); err != nil {
					return err
				}
			}
			return nil
		}()
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted meanwhile: the sequence check tells
		}
		if err != nil {
			return err
		}
		if next > to.Seq {
			return nil
		}
	}
	return fmt.Errorf("the local log ends before record %d (at %d)", to.Seq, next-1)
}
