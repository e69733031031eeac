package replicate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"sync"
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
//
// A Secondary keeps the index too, for the sealed segments it fetched and
// checked from their start (storeFetched verifies every record before it
// writes it), so OpenPrimary on its directory (a promotion) trusts them on
// the same rules. An entry leaves the index (written at once) before its
// file is removed, truncated or created again (segBook.forget), so the file
// never lists a segment for bytes that were not checked.
//
// Entries also keep the SHA-256 of the segment once computed for a status
// (segBook.sum), so a start does not hash the retained log again.
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
	// SHA256 is the hex SHA-256 of the segment's bytes once computed
	// (status, segment sums below); "" until then.
	SHA256 string `json:"sha256,omitempty"`
	// gen identifies this entry in memory (never written): a sum
	// computed from the file is kept only if the entry it was computed
	// for is still there (the file was not replaced meanwhile).
	gen uint64
}

// same says whether e and o describe the same check of a segment.
func (e indexEntry) same(o indexEntry) bool {
	return e.Name == o.Name && e.Size == o.Size && e.Records == o.Records && e.FirstSeq == o.FirstSeq && e.LastSeq == o.LastSeq
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

// segBook is the segment index of one log directory in memory, and what
// was last written of it. An entry leaves the book before its segment file
// is removed, truncated or replaced, so the file never lists a segment for
// other bytes than those checked.
type segBook struct {
	mu      sync.Mutex // held while the file is written: a later content is never overwritten by an older
	idx     segIndex
	gen     uint64
	written []byte
}

// load starts the book with idx, read from the index file.
func (b *segBook) load(idx segIndex) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.idx = segIndex{}
	for n, e := range idx {
		b.gen++
		e.gen = b.gen
		b.idx[n] = e
	}
	b.written = b.idx.encode()
}

// set replaces the entries with idx. An entry equal to the one it replaces
// keeps its sum: the segment was not replaced (see segBook).
func (b *segBook) set(idx segIndex) {
	b.mu.Lock()
	defer b.mu.Unlock()
	old := b.idx
	b.idx = segIndex{}
	for n, e := range idx {
		if o, ok := old[n]; ok && o.same(e) {
			e.SHA256, e.gen = o.SHA256, o.gen
		} else {
			b.gen++
			e.SHA256, e.gen = "", b.gen
		}
		b.idx[n] = e
	}
}

// add enters the check of segment info (sealed, every record read from
// its start).
func (b *segBook) add(info SegmentInfo) {
	idx := indexOf([]SegmentInfo{info}, func(SegmentName) bool { return false })
	b.mu.Lock()
	defer b.mu.Unlock()
	for n, e := range idx {
		if o, ok := b.idx[n]; ok && o.same(e) {
			continue
		}
		b.gen++
		e.gen = b.gen
		if b.idx == nil {
			b.idx = segIndex{}
		}
		b.idx[n] = e
	}
}

// drop removes the entries of the segments that match (all with nil) and
// reports whether there were any.
func (b *segBook) drop(match func(SegmentName) bool) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := len(b.idx)
	maps.DeleteFunc(b.idx, func(name SegmentName, _ indexEntry) bool { return match == nil || match(name) })
	return len(b.idx) != n
}

// entry returns the entry of segment name.
func (b *segBook) entry(name SegmentName) (indexEntry, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e, ok := b.idx[name]
	return e, ok
}

// keepSum records sum as the SHA-256 of the segment of entry e, if e is
// still the book's entry for it. It reports whether it did.
func (b *segBook) keepSum(e indexEntry, sum string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, _ := ParseSegmentName(e.Name)
	cur, ok := b.idx[n]
	if !ok || cur.gen != e.gen || cur.SHA256 != "" {
		return false
	}
	cur.SHA256 = sum
	b.idx[n] = cur
	return true
}

// forget drops the entries of the segments that match (all with nil) and
// writes the index file before the caller changes those segment files, so
// it never lists a segment for bytes that were not checked. If the file
// cannot be written it is removed (the next start scans).
func (b *segBook) forget(fsys FS, dir string, match func(SegmentName) bool, logger *slog.Logger) {
	if !b.drop(match) {
		return
	}
	if err := b.save(fsys, dir); err != nil {
		logger.Warn("cannot write the segment index; removing it (the next start reads and checks every segment)", "err", err)
		fsys.Remove(filepath.Join(dir, indexFile))
		b.mu.Lock()
		b.written = nil
		b.mu.Unlock()
	}
}

// save writes the index file of dir if the book changed since it was last
// written.
func (b *segBook) save(fsys FS, dir string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	enc := b.idx.encode()
	if bytes.Equal(enc, b.written) {
		return nil
	}
	if err := writeFileAtomic(fsys, filepath.Join(dir, indexFile), enc); err != nil {
		return fmt.Errorf("write the segment index of %s: %w", dir, err)
	}
	b.written = enc
	return nil
}

// sum returns the SHA-256 of the sealed segment name of size bytes in dir
// for a status: from the book when it lists the segment at that size;
// else "" while it is computed in the background (once: it is then kept in
// the book, and saved with it by saved). A segment the book does not list
// is summed as before, cached by path and size for this process.
func (b *segBook) sum(dir string, name SegmentName, size int64, saved func()) string {
	e, ok := b.entry(name)
	if !ok || e.Size != size {
		return segmentSum(dir, name.String(), size, true, nil)
	}
	if e.SHA256 != "" {
		return e.SHA256
	}
	return segmentSum(dir, name.String(), size, true, func(sum string) {
		if b.keepSum(e, sum) && saved != nil {
			saved()
		}
	})
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
	p.book.set(indexOf(segs, func(n SegmentName) bool {
		return slices.ContainsFunc(damaged, func(d Damage) bool { return d.Segment == n.String() && !d.Restored })
	}))
	p.saveIndex()
}

// saveIndex writes the segment index if it changed. A failure is only
// logged: the next start then reads more.
func (p *Primary) saveIndex() {
	if err := p.book.save(p.fsys, p.opts.Dir); err != nil {
		p.logger.Warn("cannot write the segment index; the next start reads and checks the segments it would list", "err", err)
	}
}

// segmentSum returns the SHA-256 of segment name for a status ("" for one
// not sealed, or until computed): see segBook.sum.
func (p *Primary) segmentSum(name string, size int64, sealed bool) string {
	n, ok := ParseSegmentName(name)
	if !ok || !sealed {
		return ""
	}
	return p.book.sum(p.opts.Dir, n, size, nil) // saved by the checkpoint loop (never after Close)
}
