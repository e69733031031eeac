package replicate

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"

	"github.com/tharsis/tharsis/replicate/wire"
)

// stream sends the log of r after from on c until the connection or the
// resource goes away: history first (read from the segment files), then the
// live tail as the source's End moves. Every SegmentData frame holds whole
// records (up to about shipBatch bytes, or one larger record). With from.Seq
// == 0 the stream starts at the beginning of segment from.Segment (the first
// segment held when 0): a joining node's log begins there. With comp set
// (the fetcher accepts zstd and the resource compresses), the frames whose
// data shrinks go out as CompressedData.
//
// The fetcher's acknowledgements are read meanwhile (readAcks); readDone is
// closed when that reading ends (the fetcher closed the connection).
func (s *ShipServer) stream(r *shipRes, res, peer string, nc net.Conn, c *wire.Conn, from Position, comp *wire.Compressor, readDone chan<- struct{}) error {
	ctx, cancel := context.WithCancel(r.ctx)
	defer cancel()
	src := r.src
	var acked ackBound // nothing shipped yet: no acknowledgement counts
	go func() {
		// After Fetch the client sends only acknowledgements (readAcks);
		// a read fails when it closes the connection.
		defer close(readDone)
		readAcks(c, src, peer, &acked)
		cancel()
	}()
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()

	dir := src.LogDir()
	ss := &segStream{dir: dir, res: res}
	defer ss.close()
	segs, err := listSegments(OSFS{}, dir)
	if err != nil {
		return &wire.Error{Code: wire.CodeInternal, Message: fmt.Sprintf("list log directory: %v", err)}
	}
	cur := SegmentName{}
	off := from.Offset
	if from.Seq == 0 {
		off = 0
		for _, n := range segs {
			if n.Seq >= from.Segment {
				cur = n
				break
			}
		}
		if cur.Seq == 0 || from.Segment != 0 && cur.Seq != from.Segment {
			if len(segs) > 0 && from.Segment < segs[0].Seq {
				return &wire.Error{Code: wire.CodeGone, Message: fmt.Sprintf("node %s no longer holds segment %d of the log (its oldest is %s)", s.Node, from.Segment, segs[0])}
			}
			// Not there yet (this node is behind): wait for it.
			cur = SegmentName{Seq: max(from.Segment, 1)}
		}
	} else {
		for _, n := range segs {
			if n.Seq == from.Segment {
				cur = n
			}
		}
		if cur.Seq == 0 {
			if len(segs) == 0 || from.Segment < segs[0].Seq {
				return s.missing(src, from.Segment, &wire.Error{Code: wire.CodeGone, Message: fmt.Sprintf("node %s no longer holds segment %d of the log, which the fetcher needs next (run a full sync: `tharsis invalidate RES`)", s.Node, from.Segment)})
			}
			cur = SegmentName{Seq: from.Segment}
		} else if cur.Seq < src.End().Segment {
			// A complete segment: a fetcher that holds more of it than
			// this node is on another history.
			if size, err := ss.size(cur); err == nil && from.Offset > size {
				return &wire.Error{Code: wire.CodeDiverged, Message: fmt.Sprintf("the fetcher holds %d bytes of %s, but node %s's copy is complete at %d: the logs fork (split brain)", from.Offset, cur, s.Node, size)}
			}
		}
	}

	var buf []byte
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		end := src.End()
		if cur.Node == "" {
			// Waiting for a segment this node has not got yet.
			if end.Segment >= cur.Seq {
				if n, ok, err := findSegment(dir, cur.Seq); err != nil {
					return err
				} else if ok {
					cur = n
					continue
				}
				if end.Segment > cur.Seq {
					// This node's log is past the segment but lacks
					// it: moved out for damage, it may never come.
					if e := s.missing(src, cur.Seq, nil); e != nil {
						return e
					}
				}
			}
		} else {
			var limit int64
			switch {
			case cur.Seq < end.Segment:
				if limit, err = ss.size(cur); err != nil {
					return err
				}
			case cur.Seq == end.Segment:
				limit = end.Offset
			}
			if off < limit {
				var n int
				n, buf, err = ss.readRecords(cur, off, limit, buf)
				if cerr, ok := corruptAt(err); ok {
					if ds, ok := src.(DamageSink); ok {
						ds.NoteDamage(cerr)
					}
					// The fetcher learns how far the log goes (its lag is
					// not 0), then why this node cannot ship it.
					if err := c.SendFlush(&wire.Heartbeat{End: toWire(end)}); err != nil {
						return err
					}
					return &wire.Error{Code: wire.CodeCorrupt, Message: fmt.Sprintf("node %s's copy of log segment %s is damaged at offset %d (%s)", s.Node, cur, cerr.Offset, cerr.Reason)}
				}
				if err != nil {
					return &wire.Error{Code: wire.CodeInternal, Message: fmt.Sprintf("node %s cannot read its log: %v", s.Node, err)}
				}
				var m wire.Message = &wire.SegmentData{Segment: cur.String(), Offset: off, End: toWire(end), Data: buf[:n]}
				acked.set(Position{Segment: cur.Seq, Offset: off + int64(n)})
				if comp != nil {
					m = comp.Compress(m.(*wire.SegmentData))
				}
				if s.mangle != nil {
					s.mangle(m)
				}
				if err := c.SendFlush(m); err != nil {
					return err
				}
				off += int64(n)
				continue
			}
			if cur.Seq < end.Segment {
				// The segment is complete (sealed): go on with the next.
				next, ok, err := findSegment(dir, cur.Seq+1)
				if err != nil {
					return err
				}
				if !ok {
					return s.missing(src, cur.Seq+1, &wire.Error{Code: wire.CodeGone, Message: fmt.Sprintf("node %s holds no segment %d of the log after %s", s.Node, cur.Seq+1, cur)})
				}
				cur, off = next, 0
				continue
			}
		}
		e, err := src.WaitEnd(ctx, end)
		if err != nil {
			return err
		}
		if e.Seq == end.Seq {
			if err := c.SendFlush(&wire.Heartbeat{End: toWire(e)}); err != nil {
				return err
			}
		}
	}
}

// ackBound is how far a stream shipped (segment and offset): a fetcher's
// acknowledgement counts only up to there, so a node on another history
// cannot vouch for records it never got from this one.
type ackBound struct {
	mu  sync.Mutex
	pos Position
}

func (b *ackBound) set(p Position) {
	b.mu.Lock()
	b.pos = p
	b.mu.Unlock()
}

// covers reports whether p is within what was shipped.
func (b *ackBound) covers(p Position) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return p.Segment < b.pos.Segment || p.Segment == b.pos.Segment && p.Offset <= b.pos.Offset
}

// readAcks reads the fetcher's frames until the connection fails and hands
// its acknowledgements to src when src counts them (a primary); anything
// else ends the stream.
func readAcks(c *wire.Conn, src Source, peer string, shipped *ackBound) {
	sink, _ := src.(AckSink)
	for {
		m, err := c.Recv()
		if err != nil {
			return
		}
		a, ok := m.(*wire.Ack)
		if !ok {
			return
		}
		if p := fromWire(a.Durable); sink != nil && shipped.covers(p) {
			sink.NoteAck(peer, p)
		}
	}
}

// missing returns the refusal for segment seq, which this node does not
// hold: the damage, when the segment was moved out of the log for it and
// is not restored yet (a fetcher that missed the first refusal still learns
// why, and tries another peer instead of taking the segment for gone);
// else gone (which may be nil).
func (s *ShipServer) missing(src Source, seq uint64, gone *wire.Error) *wire.Error {
	for _, d := range src.Status().Damage {
		if n, ok := ParseSegmentName(d.Segment); ok && n.Seq == seq && d.Quarantined != "" && !d.Restored {
			return &wire.Error{Code: wire.CodeCorrupt, Message: fmt.Sprintf("node %s's copy of log segment %s is damaged at offset %d (%s)", s.Node, d.Segment, d.Offset, d.Reason)}
		}
	}
	return gone
}

// findSegment looks up the segment numbered seq in dir.
func findSegment(dir string, seq uint64) (SegmentName, bool, error) {
	segs, err := listSegments(OSFS{}, dir)
	if err != nil {
		return SegmentName{}, false, &wire.Error{Code: wire.CodeInternal, Message: fmt.Sprintf("list log directory: %v", err)}
	}
	for _, n := range segs {
		if n.Seq == seq {
			return n, true, nil
		}
	}
	return SegmentName{}, false, nil
}

// segStream reads whole records from the segment files of a log.
type segStream struct {
	dir  string
	res  string // resource, for hints
	name SegmentName
	f    *os.File
}

func (ss *segStream) open(n SegmentName) error {
	if ss.f != nil && ss.name == n {
		return nil
	}
	ss.close()
	f, err := os.Open(filepath.Join(ss.dir, n.String()))
	if err != nil {
		return &wire.Error{Code: wire.CodeGone, Message: fmt.Sprintf("open log segment: %v", err)}
	}
	ss.f, ss.name = f, n
	return nil
}

func (ss *segStream) close() {
	if ss.f != nil {
		ss.f.Close()
		ss.f = nil
	}
}

func (ss *segStream) size(n SegmentName) (int64, error) {
	if err := ss.open(n); err != nil {
		return 0, err
	}
	st, err := ss.f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// readRecords reads whole records of segment n from off (a record
// boundary) up to limit (a record boundary): about shipBatch bytes, or one
// larger record. It returns their length and the buffer holding them.
func (ss *segStream) readRecords(n SegmentName, off, limit int64, buf []byte) (int, []byte, error) {
	if err := ss.open(n); err != nil {
		return 0, buf, err
	}
	want := min(limit-off, shipBatch)
	if int64(cap(buf)) < want {
		buf = make([]byte, max(want, shipBatch))
	}
	b := buf[:want]
	if _, err := ss.f.ReadAt(b, off); err != nil {
		return 0, buf, fmt.Errorf("read %s at %d: %w", n, off, err)
	}
	// Every record is verified before it leaves: damage is found here,
	// reported by this node, and the fetcher goes to another copy.
	corrupt := func(at int, err error) *CorruptError {
		return &CorruptError{File: filepath.Join(ss.dir, n.String()), Offset: off + int64(at), Reason: err.Error(), Resource: ss.res}
	}
	pos := 0
	for pos+HeaderSize <= len(b) {
		h, err := decodeHeader(b[pos:])
		if err == nil && h.rec.Segment != n.Seq {
			err = fmt.Errorf("%w: record belongs to segment %d", ErrInvalidRecord, h.rec.Segment)
		}
		if err != nil {
			if pos > 0 {
				break // ship the good records first
			}
			return 0, buf, corrupt(pos, err)
		}
		rl := HeaderSize + h.paylen
		if off+int64(pos+rl) > limit {
			if pos > 0 {
				break
			}
			return 0, buf, corrupt(pos, fmt.Errorf("%w: a record of %d bytes crosses the end of the durable log at %d", ErrInvalidRecord, rl, limit))
		}
		if pos+rl > len(b) {
			if pos > 0 {
				break
			}
			// One record larger than the batch: read it whole.
			nb := make([]byte, rl)
			copy(nb, b)
			if _, err := ss.f.ReadAt(nb[len(b):], off+int64(len(b))); err != nil {
				return 0, buf, fmt.Errorf("read %s at %d: %w", n, off, err)
			}
			if err := h.checkCRC(nb); err != nil {
				return 0, buf, corrupt(0, err)
			}
			return rl, nb, nil
		}
		if err := h.checkCRC(b[pos : pos+rl]); err != nil {
			if pos > 0 {
				break
			}
			return 0, buf, corrupt(pos, err)
		}
		pos += rl
	}
	if pos == 0 {
		return 0, buf, corrupt(0, fmt.Errorf("%w: no whole record before offset %d", ErrInvalidRecord, limit))
	}
	return pos, buf, nil
}
