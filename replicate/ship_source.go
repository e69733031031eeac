package replicate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tharsis/tharsis/replicate/wire"

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

// Refuser is implemented by Sources that may refuse to ship their log and
// data for a while (a node whose log forks from the current history, or
// whose role is not settled yet): Refuse returns why, or nil.
type Refuser interface {
	Refuse() error
}

// FetchChecker is implemented by Sources that check the designation a
// fetcher follows before shipping their log to it (see
// RoleStatus.RefuseShip): CheckFetch returns why not (wrapping
// ErrStaleDesignation when this node's designation is the older one), or
// nil. Fetchers that do not say (older releases) are not checked.
type FetchChecker interface {
	CheckFetch(peer string, d Designation) error
}

// SendRole delivers a role message to peer p (over a new authenticated
// connection) and returns once p's daemon took it, or why not.
func SendRole(ctx context.Context, node string, auth Auth, p Peer, m RoleMessage) error {
	pc, err := dialPeer(ctx, node, auth, p)
	if err != nil {
		return err
	}
	defer pc.close()
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	a, err := pc.request(ctx, &wire.Role{JSON: b}, statusTimeout)
	if err != nil {
		return err
	}
	if _, ok := a.(*wire.Role); !ok {
		return fmt.Errorf("peer %s answered a role message with %s", p, a.Type())
	}
	return nil
}

// IdleSource is the Source of a resource whose data path is closed (the
// node is starting, or left the resource): it ships nothing, but its status
// lists the segments in dir, so peers can compare histories.
func IdleSource(dir, resource string) Source { return idleSource{dir: dir, res: resource} }

type idleSource struct{ dir, res string }

func (s idleSource) LogDir() string { return s.dir }
func (s idleSource) End() Position  { return Position{} }
func (s idleSource) WaitEnd(ctx context.Context, after Position) (Position, error) {
	t := time.NewTimer(waitSlice)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return Position{}, ctx.Err()
	case <-t.C:
		return Position{}, nil
	}
}
func (s idleSource) SyncData() (blockdev.Device, Position, error) {
	return nil, Position{}, errors.New("its data path is not open")
}
func (s idleSource) Refuse() error { return errors.New("its data path is not open") }
func (s idleSource) Status() ResourceStatus {
	return ResourceStatus{Resource: s.res, Segments: LogSegments(s.dir)}
}

// LogSegments lists the segments of the log in dir, oldest first, with
// their sizes; a segment counts as sealed when it ends with a segment-end
// marker. The newest segment that is not empty, if it ends in zeros
// (written ahead of its records by a primary that did not close it), is
// listed up to the end of its records.
func LogSegments(dir string) []SegmentSummary {
	names, _ := listSegments(OSFS{}, dir)
	out := []SegmentSummary{}
	newest := true // no segment after this one holds anything
	for i := len(names) - 1; i >= 0; i-- {
		n := names[i]
		f, err := os.Open(filepath.Join(dir, n.String()))
		if err != nil {
			continue
		}
		var size int64
		st, err := f.Stat()
		if err == nil {
			size = st.Size()
		}
		sealed := isSealedAt(f, size)
		if newest && size > 0 && !sealed {
			size, sealed = recordsEnd(f, n, st)
		}
		newest = newest && size == 0
		f.Close()
		out = append(out, SegmentSummary{Name: n.String(), Size: size, Sealed: sealed})
	}
	slices.Reverse(out)
	return out
}

// recordsEnd returns the end of the records of the newest segment f (not
// sealed at its end), and whether they end with a segment-end marker (a
// kill during a rotation can leave zeros after it): its size, unless it
// ends in a zero byte, in which case it is scanned (once per size and
// modification time: the answer is cached).
func recordsEnd(f *os.File, n SegmentName, st os.FileInfo) (int64, bool) {
	size := st.Size()
	var last [1]byte
	if _, err := f.ReadAt(last[:], size-1); err != nil || last[0] != 0 {
		return size, false
	}
	key := recordsEndKey{size: size, mtime: st.ModTime().UnixNano()}
	if c, ok := recordsEnds.Load(f.Name()); ok {
		if c := c.(recordsEndKey); c.size == key.size && c.mtime == key.mtime {
			return c.end, c.sealed
		}
	}
	info, err := ScanSegment(f, size, n, ScanOptions{Newest: true, Path: f.Name()}, nil)
	if err != nil {
		return size, false
	}
	key.end, key.sealed = info.End, info.Sealed
	if recordsEndsLen.Add(1) > 1024 {
		recordsEnds.Clear() // the segments of long ago are gone
		recordsEndsLen.Store(1)
	}
	recordsEnds.Store(f.Name(), key)
	return info.End, info.Sealed
}

type recordsEndKey struct {
	size, mtime, end int64
	sealed           bool
}

// recordsEnds caches recordsEnd by segment path (recordsEndsLen counts
// the stores since it was last cleared).
var (
	recordsEnds    sync.Map
	recordsEndsLen atomic.Int64
)

// PrimarySource returns the Source of a Primary's log and data device, to
// give to ShipServer.AddResource on the resource's primary node. Call it
// once per Primary.
func PrimarySource(p *Primary) Source { return &primarySource{p: p, ch: make(chan struct{})} }

// primarySource serves a Primary. While peers wait for its log, one
// goroutine (notify) waits in the log writer for the next durable record and
// wakes them: no polling. Asking the writer for durability also makes
// records acknowledged without an fdatasync (sync = false, no flush yet)
// durable promptly, so peers get them with low latency; those fdatasyncs
// are group-committed in the writer's sync stage and do not delay writers.
type primarySource struct {
	p *Primary

	mu       sync.Mutex
	ch       chan struct{} // closed (and replaced) when the durable end may have moved
	running  bool
	lastWait time.Time
	err      error // the log failed or closed
}

func (s *primarySource) LogDir() string { return s.p.opts.Dir }

func (s *primarySource) End() Position { return s.p.w.lastPosition() }

func (s *primarySource) WaitEnd(ctx context.Context, after Position) (Position, error) {
	t := time.NewTimer(waitSlice)
	defer t.Stop()
	for {
		s.mu.Lock()
		ch, err := s.ch, s.err
		s.lastWait = time.Now()
		if !s.running && err == nil {
			s.running = true
			go s.notify()
		}
		s.mu.Unlock()
		e := s.End()
		if e.Seq > after.Seq {
			return e, nil
		}
		if err != nil {
			return e, err
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

// notify waits for each next durable record and wakes WaitEnd callers. It
// ends when the log closes or fails, or after a while without callers.
func (s *primarySource) notify() {
	w := s.p.w
	for {
		e := w.lastPosition()
		err := w.waitDurable(e.Seq + 1)
		s.mu.Lock()
		close(s.ch)
		s.ch = make(chan struct{})
		if err != nil {
			s.err = fmt.Errorf("the log of %s is closed or failed: %w", resName(s.p.opts.Resource), err)
		}
		if err != nil || time.Since(s.lastWait) > 10*time.Second {
			s.running = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
	}
}

func (s *primarySource) SyncData() (blockdev.Device, Position, error) {
	s.p.mu.Lock()
	applied, failed := s.p.applied, s.p.failed
	s.p.mu.Unlock()
	if failed != nil {
		return nil, Position{}, failed
	}
	return s.p, applied, nil
}

// EmergencyChunks implements EmergencySource.
func (s *primarySource) EmergencyChunks() (EmergencyChunks, bool) {
	st := s.p.Emergency()
	return EmergencyChunks{Active: st.Active, At: st.At, Marks: st.Marks, End: s.p.Status().Logged, ChunkSize: EmergencyChunk, Chunks: s.p.EmergencyChunks()}, true
}

// NoteDamage implements DamageSink.
func (s *primarySource) NoteDamage(cerr *CorruptError) { s.p.noteDamage(cerr) }

func (s *primarySource) Status() ResourceStatus {
	st := s.p.Status()
	rs := ResourceStatus{Resource: s.p.opts.Resource, Role: RolePrimary, End: st.Written, Logged: st.Logged, Applied: st.Applied,
		Consistent: true, SourceEnd: st.Written, Err: st.Err, Damage: s.p.Damage()}
	if em := s.p.Emergency(); em.Active || len(em.Marks) > 0 {
		rs.Emergency = &em
	}
	rs.Ack = s.p.Ack()
	for _, seg := range st.Segments {
		rs.Segments = append(rs.Segments, SegmentSummary{Name: seg.Name, Size: seg.Size, Sealed: seg.Sealed,
			SHA256: s.p.segmentSum(seg.Name, seg.Size, seg.Sealed)})
	}
	return rs
}

// waitSlice bounds one WaitEnd call, so callers can send heartbeats.
const waitSlice = time.Second

var errNotConsistent = errors.New("the data device is not consistent (a full sync has not finished); it cannot be a sync source")
