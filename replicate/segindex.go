package replicate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
)

// The segment index keeps restart time bounded: recovery does not read the
// sealed segments it has checked before.
//
// indexFile in the log directory lists every sealed segment whose records
// were all read and checked intact (by a recovery scan, or written and
// sealed by this node's log writer, or restored from a peer's copy), with
// its size, record count and first and last sequence numbers. OpenPrimary
// trusts an entry for a segment that is wholly applied when the file still
// has that size and ends with its segment-end marker for that last record
// (one read of HeaderSize bytes), and the entry continues the sequence of
// the segment before it: such a segment is not read. Every other segment is
// read and checked as before: those with records after the applied
// position (they are replayed), the newest (its torn tail is cut), and any
// whose entry is missing, stale or unreadable (the index is then written
// again). The index is only ever a shortcut: losing or corrupting it costs
// one full scan, never data.
//
// A sealed segment that rots on disk after it was indexed is not found by
// recovery. It is found where its records are used: the ship server checks
// the CRC of every record it sends to a peer and reports damage
// (DamageSink, which quarantines an applied segment), FetchSegment checks
// every record of a copy, and a removed index file (`rm LOGDIR/segments.json`)
// makes the next start read and check every retained segment again.
const indexFile = "segments.json"

// indexVersion is the format of indexFile; another version is ignored.
const indexVersion = 1

type segIndexFile struct {
	Version  int          `json:"version"`
	Segments []indexEntry `json:"segments"`
}

// indexEntry is what a check of one sealed segment found.
type indexEntry struct {
	Name     string `json:"name"`
	Size     int64  `json:"size"` // the segment-end marker included
	Records  int    `json:"records"`
	FirstSeq uint64 `json:"first_seq"`
	LastSeq  uint64 `json:"last_seq"` // the segment-end marker's
}

// segIndex maps segment names to their entries.
type segIndex map[SegmentName]indexEntry

// readIndex returns the index of the log in dir. A missing index is empty;
// an unreadable one is empty too, with the reason (the log is then scanned).
func readIndex(fsys FS, dir string) (segIndex, error) {
	idx := segIndex{}
	b, err := readFile(fsys, filepath.Join(dir, indexFile))
	if errors.Is(err, fs.ErrNotExist) {
		return idx, nil
	}
	if err != nil {
		return idx, err
	}
	var f segIndexFile
	if err := json.Unmarshal(b, &f); err != nil {
		return idx, fmt.Errorf("segment index %s is unreadable: %w", filepath.Join(dir, indexFile), err)
	}
	if f.Version != indexVersion {
		return idx, fmt.Errorf("segment index %s has version %d, not %d", filepath.Join(dir, indexFile), f.Version, indexVersion)
	}
	for _, e := range f.Segments {
		if n, ok := ParseSegmentName(e.Name); ok {
			idx[n] = e
		}
	}
	return idx, nil
}

// indexOf builds the index of segs: their sealed segments that were read
// whole (Records counts the marker too), except those in skip.
func indexOf(segs []SegmentInfo, skip func(SegmentName) bool) segIndex {
	idx := segIndex{}
	for _, s := range segs {
		if s.Sealed && s.Records > 0 && s.FirstSeq != 0 && s.LastSeq >= s.FirstSeq && s.End > 0 && !skip(s.Name) {
			idx[s.Name] = indexEntry{Name: s.Name.String(), Size: s.End, Records: s.Records, FirstSeq: s.FirstSeq, LastSeq: s.LastSeq}
		}
	}
	return idx
}

// encode returns the file content of idx, oldest segment first.
func (idx segIndex) encode() []byte {
	f := segIndexFile{Version: indexVersion, Segments: []indexEntry{}}
	names := make([]SegmentName, 0, len(idx))
	for n := range idx {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b SegmentName) int { return cmpU64(a.Seq, b.Seq) })
	for _, n := range names {
		f.Segments = append(f.Segments, idx[n])
	}
	b, _ := json.MarshalIndent(f, "", "\t")
	return append(b, '\n')
}

// trustIndexed checks the sealed segment at path against its index entry e
// without reading its records: the file must have e's size and end with
// its segment-end marker for record e.LastSeq. It returns the segment's
// info, or false when the segment must be scanned.
func trustIndexed(fsys FS, path string, n SegmentName, e indexEntry, buf *[]byte) (SegmentInfo, bool) {
	f, err := fsys.Open(path)
	if err != nil {
		return SegmentInfo{}, false
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil || size != e.Size || size < HeaderSize {
		return SegmentInfo{}, false
	}
	rec, end, err := readRecord(f, size, size-HeaderSize, buf)
	if err != nil || end != size || rec.Kind != KindSegmentEnd || rec.Segment != n.Seq || rec.Seq != e.LastSeq {
		return SegmentInfo{}, false
	}
	return SegmentInfo{Name: n, End: size, Records: e.Records, FirstSeq: e.FirstSeq, LastSeq: e.LastSeq, Sealed: true}, true
}

// whollyApplied says whether every record of the indexed segment n is
// covered by the applied position from (its end marker may be the next).
func whollyApplied(n SegmentName, e indexEntry, from Position) bool {
	if e.LastSeq > from.Seq+1 {
		return false
	}
	return n.Seq < from.Segment || n.Seq == from.Segment && from.Offset >= e.Size
}

// writeIndex writes the index of the log's sealed segments (without those
// found damaged) if it changed. A failure is only logged: the next start
// then reads more.
func (p *Primary) writeIndex() {
	p.idxMu.Lock() // before the snapshot: a later one is never overwritten by an older
	defer p.idxMu.Unlock()
	w := p.w
	w.mu.Lock()
	segs := slices.Clone(w.segs)
	w.mu.Unlock()
	damaged := p.damage.all()
	b := indexOf(segs, func(n SegmentName) bool {
		return slices.ContainsFunc(damaged, func(d Damage) bool { return d.Segment == n.String() && !d.Restored })
	}).encode()
	if bytes.Equal(b, p.indexed) {
		return
	}
	if err := writeFileAtomic(p.fsys, filepath.Join(p.opts.Dir, indexFile), b); err != nil {
		p.logger.Warn("cannot write the segment index; the next start reads and checks the segments it would list", "err", err)
		return
	}
	p.indexed = b
}
