package replicate

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// SegmentName is the parsed name of a segment file, log-<seq:09d>-<node>.
type SegmentName struct {
	Seq  uint64
	Node string
}

// String returns the file name.
func (n SegmentName) String() string { return fmt.Sprintf("log-%09d-%s", n.Seq, n.Node) }

// ParseSegmentName parses a segment file name; ok is false for any other name.
func ParseSegmentName(name string) (n SegmentName, ok bool) {
	rest, found := strings.CutPrefix(name, "log-")
	if !found {
		return n, false
	}
	num, node, found := strings.Cut(rest, "-")
	if !found || len(num) < 9 || !validNode(node) {
		return n, false
	}
	seq, err := strconv.ParseUint(num, 10, 64)
	if err != nil || seq == 0 {
		return n, false
	}
	return SegmentName{Seq: seq, Node: node}, true
}

func validNode(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

// listSegments returns the segments in dir sorted by sequence number.
func listSegments(fsys FS, dir string) ([]SegmentName, error) {
	names, err := fsys.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var segs []SegmentName
	for _, name := range names {
		if n, ok := ParseSegmentName(name); ok {
			segs = append(segs, n)
		}
	}
	slices.SortFunc(segs, func(a, b SegmentName) int { return cmpU64(a.Seq, b.Seq) })
	for i := 1; i < len(segs); i++ {
		if segs[i].Seq == segs[i-1].Seq {
			return nil, fmt.Errorf("%w: log directory %s holds two segments numbered %d (%s and %s); remove the one that does not belong to this resource",
				ErrCorrupt, dir, segs[i].Seq, segs[i-1], segs[i])
		}
	}
	return segs, nil
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Position is a place in the log: the end of the record with sequence number
// Seq, which lies in segment Segment and ends at byte Offset of it. The zero
// Position is the start of an empty log. Seq alone orders positions; Segment
// and Offset say where to resume reading.
type Position struct {
	Segment uint64 `json:"segment"`
	Offset  int64  `json:"offset"`
	Seq     uint64 `json:"seq"`
}

// String formats the position for operators.
func (p Position) String() string {
	return fmt.Sprintf("segment %d offset %d (record %d)", p.Segment, p.Offset, p.Seq)
}

// ErrCorrupt is wrapped by every error that reports a damaged log (a bad
// record in the middle of the log or in a sealed segment, a missing end
// marker, a gap in the sequence). Match it with errors.Is.
var ErrCorrupt = errors.New("transaction log is corrupt")

// CorruptError says where the log is damaged and what to do about it.
type CorruptError struct {
	File     string // path of the segment
	Offset   int64  // byte offset of the damaged record
	Reason   string
	Resource string // for the hint; "RES" when unknown
}

func (e *CorruptError) Error() string {
	res := e.Resource
	if res == "" {
		res = "RES"
	}
	return fmt.Sprintf("transaction log segment %s is corrupt at byte offset %d: %s; restore the segment from a peer that holds it, or run `tharsis invalidate %s` to resync this node",
		e.File, e.Offset, e.Reason, res)
}

// Is makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }

// SegmentInfo describes one scanned segment.
type SegmentInfo struct {
	Name     SegmentName
	End      int64  // offset after the last good record
	Records  int    // good records, including the end marker
	FirstSeq uint64 // 0 when the segment holds no record
	LastSeq  uint64
	Sealed   bool  // ends with a segment-end marker
	Torn     int64 // bytes after End that were found to be a torn tail
	TornErr  error // why the tail was judged torn (nil if Torn == 0)
	// Zero counts the bytes after End that are all zero: the writer's
	// zeros ahead of its records (or, after a machine crash, unsynced
	// records that never reached the disk). Only the newest segment may
	// end so; like a torn tail, recovery cuts them.
	Zero int64
}

// ScanOptions configure ScanSegment.
type ScanOptions struct {
	// Newest says the segment is the newest of the log: a bad tail is
	// reported as torn (SegmentInfo.Torn) rather than as corruption,
	// unless a later record proves it had been synced.
	Newest bool
	// PrevSeq, if not 0, is the sequence number of the record before the
	// segment's first record.
	PrevSeq uint64
	// Durable, if not 0, is an offset of the segment known from elsewhere
	// to have been synced (the persisted applied position lies there): a
	// bad record before it is corruption, never a torn tail.
	Durable int64
	// Start, if not 0, is the offset of a record boundary to scan from
	// (PrevSeq is then the record before it): what lies before is not
	// read. SegmentInfo counts only what was scanned.
	Start int64
	// Path names the segment in errors.
	Path     string
	Resource string
	// Buf is an optional buffer to reuse for payloads.
	Buf []byte
}

// ScanSegment reads the records of the segment n from r, which holds size
// bytes, and calls fn for each good record (not for the end marker) with the
// offset after it. rec.Payload is only valid during the call. Memory use is
// bounded by MaxPayload whatever r holds. It returns a *CorruptError (errors.Is
// ErrCorrupt) for damage that is not a torn tail of the newest segment, and
// fn's error unchanged. It never panics.
func ScanSegment(r io.ReaderAt, size int64, n SegmentName, opt ScanOptions, fn func(rec Record, end int64) error) (SegmentInfo, error) {
	info := SegmentInfo{Name: n}
	corrupt := func(off int64, format string, args ...any) error {
		return &CorruptError{File: opt.Path, Offset: off, Reason: fmt.Sprintf(format, args...), Resource: opt.Resource}
	}
	if opt.Path == "" {
		opt.Path = n.String()
	}
	buf := opt.Buf
	prev := opt.PrevSeq
	off := opt.Start
	info.End = off
	for off < size {
		rec, next, err := readRecord(r, size, off, &buf)
		if err == nil && rec.Segment != n.Seq {
			err = fmt.Errorf("%w: record belongs to segment %d", ErrInvalidRecord, rec.Segment)
		}
		if err != nil {
			if !opt.Newest {
				if info.Sealed {
					return info, corrupt(off, "bytes after the segment-end marker (%v)", err)
				}
				return info, corrupt(off, "%v", err)
			}
			if off < opt.Durable {
				return info, corrupt(off, "%v, but the applied position at offset %d says everything before it had been synced", err, opt.Durable)
			}
			if zeroTo(r, off, size, &buf) {
				info.Zero = size - off
				return info, nil
			}
			if proof, ok := syncedPast(r, size, off, n.Seq, &buf); ok {
				return info, corrupt(off, "%v, but the record at offset %d says everything before offset %d had been synced", err, proof.at, proof.synced)
			}
			info.Torn = size - off
			info.TornErr = err
			return info, nil
		}
		if info.Sealed {
			return info, corrupt(off, "record %d after the segment-end marker", rec.Seq)
		}
		if prev != 0 && rec.Seq != prev+1 {
			return info, corrupt(off, "record %d follows record %d (records %d..%d are missing)", rec.Seq, prev, prev+1, rec.Seq-1)
		}
		if info.FirstSeq == 0 {
			info.FirstSeq = rec.Seq
		}
		info.LastSeq = rec.Seq
		info.Records++
		prev = rec.Seq
		if rec.Kind == KindSegmentEnd {
			info.Sealed = true
		} else if fn != nil {
			if err := fn(rec, next); err != nil {
				info.End = off
				return info, err
			}
		}
		off = next
		info.End = off
	}
	if !opt.Newest && !info.Sealed {
		return info, corrupt(off, "the segment ends without its segment-end marker (truncated)")
	}
	return info, nil
}

// readRecord reads and verifies the record at off. buf is grown as needed
// (at most HeaderSize+MaxPayload).
func readRecord(r io.ReaderAt, size, off int64, buf *[]byte) (Record, int64, error) {
	if size-off < HeaderSize {
		return Record{}, 0, fmt.Errorf("%w: %d bytes left, less than a record header", io.ErrUnexpectedEOF, size-off)
	}
	b := *buf
	if cap(b) < HeaderSize {
		b = make([]byte, 64<<10)
	}
	b = b[:HeaderSize]
	if _, err := r.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
		return Record{}, 0, err
	}
	h, err := decodeHeader(b)
	if err != nil {
		*buf = b
		return Record{}, 0, err
	}
	n := int64(HeaderSize + h.paylen)
	if n > size-off {
		*buf = b
		return Record{}, 0, fmt.Errorf("%w: record of %d bytes, only %d left", io.ErrUnexpectedEOF, n, size-off)
	}
	if int64(cap(b)) < n {
		nb := make([]byte, n)
		copy(nb, b)
		b = nb
	}
	b = b[:n]
	if _, err := r.ReadAt(b[HeaderSize:], off+HeaderSize); err != nil && !errors.Is(err, io.EOF) {
		*buf = b
		return Record{}, 0, err
	}
	*buf = b
	if err := h.checkCRC(b); err != nil {
		return Record{}, 0, err
	}
	rec := h.rec
	if h.paylen > 0 {
		rec.Payload = b[HeaderSize:n:n]
	}
	return rec, off + n, nil
}

// zeroTo says whether r holds only zero bytes from off to size.
func zeroTo(r io.ReaderAt, off, size int64, buf *[]byte) bool {
	b := *buf
	if cap(b) < 64<<10 {
		b = make([]byte, 64<<10)
		*buf = b
	}
	b = b[:min(cap(b), len(zeros))] // (readRecord may have grown it past zeros)
	for off < size {
		n, err := r.ReadAt(b[:min(int64(len(b)), size-off)], off)
		if !bytes.Equal(b[:n], zeros[:n]) {
			return false
		}
		if n == 0 || err != nil && !errors.Is(err, io.EOF) {
			return false
		}
		off += int64(n)
	}
	return true
}

type syncProof struct{ at, synced int64 }

// syncedPast looks after the bad record at off for a valid record of the
// same segment whose synced field is past off, which proves the bytes at off
// had been made durable (so the bad record is corruption, not a torn tail).
func syncedPast(r io.ReaderAt, size, off int64, seg uint64, buf *[]byte) (syncProof, bool) {
	const block = 1 << 20
	win := make([]byte, block+4)
	var magic = [4]byte{0x54, 0x48, 0x4c, 0x47}
	for base := off + 1; base < size; base += block {
		n, _ := r.ReadAt(win[:min(int64(len(win)), size-base)], base)
		w := win[:n]
		for i := 0; i+4 <= len(w) && i < block; i++ {
			if w[i] != magic[0] || w[i+1] != magic[1] || w[i+2] != magic[2] || w[i+3] != magic[3] {
				continue
			}
			at := base + int64(i)
			rec, _, err := readRecord(r, size, at, buf)
			if err == nil && rec.Segment == seg && rec.Synced > off {
				return syncProof{at: at, synced: rec.Synced}, true
			}
		}
	}
	return syncProof{}, false
}
