package replicate

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/tharsis/tharsis/internal/testutil"
)

// fetchedLog runs alpha as primary with segs sealed segments of ten 4 KiB
// records each and a few records in its current segment, and beta as its
// secondary (both start zeroed) until beta fetched and replayed all of it.
// It returns both nodes and the names of the sealed segments.
func fetchedLog(t *testing.T, segs int) (a, b *node, sealed []string) {
	t.Helper()
	a, b = newNode(t, "alpha", devSize), newNode(t, "beta", devSize)
	a.startPrimary(1 << 30)
	b.beforeRun = func(s *Secondary) { s.FakeSync() }
	b.startSecondary(func() []Peer { return []Peer{a.peer()} }, nil)
	writeSealed(t, a.prim, segs, &sealed)
	waitCaughtUp(t, a.prim, b)
	return a, b, sealed
}

// writeSealed writes segs segments of ten 4 KiB records through p, sealing
// each (their names appended to sealed), then three records to the next.
func writeSealed(t *testing.T, p *Primary, segs int, sealed *[]string) {
	t.Helper()
	for s := range segs {
		for i := range 10 {
			if _, err := p.WriteAt(bytes.Repeat([]byte{byte(len(*sealed) + s + i)}, 4096), int64(i)*4096); err != nil {
				t.Fatal(err)
			}
		}
		*sealed = append(*sealed, p.w.current().String())
		if err := p.Rotate(); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		if _, err := p.WriteAt([]byte("tail"), int64(i)*4096+100); err != nil {
			t.Fatal(err)
		}
	}
}

// promote opens beta's log as a primary (a handover or `primary --force`:
// beta's secondary is stopped first) through a read-counting FS and checks
// that its data equals alpha's.
func promote(t *testing.T, a, b *node) (*Primary, *readCountFS) {
	t.Helper()
	b.stopSecondary()
	c := newReadCountFS()
	p, err := OpenPrimary(noClose{b.data}, Options{Dir: b.dir, Node: "beta", Resource: "r0", FS: c, Logger: b.logger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	sameData(t, a, b)
	return p, c
}

func indexEntries(t *testing.T, dir string) map[string]indexEntry {
	t.Helper()
	idx, err := readIndex(OSFS{}, dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]indexEntry{}
	for _, e := range idx {
		out[e.Name] = e
	}
	return out
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// A secondary indexes the sealed segments it fetched and checked, so once
// promoted it reads of each only its end marker: handover time does not
// grow with the retained log.
func TestPromotionReadsOnlyMarkersOfFetched(t *testing.T) {
	for _, segs := range []int{2, 12} {
		a, b, sealed := fetchedLog(t, segs)
		idx := indexEntries(t, b.dir)
		for _, name := range sealed {
			if _, ok := idx[name]; !ok {
				t.Errorf("%d segments: beta's index does not list the fetched segment %s: %v", segs, name, idx)
			}
		}
		p, c := promote(t, a, b)
		readMarkersOnly(t, c, sealed)
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// A segment fetched across a restart of the secondary (its start read it
// up to the fetched end) and one whose index entry went stale are handled:
// the first is indexed anyway, the second is scanned on promotion.
func TestPromotionPartialAndStale(t *testing.T) {
	a, b, sealed := fetchedLog(t, 3)
	// beta stops holding half a segment; the rest arrives after its
	// restart.
	b.stopSecondary()
	writeSealed(t, a.prim, 2, &sealed)
	b.startSecondary(func() []Peer { return []Peer{a.peer()} }, nil)
	waitCaughtUp(t, a.prim, b)
	// A segment grown after it was indexed is not trusted.
	grown := filepath.Join(b.dir, sealed[1])
	b.stopSecondary()
	f, err := os.OpenFile(grown, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(make([]byte, 100))
	f.Close()
	b.startSecondary(func() []Peer { return []Peer{a.peer()} }, nil)
	if _, ok := indexEntries(t, b.dir)[sealed[1]]; ok {
		t.Errorf("the index still lists %s, which changed size", sealed[1])
	}
	os.Truncate(grown, fileSize(t, grown)-100) // as it was: scanned, intact
	p, c := promote(t, a, b)
	defer p.Close()
	for i, name := range sealed {
		n := c.bytesRead(name)
		if i == 1 {
			if size := fileSize(t, grown); n < size {
				t.Errorf("the promotion read %d of %d bytes of %s, whose entry was dropped: want a scan", n, size, name)
			}
		} else if n > HeaderSize {
			t.Errorf("the promotion read %d bytes of %s (want its marker)", n, name)
		}
	}
	if d := p.Damage(); len(d) != 0 {
		t.Errorf("damage: %+v", d)
	}
}

// A corrupt index on a secondary costs a full scan at promotion, no data.
func TestPromotionCorruptIndex(t *testing.T) {
	a, b, sealed := fetchedLog(t, 3)
	b.stopSecondary()
	os.WriteFile(filepath.Join(b.dir, indexFile), []byte("{not json"), 0o600)
	b.startSecondary(func() []Peer { return []Peer{a.peer()} }, nil)
	p, c := promote(t, a, b)
	defer p.Close()
	for _, name := range sealed {
		if n, size := c.bytesRead(name), fileSize(t, filepath.Join(b.dir, name)); n < size {
			t.Errorf("read %d of %d bytes of %s: want a full scan", n, size, name)
		}
	}
}

// Invalidate discards the local log: its index entries go first, so the
// index never lists a segment of the discarded history; the segments
// fetched afresh are indexed again.
func TestInvalidateForgetsIndex(t *testing.T) {
	a, b, sealed := fetchedLog(t, 3)
	b.sec.mu.Lock()
	gen := b.sec.replayGen
	b.sec.mu.Unlock()
	if err := b.sec.Invalidate(); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 20*time.Second, "beta to discard its log", func() bool {
		b.sec.mu.Lock()
		defer b.sec.mu.Unlock()
		return b.sec.replayGen != gen
	})
	writeSealed(t, a.prim, 2, &sealed)
	waitCaughtUp(t, a.prim, b)
	idx := indexEntries(t, b.dir)
	for name, e := range idx {
		if size := fileSize(t, filepath.Join(b.dir, name)); size != e.Size {
			t.Errorf("index entry %+v, file has %d bytes", e, size)
		}
	}
	for _, name := range sealed[3:] {
		if _, ok := idx[name]; !ok {
			t.Errorf("the segment %s fetched after the invalidate is not indexed: %v", name, idx)
		}
	}
}

// A damaged segment the secondary moves out of its log leaves the index
// before it goes.
func TestSecondaryQuarantineForgetsIndex(t *testing.T) {
	_, b, sealed := fetchedLog(t, 3)
	path := filepath.Join(b.dir, sealed[0])
	b.sec.noteDamage(&CorruptError{File: path, Offset: 0, Reason: "test"})
	if _, err := os.Stat(path); err == nil {
		t.Fatalf("%s is still in the log", sealed[0])
	}
	if _, ok := indexEntries(t, b.dir)[sealed[0]]; ok {
		t.Errorf("the index still lists the quarantined segment %s", sealed[0])
	}
}

// Status sums of sealed segments are computed once and kept in the index:
// after a restart (and after a promotion) the first status has them
// without hashing the log again, and they are the sums of the files.
func TestStatusSumsFromIndex(t *testing.T) {
	a, b, sealed := fetchedLog(t, 3)
	testutil.WaitFor(t, 20*time.Second, "beta's segment sums", func() bool {
		for _, s := range b.sec.Status().Segments {
			if s.Sealed && s.SHA256 == "" {
				return false
			}
		}
		return true
	})
	b.stopSecondary() // its last checkpoint saves the sums
	for _, name := range sealed {
		if got, want := indexEntries(t, b.dir)[name].SHA256, fileSum(t, filepath.Join(b.dir, name)); got != want {
			t.Errorf("index sum of %s: %q, want %q", name, got, want)
		}
	}
	check := func(what string, segs []SegmentSummary) {
		t.Helper()
		for _, name := range sealed {
			i := slices.IndexFunc(segs, func(s SegmentSummary) bool { return s.Name == name })
			if i < 0 {
				t.Fatalf("%s: status lacks %s", what, name)
			}
			if got, want := segs[i].SHA256, fileSum(t, filepath.Join(b.dir, name)); got != want {
				t.Errorf("%s: first status sum of %s %q, want %q (from the index)", what, name, got, want)
			}
		}
	}
	b.startSecondary(func() []Peer { return []Peer{a.peer()} }, nil)
	check("restarted secondary", b.sec.Status().Segments)
	p, _ := promote(t, a, b)
	defer p.Close()
	check("promoted", PrimarySource(p).Status().Segments)
}

// A sum is kept only for the entry it was computed for: one computed from a
// file that was replaced meanwhile is dropped.
func TestStaleSumDropped(t *testing.T) {
	var b segBook
	info := SegmentInfo{Name: SegmentName{Seq: 1, Node: "alpha"}, End: 100, Records: 2, FirstSeq: 1, LastSeq: 2, Sealed: true}
	b.add(info)
	e, _ := b.entry(info.Name)
	b.drop(func(n SegmentName) bool { return n == info.Name }) // quarantined
	b.add(info)                                                // restored: same shape, other bytes
	if b.keepSum(e, "stale") {
		t.Fatal("a sum computed for the replaced file was kept")
	}
	e, _ = b.entry(info.Name)
	if !b.keepSum(e, "good") {
		t.Fatal("the sum of the current entry was not kept")
	}
	// Rebuilding the index with the same check keeps it; a changed one
	// does not.
	b.set(indexOf([]SegmentInfo{info}, func(SegmentName) bool { return false }))
	if e, _ := b.entry(info.Name); e.SHA256 != "good" {
		t.Errorf("sum after an equal rebuild: %q", e.SHA256)
	}
	info.End++
	b.set(indexOf([]SegmentInfo{info}, func(SegmentName) bool { return false }))
	if e, _ := b.entry(info.Name); e.SHA256 != "" {
		t.Errorf("sum after a changed rebuild: %q", e.SHA256)
	}
	enc := b.idx.encode()
	var f segIndexFile
	if err := json.Unmarshal(enc, &f); err != nil || len(f.Segments) != 1 {
		t.Fatalf("encoded %s: %v", enc, err)
	}
}
