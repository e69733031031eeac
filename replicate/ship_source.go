package replicate

import (
	"context"
	"errors"
	"time"

	"github.com/tharsis/tharsis/blockdev"
)

// Source is what a ShipServer serves of one resource: the node's log of it
// (on the primary, or fetched by a secondary, which gives cascading), its
// data device for full syncs, and its status.
type Source interface {
	// LogDir is the directory holding the resource's segment files.
	LogDir() string
	// End is the durable end of the log: every record up to it is
	// fdatasync'd and may be shipped. Segments before End.Segment are
	// complete (sealed).
	End() Position
	// WaitEnd blocks until End().Seq > after.Seq, ctx is done (ctx.Err())
	// or a while passed, and returns End().
	WaitEnd(ctx context.Context, after Position) (Position, error)
	// SyncData returns the data device a full sync reads and the position
	// up to which it holds every record, or an error when the device is
	// not consistent and cannot serve as a sync source.
	SyncData() (blockdev.Device, Position, error)
	// Status is the node's replication state of the resource.
	Status() ResourceStatus
}

// PrimarySource returns the Source of a Primary's log and data device, to
// give to ShipServer.AddResource on the resource's primary node.
func PrimarySource(p *Primary) Source { return primarySource{p} }

type primarySource struct{ p *Primary }

func (s primarySource) LogDir() string { return s.p.opts.Dir }

func (s primarySource) End() Position { return s.p.w.lastPosition() }

func (s primarySource) WaitEnd(ctx context.Context, after Position) (Position, error) {
	// The log writer has no broadcast of new data that can be reached
	// without changing it, so poll its in-memory end: cheap (a mutex), and
	// backing off from 250µs to 4ms keeps the tail latency low. Records
	// acknowledged without an fdatasync (sync = false and no flush yet)
	// are made durable here, so that peers get them promptly: the
	// fdatasync is group-committed with the writers'.
	w := s.p.w
	return pollEnd(ctx, after, func() Position {
		e := w.lastPosition()
		if e.Seq <= after.Seq {
			if l := w.writtenPosition(); l.Seq > e.Seq {
				if err := w.waitDurable(l.Seq); err == nil {
					e = w.lastPosition()
				}
			}
		}
		return e
	})
}

func (s primarySource) SyncData() (blockdev.Device, Position, error) {
	s.p.mu.Lock()
	applied, failed := s.p.applied, s.p.failed
	s.p.mu.Unlock()
	if failed != nil {
		return nil, Position{}, failed
	}
	return s.p, applied, nil
}

func (s primarySource) Status() ResourceStatus {
	st := s.p.Status()
	rs := ResourceStatus{Resource: s.p.opts.Resource, Role: RolePrimary, End: st.Written, Applied: st.Applied,
		Consistent: true, SourceEnd: st.Written, Err: st.Err}
	for _, seg := range st.Segments {
		rs.Segments = append(rs.Segments, SegmentSummary{Name: seg.Name, Size: seg.Size, Sealed: seg.Sealed,
			SHA256: segmentSum(s.p.opts.Dir, seg.Name, seg.Size, seg.Sealed)})
	}
	return rs
}

// waitSlice bounds one WaitEnd call, so callers can send heartbeats.
const waitSlice = time.Second

func pollEnd(ctx context.Context, after Position, end func() Position) (Position, error) {
	deadline := time.Now().Add(waitSlice)
	d := 250 * time.Microsecond
	for {
		if e := end(); e.Seq > after.Seq || time.Now().After(deadline) {
			return e, nil
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return end(), ctx.Err()
		case <-t.C:
		}
		d = min(2*d, 4*time.Millisecond)
	}
}

var errNotConsistent = errors.New("the data device is not consistent (a full sync has not finished); it cannot be a sync source")
