package replicate

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/tharsis/tharsis/blockdev"
	"github.com/tharsis/tharsis/replicate/wire"
)

// fetchStreamTimeout: a stream without any frame for this long is dead
// (sources send a heartbeat every waitSlice).
const fetchStreamTimeout = 10 * time.Second

// maxUnsynced bounds fetched bytes written but not yet fdatasync'd while
// more frames are already waiting.
const maxUnsynced = 8 << 20

// errPreferred ends a stream when a more preferred peer is back.
var errPreferred = errors.New("a more preferred peer is reachable again")

// fetchFrom returns where to ask a peer to start: after the fetched log, or
// at the beginning of the sync's start segment when the local log is empty.
// ok is false while there is nothing sensible to ask for yet (an empty log
// and a sync that has not got its start position).
func (s *Secondary) fetchFrom() (Position, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fetched.Seq > 0 {
		return s.fetched, true
	}
	switch {
	case s.st.Sync == SyncNeeded && s.st.SyncStart.Seq == 0:
		return Position{}, false
	case s.st.Sync != SyncNone:
		return Position{Segment: s.st.SyncStart.Segment}, true
	}
	return Position{Segment: s.replayed.Segment}, true
}

func (s *Secondary) wait(ctx context.Context, ch chan struct{}, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-ch:
	case <-t.C:
	}
}

func (s *Secondary) setFetchErr(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		s.fetchErr = ""
	} else {
		s.fetchErr = err.Error()
	}
}

func (s *Secondary) fetchLoop(ctx context.Context) {
	fl := fetchLog{synced: s.openTail}
	defer fl.close()
	peerErrs := map[string]string{}
	for ctx.Err() == nil {
		s.mu.Lock()
		discard := s.discardLog || s.st.DiscardLog
		s.discardLog = false
		s.mu.Unlock()
		if discard {
			if s.dropLocalLog(&fl) {
				if err := s.update(func(st *secondaryState) { st.DiscardLog = false }); err != nil {
					s.setFetchErr(err)
				}
				kick(s.kickSync)
			} else {
				s.mu.Lock()
				s.discardLog = true
				s.mu.Unlock()
			}
		}
		s.mu.Lock()
		cut := s.cut
		s.cut = nil
		s.mu.Unlock()
		if cut != nil {
			if err := s.cutLocalLog(&fl, *cut); err != nil {
				s.setFetchErr(err)
				s.logger.Error("cannot cut the damaged local log", "err", err)
			}
		}
		s.mu.Lock()
		paused := s.st.FetchPaused
		s.mu.Unlock()
		if paused {
			s.setSource("", Position{})
			s.wait(ctx, s.kickFetch, time.Hour)
			continue
		}
		if _, ok := s.fetchFrom(); !ok {
			s.wait(ctx, s.kickFetch, s.opts.RetryInterval)
			continue
		}
		peers := s.opts.Peers()
		before, _ := s.Positions()
		gone := 0
		var lastErr error
		for i, p := range peers {
			err := s.fetchPeer(ctx, &fl, peers, i)
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, errPreferred) {
				lastErr = nil
				break
			}
			var we *wire.Error
			if errors.As(err, &we) && (we.Code == wire.CodeGone || we.Code == wire.CodeCorrupt) {
				gone++
			}
			if we != nil && we.Code == wire.CodeCorrupt {
				s.mu.Lock()
				if s.peerDamaged == nil {
					s.peerDamaged = map[string]peerDamage{}
				}
				s.peerDamaged[p.Name] = peerDamage{at: s.fetched, msg: we.Message}
				s.mu.Unlock()
			}
			if err != nil {
				lastErr = fmt.Errorf("fetch from %s: %w", p, err)
				// Log each peer's failure once, not on every retry.
				if msg := err.Error(); peerErrs[p.Name] != msg {
					peerErrs[p.Name] = msg
					switch {
					case errors.Is(err, ErrAuth):
						s.logger.Warn(msg)
					case we != nil && we.Code == wire.CodeStale:
						// Expected for a moment after a partition heals:
						// the peer learns the newer designation from it.
						s.logger.Info("a peer of an older designation refused to ship its log; trying the next peer", "peer", p.String(), "err", err)
					case isNoSpace(err) || errors.Is(err, blockdev.ErrNoSpace):
						s.logger.Error("this node's log filesystem is full: fetching stops until space is freed (`tharsis log-delete` removes replayed segments)", "dir", s.opts.Dir, "err", err)
					default:
						s.logger.Warn("fetching the log failed; trying the next peer", "peer", p.String(), "err", err)
					}
				}
			} else {
				delete(peerErrs, p.Name)
			}
			s.mu.Lock()
			paused := s.st.FetchPaused
			s.mu.Unlock()
			if paused {
				break
			}
		}
		s.setSource("", Position{})
		if len(peers) == 0 {
			lastErr = errors.New("no peer to fetch from (connect list empty)")
		}
		if gone > 0 && gone == len(peers) {
			if s.discardLogForSync(&fl) {
				continue
			}
			from, _ := s.fetchFrom()
			lastErr = fmt.Errorf("no peer can ship the log this node needs next (after %v): %v; run `tharsis invalidate %s` to resync it", from, lastErr, resName(s.opts.Resource))
			if s.fetchErrLog.changed(lastErr.Error()) {
				s.logger.Error(lastErr.Error())
			}
		} else if lastErr == nil {
			if last, n := s.fetchErrLog.clear(); last != "" {
				s.logger.Info("the log is fetched again", "after", last, "repeats", n)
			}
		}
		s.setFetchErr(lastErr)
		retry := s.opts.RetryInterval
		if after, _ := s.Positions(); after.Seq > before.Seq {
			// The stream moved the log on before it ended (a source that
			// sealed its log and switched role, a preferred peer back):
			// its continuation is likely there already.
			retry = min(retry, quickRetry)
		}
		s.wait(ctx, s.kickFetch, retry)
	}
}

// quickRetry is the pause before fetching again after a stream that made
// progress ended.
const quickRetry = 100 * time.Millisecond

// discardLogForSync drops the local log when no peer holds its
// continuation but a full sync is under way (the device is rewritten and the
// log is fetched afresh from the sync's start).
func (s *Secondary) discardLogForSync(fl *fetchLog) bool {
	s.mu.Lock()
	ok := s.st.Sync == SyncRunning || s.st.Sync == SyncNeeded && s.st.SyncStart.Seq > 0
	s.mu.Unlock()
	if !ok {
		return false
	}
	if !s.dropLocalLog(fl) {
		return false
	}
	s.logger.Warn("no peer holds the continuation of the local log; discarded it to fetch afresh from the sync's start")
	return true
}

// dropLocalLog removes every local segment (a full sync is under way and
// the log is fetched afresh from its start).
func (s *Secondary) dropLocalLog(fl *fetchLog) bool {
	fl.close()
	fl.unsynced = 0
	fl.synced = fetchTally{}
	s.forgetIndexed(nil)
	names, err := listSegments(OSFS{}, s.opts.Dir)
	if err != nil {
		return false
	}
	for _, n := range names {
		if err := os.Remove(filepath.Join(s.opts.Dir, n.String())); err != nil {
			return false
		}
	}
	OSFS{}.SyncDir(s.opts.Dir)
	s.mu.Lock()
	s.fetched = Position{}
	s.replayGen++ // the replay reader must not keep a removed segment open
	s.mu.Unlock()
	s.logger.Info("discarded the local log; it is fetched afresh from the sync's start")
	return true
}

func (s *Secondary) setSource(name string, end Position) {
	s.mu.Lock()
	s.source = name
	if end.Seq > 0 {
		s.sourceEnd = end
		s.noteSourceEnd(end)
	}
	if end.Seq > s.bestEnd.Seq {
		s.bestEnd = end
	}
	s.mu.Unlock()
}

// fetchPeer streams the log from peers[i] until the stream fails, fetching
// is paused, or (for a fallback peer) a more preferred peer is back.
func (s *Secondary) fetchPeer(ctx context.Context, fl *fetchLog, peers []Peer, i int) error {
	p := peers[i]
	from, ok := s.fetchFrom()
	if !ok {
		return nil
	}
	pc, err := dialPeer(ctx, s.opts.Node, s.opts.auth(), p)
	if err != nil {
		return err
	}
	defer pc.close()
	// The stream starts at the published (durable) fetched position: the
	// local segment is reopened there, and records written but not synced
	// by an earlier stream are synced when it ends, or else dropped here.
	if fl.unsynced > 0 {
		fl.close()
		fl.unsynced = 0
	}
	defer func() {
		if err := fl.syncPending(s); err != nil {
			s.logger.Warn("cannot make fetched records durable", "err", err)
			fl.close()
			fl.unsynced = 0
		}
	}()
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	s.mu.Lock()
	s.cancelStream = func() { cancel(context.Canceled) }
	paused := s.st.FetchPaused
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.cancelStream = nil
		s.mu.Unlock()
	}()
	if paused {
		return nil
	}
	stop := context.AfterFunc(sctx, func() { pc.nc.SetDeadline(time.Now()) })
	defer stop()
	if i > 0 {
		go s.probePreferred(sctx, cancel, peers[:i])
	}
	accept, des, err := s.negotiate(sctx, pc)
	if err != nil {
		return err
	}
	if err := pc.c.SendFlush(&wire.Fetch{Resource: s.opts.Resource, From: toWire(from), Accept: accept, Designation: des}); err != nil {
		return err
	}
	s.logger.Info("fetching the log", "peer", p.String(), "from", from.String())
	s.setSource(p.Name, Position{})
	var dec *wire.Decompressor
	defer func() {
		if dec != nil {
			dec.Close()
		}
	}()
	acked := from
	for {
		pc.nc.SetReadDeadline(time.Now().Add(fetchStreamTimeout))
		var m wire.Message
		err := sctx.Err() // a cancel before the deadline was set is seen here
		if err == nil {
			m, err = pc.c.Recv()
		}
		if err != nil {
			if c := context.Cause(sctx); c != nil && sctx.Err() != nil {
				if errors.Is(c, errPreferred) {
					return errPreferred
				}
				return nil
			}
			return err
		}
		wireLen := 0
		if cm, ok := m.(*wire.CompressedData); ok {
			if accept&cm.Encoding.Bit() == 0 {
				return fmt.Errorf("peer %s sent %s data, which this node did not accept", p, cm.Encoding)
			}
			if dec == nil {
				dec = wire.NewDecompressor(wire.MaxFrame)
				s.mu.Lock()
				s.fetchComp = cm.Encoding.String()
				s.mu.Unlock()
			}
			wireLen = len(cm.Data)
			if m, err = dec.Decompress(cm); err != nil {
				return fmt.Errorf("peer %s: %w", p, err)
			}
		}
		switch m := m.(type) {
		case *wire.SegmentData:
			if wireLen == 0 {
				wireLen = len(m.Data)
			}
			if err := waitBytes(sctx, s.opts.FetchLimiter, wireLen); err != nil {
				return nil // cancelled meanwhile
			}
			if err := s.storeFetched(fl, m, pc.c.Buffered()); err != nil {
				return err
			}
			s.mu.Lock()
			s.fetchLog += int64(len(m.Data))
			s.fetchWire += int64(wireLen)
			s.mu.Unlock()
			s.setSource(p.Name, fromWire(m.End))
			s.setFetchErr(nil)
		case *wire.Heartbeat:
			if err := fl.syncPending(s); err != nil {
				return err
			}
			s.setSource(p.Name, fromWire(m.End))
			s.setFetchErr(nil)
		case *wire.Error:
			return &wire.Error{Code: m.Code, Message: m.Message}
		default:
			return fmt.Errorf("peer %s sent %s in a log stream", p, m.Type())
		}
		if err := s.sendAck(pc.c, &acked); err != nil {
			// The source may have closed after an error frame: the next
			// Recv says why.
			s.logger.Debug("cannot send the acknowledgement", "err", err)
		}
	}
}

// negotiate returns the optional fields of the Fetch to the peer of pc, each
// only when its status says it reads it (a node of an older release
// refuses a Fetch with a field it does not know): the encodings to accept
// (zstd), and this node's designation of the resource.
func (s *Secondary) negotiate(ctx context.Context, pc *peerConn) (uint32, *wire.Designation, error) {
	s.mu.Lock()
	s.fetchComp = ""
	s.mu.Unlock()
	if s.noAccept {
		return 0, nil, nil
	}
	st, err := pc.status(ctx)
	if err != nil {
		return 0, nil, err
	}
	var accept uint32
	if slices.Contains(st.Features, wire.FeatureFetchAccept) {
		accept = wire.EncodingZstd.Bit()
	}
	var des *wire.Designation
	if d, ok := s.designation(); ok && slices.Contains(st.Features, wire.FeatureFetchDesignation) {
		des = &wire.Designation{Primary: d.Primary, Generation: d.Generation}
	}
	return accept, des, nil
}

// mayFork says why a peer whose status is rs must not be a source (its log
// may be the losing side of a fork: diverged, unverified, or of an older
// designation than this node's), or nil.
func (s *Secondary) mayFork(rs ResourceStatus) error {
	d, ok := s.designation()
	switch {
	case rs.Diverged:
		return errors.New("its log forks from the current history (split brain)")
	case rs.Unverified:
		return fmt.Errorf("it was primary of an older designation than %s and has not yet compared its log with the current history's", rs.Designation)
	case ok && d.Newer(rs.Designation):
		return fmt.Errorf("it follows %s, this node %s", rs.Designation, d)
	}
	return nil
}

// designation is the designation this node follows (Options.Designation).
func (s *Secondary) designation() (Designation, bool) {
	if s.opts.Designation == nil {
		return Designation{}, false
	}
	return s.opts.Designation()
}

// sendAck tells the source how far the fetched log is durable here
// (wire.Ack, the back channel of synchronous acknowledgement) when that
// moved since the last one, acked.
func (s *Secondary) sendAck(c *wire.Conn, acked *Position) error {
	f, _ := s.Positions()
	if f.Seq <= acked.Seq {
		return nil
	}
	*acked = f
	return c.SendFlush(&wire.Ack{Durable: toWire(f)})
}

// probePreferred checks the more preferred peers every RetryInterval and
// ends the stream (cause errPreferred) when one of them holds the log this
// node needs and is not behind it.
func (s *Secondary) probePreferred(ctx context.Context, cancel context.CancelCauseFunc, better []Peer) {
	for {
		t := time.NewTimer(s.opts.RetryInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		from, _ := s.fetchFrom()
		for _, p := range better {
			s.mu.Lock()
			d, damaged := s.peerDamaged[p.Name]
			s.mu.Unlock()
			if damaged && from.Seq <= d.at.Seq {
				continue // its copy of what comes next is damaged
			}
			st, err := fetchNodeStatus(ctx, s.opts.Node, s.opts.auth(), p)
			if err != nil {
				continue
			}
			rs, ok := st.Resource(s.opts.Resource)
			if ok && s.mayFork(rs) != nil {
				continue // it would refuse (its log may be a losing fork)
			}
			if ok && rs.End.Seq > 0 && rs.Phase != PhaseLeft && !rs.Diverged {
				s.mu.Lock()
				if rs.End.Seq > s.bestEnd.Seq {
					s.bestEnd = rs.End // the source we use may be behind it
				}
				s.mu.Unlock()
			}
			if !ok || rs.End.Seq < from.Seq || len(rs.Segments) == 0 {
				continue
			}
			if first, ok := ParseSegmentName(rs.Segments[0].Name); !ok || first.Seq > max(from.Segment, 1) {
				continue
			}
			s.logger.Info("a more preferred peer is back; switching to it", "peer", p.String())
			cancel(errPreferred)
			return
		}
	}
}

// fetchLog is the local segment being appended by the fetcher.
type fetchLog struct {
	f        *os.File
	name     SegmentName
	end      int64    // bytes written
	pending  Position // written but not yet synced
	unsynced int64
	sealed   bool // the last record written is a segment-end marker
	// tally counts the records written to the segment, synced as of the
	// last fdatasync (what a reopen at the fetched position continues).
	tally, synced fetchTally
}

// fetchTally is what was written of a fetched segment; whole: every record
// from its start was checked on the way in (the count is known), so once
// sealed it goes into the segment index.
type fetchTally struct {
	info  SegmentInfo
	whole bool
}

func (fl *fetchLog) close() {
	if fl.f != nil {
		fl.f.Close()
		fl.f = nil
	}
}

// syncPending makes written records durable and publishes the fetched
// position.
func (fl *fetchLog) syncPending(s *Secondary) error {
	if fl.unsynced == 0 {
		return nil
	}
	if err := fl.f.Sync(); err != nil {
		return fmt.Errorf("fdatasync fetched segment %s: %w", fl.name, err)
	}
	fl.unsynced = 0
	fl.synced = fl.tally
	if t := fl.tally; t.whole && t.info.Sealed {
		s.book.add(t.info)
		s.saveIndex()
	}
	s.publishFetched(fl.pending)
	return nil
}

func (s *Secondary) publishFetched(p Position) {
	s.mu.Lock()
	s.fetched = p
	close(s.endCh)
	s.endCh = make(chan struct{})
	s.mu.Unlock()
	kick(s.kickReplay)
}

// storeFetched checks the records of m against the local log and appends
// them. They are fdatasync'd before the fetched position moves (now, or
// with the next frame when more is buffered).
func (s *Secondary) storeFetched(fl *fetchLog, m *wire.SegmentData, more bool) error {
	name, ok := ParseSegmentName(m.Segment)
	if !ok {
		return fmt.Errorf("peer sent data of %q, not a segment name", m.Segment)
	}
	s.mu.Lock()
	fetched := s.fetched
	s.mu.Unlock()
	if fl.unsynced > 0 {
		fetched = fl.pending
	}
	dir := s.opts.Dir
	if fl.f == nil && fetched.Seq > 0 {
		// Reopen the newest local segment.
		f, err := os.OpenFile(filepath.Join(dir, findLocal(dir, fetched.Segment)), os.O_RDWR, 0)
		if err != nil {
			return fmt.Errorf("open fetched segment: %w", err)
		}
		info, err := f.Stat()
		if err != nil {
			f.Close()
			return err
		}
		n, _ := ParseSegmentName(info.Name())
		fl.f, fl.name, fl.end, fl.sealed = f, n, fetched.Offset, false
		fl.tally = fetchTally{info: SegmentInfo{Name: n, End: fetched.Offset}}
		if t := fl.synced; t.whole && t.info.Name == n && t.info.End == fetched.Offset {
			fl.tally = t
		}
		if info.Size() > fetched.Offset {
			// Bytes beyond the durable end (a failed write): drop them.
			if err := f.Truncate(fetched.Offset); err != nil {
				return err
			}
		}
		fl.sealed = isSealedAt(f, fetched.Offset)
	}
	switch {
	case fl.f != nil && name == fl.name:
		if m.Offset != fl.end {
			return fmt.Errorf("peer sent %s at offset %d but the local copy ends at %d", name, m.Offset, fl.end)
		}
	case m.Offset != 0:
		return fmt.Errorf("peer sent %s from offset %d, expected a segment start", name, m.Offset)
	case fl.f != nil && (name.Seq != fl.name.Seq+1 || !fl.sealed):
		return fmt.Errorf("peer sent segment %s after %s (sealed %v): the logs diverge; run `tharsis invalidate %s`", name, fl.name, fl.sealed, resName(s.opts.Resource))
	default:
		// A new segment.
		if err := fl.syncPending(s); err != nil {
			return err
		}
		fl.close()
		s.forgetIndexed(func(n SegmentName) bool { return n == name }) // a stale entry
		path := filepath.Join(dir, name.String())
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return fmt.Errorf("create fetched segment: %w", err)
		}
		if err := (OSFS{}).SyncDir(dir); err != nil {
			f.Close()
			return err
		}
		fl.f, fl.name, fl.end, fl.sealed = f, name, 0, false
		fl.tally = fetchTally{info: SegmentInfo{Name: name}, whole: true}
	}
	// Verify every record before writing anything.
	pos := fetched
	b := m.Data
	off := m.Offset
	var records int
	var first uint64
	for len(b) > 0 {
		rec, n, err := DecodeRecord(b)
		if err != nil {
			return fmt.Errorf("peer sent a bad record of %s at offset %d: %w", name, off, err)
		}
		if rec.Segment != name.Seq {
			return fmt.Errorf("peer sent a record of segment %d inside %s", rec.Segment, name)
		}
		if pos.Seq != 0 && rec.Seq != pos.Seq+1 {
			return fmt.Errorf("peer sent record %d after record %d of %s (records missing): the logs diverge", rec.Seq, pos.Seq, name)
		}
		if fl.sealed {
			return fmt.Errorf("peer sent records after the end of segment %s", name)
		}
		off += int64(n)
		pos = Position{Segment: name.Seq, Offset: off, Seq: rec.Seq}
		if records++; first == 0 {
			first = rec.Seq
		}
		fl.sealed = rec.Kind == KindSegmentEnd
		b = b[n:]
	}
	if _, err := fl.f.WriteAt(m.Data, m.Offset); err != nil {
		fl.f.Truncate(m.Offset)
		return fmt.Errorf("write fetched segment %s: %w", name, err)
	}
	fl.end = off
	fl.pending = pos
	if t := &fl.tally.info; records > 0 {
		t.Records += records
		if t.FirstSeq == 0 {
			t.FirstSeq = first
		}
		t.LastSeq, t.End, t.Sealed = pos.Seq, off, fl.sealed
	}
	fl.unsynced += int64(len(m.Data))
	s.fetchRate.Add(int64(len(m.Data)), time.Now())
	if more && fl.unsynced < maxUnsynced && !fl.sealed {
		return nil
	}
	return fl.syncPending(s)
}

// findLocal returns the file name of local segment seq ("" if none).
func findLocal(dir string, seq uint64) string {
	names, _ := listSegments(OSFS{}, dir)
	for _, n := range names {
		if n.Seq == seq {
			return n.String()
		}
	}
	return ""
}

// isSealedAt reports whether the record ending at end in f is a
// segment-end marker.
func isSealedAt(f *os.File, end int64) bool {
	if end < HeaderSize {
		return false
	}
	h := make([]byte, HeaderSize)
	if _, err := f.ReadAt(h, end-HeaderSize); err != nil {
		return false
	}
	rec, n, err := DecodeRecord(h)
	return err == nil && n == HeaderSize && rec.Kind == KindSegmentEnd
}

// peerDamage is a peer's report that its copy of the log is damaged just
// after position at (this node's fetched end then).
type peerDamage struct {
	at  Position
	msg string
}

// damagedPeersErr says which peers cannot ship what this node needs next
// because their copy is damaged ("" when none). Call with s.mu held.
func (s *Secondary) damagedPeersErr() string {
	var msgs []string
	for _, name := range slices.Sorted(maps.Keys(s.peerDamaged)) {
		if d := s.peerDamaged[name]; s.fetched.Seq <= d.at.Seq {
			msgs = append(msgs, d.msg)
		}
	}
	if len(msgs) == 0 {
		return ""
	}
	return strings.Join(msgs, "; ") + fmt.Sprintf(": fetching from the other peers; if none of them holds the log from there on, run `tharsis invalidate %s`", resName(s.opts.Resource))
}
