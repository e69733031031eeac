package replicate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/tharsis/tharsis/replicate/wire"
)

// EmergencyChunks is a primary's answer to an emergency sync: the chunks it
// wrote without its log since every node last caught up.
type EmergencyChunks struct {
	Active    bool       `json:"active"` // still in emergency mode: no answer yet
	At        Position   `json:"at"`
	Marks     []Position `json:"marks"`
	End       Position   `json:"end"` // the log's end when the list was taken
	ChunkSize int64      `json:"chunk_size"`
	Chunks    []uint64   `json:"chunks"`
}

// EmergencySource is implemented by Sources that can list the chunks they
// wrote without the log (a primary's; ok is false for any other).
type EmergencySource interface {
	EmergencyChunks() (ec EmergencyChunks, ok bool)
}

type emergencyRequest struct {
	Resource string `json:"resource"`
}

// serveEmergency answers an emergency request on the ship server.
func (s *ShipServer) serveEmergency(c *wire.Conn, m *wire.Emergency) error {
	var req emergencyRequest
	if err := json.Unmarshal(m.JSON, &req); err != nil {
		return c.SendFlush(&wire.Error{Code: wire.CodeBadRequest, Message: fmt.Sprintf("unreadable emergency request: %v", err)})
	}
	r := s.resource(req.Resource)
	var ec EmergencyChunks
	ok := false
	if es, isES := r.srcOrNil().(EmergencySource); isES {
		ec, ok = es.EmergencyChunks()
	}
	if !ok {
		return c.SendFlush(&wire.Error{Code: wire.CodeNoResource, Message: fmt.Sprintf("node %s is not the primary of %q", s.Node, req.Resource)})
	}
	b, err := json.Marshal(ec)
	if err != nil {
		return c.SendFlush(&wire.Error{Code: wire.CodeInternal, Message: err.Error()})
	}
	return c.SendFlush(&wire.Emergency{JSON: b})
}

// errFullSyncInstead: an emergency sync cannot cover this node's gap; the
// sync loop runs a full sync at once.
var errFullSyncInstead = errors.New("a full sync is needed instead")

// emergencySyncFrom copies from p the chunks p wrote without its log, and
// lets replay go on past the emergency marks that covers. If p's list does
// not cover the mark this node stopped at, it turns the sync into a full
// one.
func (s *Secondary) emergencySyncFrom(ctx context.Context, p Peer) error {
	pc, err := dialPeer(ctx, s.opts.Node, s.opts.auth(), p)
	if err != nil {
		return err
	}
	defer pc.close()
	b, _ := json.Marshal(emergencyRequest{Resource: s.opts.Resource})
	m, err := pc.request(ctx, &wire.Emergency{JSON: b}, syncTimeout)
	if err != nil {
		return err
	}
	em, ok := m.(*wire.Emergency)
	if !ok {
		return fmt.Errorf("peer %s answered an emergency request with %s", p, m.Type())
	}
	var ec EmergencyChunks
	if err := json.Unmarshal(em.JSON, &ec); err != nil {
		return fmt.Errorf("peer %s sent an unreadable emergency answer: %w", p, err)
	}
	if ec.Active {
		return fmt.Errorf("peer %s is still in emergency mode; the sync starts once its log is written again", p)
	}
	s.mu.Lock()
	stop := s.st.StoppedAt
	s.mu.Unlock()
	if stop == nil || !slices.ContainsFunc(ec.Marks, func(m Position) bool { return m.Seq == stop.Seq+1 }) {
		s.logger.Warn("the primary's emergency list does not cover where this node stopped; running a full sync instead", "peer", p.String())
		if err := s.update(func(st *secondaryState) {
			st.StoppedAt, st.EmergencySync, st.DiscardLog, st.SyncStart = nil, false, true, Position{}
		}); err != nil {
			return err
		}
		return errFullSyncInstead
	}
	if err := s.update(func(st *secondaryState) { st.Sync, st.Consistent, st.SyncStart = SyncRunning, false, *stop }); err != nil {
		return err
	}
	began := time.Now()
	s.mu.Lock()
	s.prog = SyncProgress{Source: p.Name, Total: int64(len(ec.Chunks)) * ec.ChunkSize, Started: began}
	s.mu.Unlock()
	s.logger.Info("emergency sync started: copying the chunks the primary wrote without its log", "peer", p.String(), "chunks", len(ec.Chunks))
	n, err := s.fetchChunks(ctx, pc, ec.Chunks, uint32(ec.ChunkSize))
	if err != nil {
		return err
	}
	if err := s.data.Flush(); err != nil {
		return fmt.Errorf("flush data device: %w", err)
	}
	// The chunks hold the source's state as of now or later: consistent
	// once the log is replayed past its end as of now.
	rs, err := pc.sourceStatus(ctx, s.opts.Resource)
	if err != nil {
		return err
	}
	end := rs.logEnd()
	s.mu.Lock()
	s.prog.Compared, s.prog.Transferred = s.prog.Total, n
	ls := s.prog
	ls.State, ls.Start = SyncDone, *stop
	s.lastSync = &ls
	s.mu.Unlock()
	if err := s.update(func(st *secondaryState) {
		st.Sync, st.ConsistentAt, st.SyncChunk = SyncCatchingUp, end, 0
		st.StoppedAt, st.EmergencySync, st.PassMarksUpTo = nil, false, ec.End.Seq
	}); err != nil {
		return err
	}
	s.logger.Info("emergency sync copied the chunks; replaying the log from the mark on", "peer", p.String(),
		"transferred_bytes", n, "took", time.Since(began).Round(time.Millisecond), "consistent_at", end.String())
	kick(s.kickReplay)
	return nil
}

func (r *shipRes) srcOrNil() Source {
	if r == nil {
		return nil
	}
	return r.src
}
