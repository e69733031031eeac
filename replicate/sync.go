package replicate

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"github.com/tharsis/tharsis/blockdev"
	"github.com/tharsis/tharsis/replicate/wire"
)

// syncBatch is the number of chunks compared per checksum request.
const syncBatch = 256

// syncTimeout bounds the wait for one answer during a sync.
const syncTimeout = 60 * time.Second

var errSyncPaused = errors.New("sync paused")

func (s *Secondary) setSyncErr(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		s.syncErr = ""
	} else {
		s.syncErr = err.Error()
	}
}

func (s *Secondary) syncLoop(ctx context.Context) {
	for ctx.Err() == nil {
		s.mu.Lock()
		need := s.st.Sync == SyncNeeded || s.st.Sync == SyncRunning
		paused := s.st.SyncPaused || s.opts.Detached
		// The local log is discarded first (fetchLoop removes it and
		// kicks us): a sync must not start with another history's log.
		discarding := s.st.DiscardLog
		s.mu.Unlock()
		if discarding {
			kick(s.kickFetch)
		}
		if !need || paused || discarding {
			s.wait(ctx, s.kickSync, time.Minute)
			continue
		}
		err := s.runSync(ctx)
		if ctx.Err() != nil {
			return
		}
		s.setSyncErr(err)
		if err != nil {
			s.logger.Warn("full sync failed; retrying", "err", err)
			s.wait(ctx, s.kickSync, s.opts.RetryInterval)
		}
	}
}

// runSync runs a full sync from the first peer in the connect order that
// can be a sync source.
func (s *Secondary) runSync(ctx context.Context) error {
	peers := s.opts.Peers()
	if len(peers) == 0 {
		return errors.New("no peer to sync from (connect list empty)")
	}
	var errs []error
	for _, p := range peers {
		s.mu.Lock()
		emergency := s.st.EmergencySync
		s.mu.Unlock()
		var err error
		if emergency {
			err = s.emergencySyncFrom(ctx, p)
			if errors.Is(err, errFullSyncInstead) {
				kick(s.kickFetch) // the local log goes first
				return nil
			}
		} else {
			err = s.syncFrom(ctx, p)
		}
		if err == nil || errors.Is(err, errSyncPaused) || ctx.Err() != nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("sync from %s: %w", p, err))
	}
	return errors.Join(errs...)
}

// syncFrom compares the data device chunk by chunk with peer p's and copies
// the chunks that differ. It records p's applied position at the start; the
// log after it is replayed once the chunks are done (replay is idempotent,
// and every chunk read later holds at least that position's state). A sync
// interrupted by a crash or a pause resumes at the last flushed batch; if it
// resumes from another source, the start is the lower of the two positions.
func (s *Secondary) syncFrom(ctx context.Context, p Peer) error {
	pc, rs, err := s.dialSource(ctx, p)
	if err != nil {
		return err
	}
	defer pc.close()
	cs := uint32(s.opts.ChunkSize)
	size := s.data.Size()
	err = s.update(func(st *secondaryState) {
		if st.Sync == SyncRunning {
			st.SyncStart = minPos(st.SyncStart, rs.Applied)
		} else {
			st.SyncStart, st.SyncChunk = rs.Applied, 0
		}
		st.Sync, st.Consistent = SyncRunning, false
	})
	if err != nil {
		return err
	}
	// The local log must hold everything after the start; if it begins
	// later (segments deleted after replay), fetch it afresh.
	if names, err := listSegments(OSFS{}, s.opts.Dir); err == nil && len(names) > 0 {
		s.mu.Lock()
		st := s.st.SyncStart
		if names[0].Seq > st.Segment {
			s.discardLog = true
			if s.cancelStream != nil {
				s.cancelStream()
			}
		}
		s.mu.Unlock()
	}
	kick(s.kickFetch)
	nchunks := uint64((size + int64(cs) - 1) / int64(cs))
	s.mu.Lock()
	idx := s.st.SyncChunk
	start := s.st.SyncStart
	s.prog = SyncProgress{Source: p.Name, Total: size, Compared: min(size, int64(idx)*int64(cs)), Started: time.Now()}
	s.mu.Unlock()
	s.logger.Info("full sync started", "peer", p.String(), "start", start.String(), "from_chunk", idx, "chunks", nchunks)
	var compared, transferred int64
	local := make([]byte, cs)
	began := time.Now()
	for idx < nchunks {
		s.mu.Lock()
		paused, state := s.st.SyncPaused, s.st.Sync
		s.mu.Unlock()
		if paused {
			s.logger.Info("full sync paused", "chunk", idx)
			return errSyncPaused
		}
		if state != SyncRunning {
			// FakeSync or Invalidate meanwhile.
			s.logger.Info("full sync cancelled", "chunk", idx, "state", state)
			return errSyncPaused
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		cnt := min(uint64(syncBatch), nchunks-idx)
		diff, err := s.compareChunks(ctx, pc, idx, cnt, local)
		if err != nil {
			return err
		}
		n, err := s.fetchChunks(ctx, pc, diff, cs)
		transferred += n
		if err != nil {
			return err
		}
		idx += cnt
		compared += int64(cnt) * int64(cs)
		if err := s.data.Flush(); err != nil {
			return fmt.Errorf("flush data device: %w", err)
		}
		if err := s.update(func(st *secondaryState) {
			if st.Sync == SyncRunning {
				st.SyncChunk = idx
			}
		}); err != nil {
			return err
		}
		s.mu.Lock()
		s.prog.Compared = min(size, int64(idx)*int64(cs))
		s.prog.Transferred += n
		s.mu.Unlock()
	}
	// Every chunk now holds the source's state at start or later; the log
	// from start on makes it consistent once replayed past every record
	// the chunks may reflect: the source's log end as of now (including
	// records logged but not yet durable or applied).
	if rs, err = pc.sourceStatus(ctx, s.opts.Resource); err != nil {
		return err
	}
	rs.End = rs.logEnd()
	if err := s.data.Flush(); err != nil {
		return fmt.Errorf("flush data device: %w", err)
	}
	s.ckMu.Lock()
	defer s.ckMu.Unlock()
	s.mu.Lock()
	state := s.st.Sync
	s.mu.Unlock()
	if state != SyncRunning {
		return errSyncPaused // cancelled at the last moment
	}
	if err := WriteApplied(OSFS{}, s.opts.Dir, start); err != nil {
		return err
	}
	s.mu.Lock()
	s.replayed, s.persisted = start, start
	s.replayGen++
	s.prog.Compared = size
	ls := s.prog
	ls.State, ls.Start = SyncDone, start
	s.lastSync = &ls
	s.mu.Unlock()
	if err := s.update(func(st *secondaryState) {
		st.Sync, st.ConsistentAt, st.SyncChunk = SyncCatchingUp, rs.End, 0
	}); err != nil {
		return err
	}
	s.logger.Info("full sync copied the differing chunks; replaying the log written meanwhile", "peer", p.String(),
		"compared_bytes", compared, "transferred_bytes", transferred, "took", time.Since(began).Round(time.Millisecond),
		"replay_from", start.String(), "consistent_at", rs.End.String())
	kick(s.kickReplay)
	return nil
}

// dialSource connects to peer p as a source of this resource's data: p
// must hold the resource, be consistent and have a data device of this
// node's size. It returns the connection and p's status of the resource.
func (s *Secondary) dialSource(ctx context.Context, p Peer) (*peerConn, ResourceStatus, error) {
	pc, err := dialPeer(ctx, s.opts.Node, s.opts.auth(), p)
	if err != nil {
		return nil, ResourceStatus{}, err
	}
	rs, err := pc.sourceStatus(ctx, s.opts.Resource)
	if err == nil && !rs.Consistent {
		err = fmt.Errorf("peer %s is not consistent itself", p)
	}
	if err == nil {
		if why := s.mayFork(rs); why != nil {
			err = fmt.Errorf("peer %s cannot be a sync source: its data may hold a losing fork (%w)", p, why)
		}
	}
	if err != nil {
		pc.close()
		return nil, ResourceStatus{}, err
	}
	m, err := pc.request(ctx, &wire.ChecksumRequest{Resource: s.opts.Resource, ChunkSize: uint32(s.opts.ChunkSize)}, syncTimeout)
	if err == nil {
		sums, ok := m.(*wire.Checksums)
		if !ok {
			err = fmt.Errorf("peer %s answered a checksum request with %s", p, m.Type())
		} else if size := s.data.Size(); sums.Size > size {
			// The resource was resized and this node, being synced, has
			// not replayed the resize yet: the sync copies it all anyway
			// (and the resize record replays as a no-op).
			if rz, ok := s.data.(blockdev.Resizer); ok {
				if rerr := rz.Resize(sums.Size); rerr == nil {
					s.logger.Info("the resource grew on the sync source: grew this node's disk too", "from", size, "to", sums.Size)
					size = sums.Size
				}
			}
			if sums.Size != size {
				err = fmt.Errorf("the data device of %s on peer %s has %d bytes, this node's %d: make them the same size", s.opts.Resource, p, sums.Size, size)
			}
		} else if sums.Size != size {
			err = fmt.Errorf("the data device of %s on peer %s has %d bytes, this node's %d: make them the same size", s.opts.Resource, p, sums.Size, size)
		}
	}
	if err != nil {
		pc.close()
		return nil, ResourceStatus{}, err
	}
	return pc, rs, nil
}

// sourceStatus asks the peer for its status of resource res.
func (pc *peerConn) sourceStatus(ctx context.Context, res string) (ResourceStatus, error) {
	st, err := pc.status(ctx)
	if err != nil {
		return ResourceStatus{}, err
	}
	rs, ok := st.Resource(res)
	if !ok {
		return ResourceStatus{}, fmt.Errorf("peer %s holds no resource %s", pc.peer, res)
	}
	return rs, nil
}

// logEnd is the end of every record the node's data device may reflect:
// the highest of its durable end, its logged end (records logged but not
// yet durable) and its applied position.
func (rs ResourceStatus) logEnd() Position {
	end := rs.End
	for _, p := range []Position{rs.Logged, rs.Applied} {
		if p.Seq > end.Seq {
			end = p
		}
	}
	return end
}

// compareChunks compares cnt chunks from chunk idx with the peer's, by
// their checksums, and returns the indexes of those that differ. It hashes
// the local chunks (into local, a chunk-sized buffer) while the peer hashes
// its own; an error reading the local device is a *localError.
func (s *Secondary) compareChunks(ctx context.Context, pc *peerConn, idx, cnt uint64, local []byte) ([]uint64, error) {
	cs, size := int64(len(local)), s.data.Size()
	localSums := make(chan []byte, 1)
	go func() {
		out := make([]byte, 0, cnt*wire.SumSize)
		for i := range cnt {
			off := int64(idx+i) * cs
			b := local[:min(cs, size-off)]
			if _, err := s.data.ReadAt(b, off); err != nil {
				localSums <- nil
				return
			}
			sum := sha256.Sum256(b)
			out = append(out, sum[:wire.SumSize]...)
		}
		localSums <- out
	}()
	m, err := pc.request(ctx, &wire.ChecksumRequest{Resource: s.opts.Resource, ChunkSize: uint32(cs), First: idx, Count: uint32(cnt)}, syncTimeout)
	mine := <-localSums
	if err != nil {
		return nil, err
	}
	theirs, ok := m.(*wire.Checksums)
	if !ok || theirs.First != idx || uint64(len(theirs.Sums)) != cnt*wire.SumSize {
		return nil, fmt.Errorf("peer %s sent a wrong checksum answer", pc.peer)
	}
	if mine == nil {
		return nil, &localError{fmt.Errorf("read the local data device of %s", s.opts.Resource)}
	}
	var diff []uint64
	for i := range cnt {
		a, b := mine[i*wire.SumSize:(i+1)*wire.SumSize], theirs.Sums[i*wire.SumSize:(i+1)*wire.SumSize]
		if !bytes.Equal(a, b) {
			diff = append(diff, idx+i)
		}
	}
	return diff, nil
}

// localError is a failure of this node's own disk or log (not of the peer
// or the link): retrying with another connection does not help.
type localError struct{ err error }

func (e *localError) Error() string { return e.err.Error() }
func (e *localError) Unwrap() error { return e.err }

// fetchChunks asks for the chunks idx (pipelined) and writes them to the
// data device. It returns the bytes written.
func (s *Secondary) fetchChunks(ctx context.Context, pc *peerConn, idx []uint64, cs uint32) (int64, error) {
	var n int64
	err := s.requestChunks(ctx, pc, idx, cs, func(i uint64, b []byte) error {
		if err := waitBytes(ctx, s.opts.SyncLimiter, len(b)); err != nil {
			return err
		}
		s.applyMu.Lock()
		_, err := s.data.WriteAt(b, int64(i)*int64(cs))
		s.applyMu.Unlock()
		if err != nil {
			return fmt.Errorf("write chunk %d to the data device: %w", i, err)
		}
		n += int64(len(b))
		return nil
	})
	return n, err
}

// requestChunks asks the peer for the chunks idx (pipelined) and hands each
// to put, in order. The bytes put gets are valid only during the call.
func (s *Secondary) requestChunks(ctx context.Context, pc *peerConn, idx []uint64, cs uint32, put func(i uint64, b []byte) error) error {
	if len(idx) == 0 {
		return nil
	}
	stop := context.AfterFunc(ctx, func() { pc.nc.SetDeadline(time.Now()) })
	defer stop()
	defer pc.nc.SetDeadline(time.Time{})
	// Requests are tiny; send them all, then read the answers in order.
	pc.nc.SetDeadline(time.Now().Add(syncTimeout))
	for _, i := range idx {
		if err := pc.c.Send(&wire.ChunkRequest{Resource: s.opts.Resource, ChunkSize: cs, Index: i}); err != nil {
			return err
		}
	}
	if err := pc.c.Flush(); err != nil {
		return err
	}
	for _, i := range idx {
		pc.nc.SetDeadline(time.Now().Add(syncTimeout))
		if err := ctx.Err(); err != nil {
			return err
		}
		m, err := pc.c.Recv()
		if err != nil {
			return fmt.Errorf("read chunk %d from peer %s: %w", i, pc.peer, err)
		}
		switch m := m.(type) {
		case *wire.ChunkData:
			off := int64(i) * int64(cs)
			if m.Index != i || int64(len(m.Data)) != min(int64(cs), s.data.Size()-off) {
				return fmt.Errorf("peer %s sent chunk %d (%d bytes) for chunk %d", pc.peer, m.Index, len(m.Data), i)
			}
			if err := put(i, m.Data); err != nil {
				return &localError{err}
			}
		case *wire.Error:
			return &wire.Error{Code: m.Code, Message: m.Message}
		default:
			return fmt.Errorf("peer %s answered a chunk request with %s", pc.peer, m.Type())
		}
	}
	return nil
}
