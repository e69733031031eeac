package replicate

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/tharsis/tharsis/blockdev"
)

// readCountFS counts the bytes read from each file it opens.
type readCountFS struct {
	OSFS
	mu   sync.Mutex
	read map[string]int64 // by base name
}

func newReadCountFS() *readCountFS { return &readCountFS{read: map[string]int64{}} }

func (c *readCountFS) Open(name string) (File, error) {
	f, err := c.OSFS.Open(name)
	if err != nil {
		return nil, err
	}
	return &countFile{File: f, fs: c, name: filepath.Base(name)}, nil
}

func (c *readCountFS) bytesRead(name string) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.read[name]
}

type countFile struct {
	File
	fs   *readCountFS
	name string
}

func (f *countFile) ReadAt(b []byte, off int64) (int, error) {
	n, err := f.File.ReadAt(b, off)
	f.fs.mu.Lock()
	f.fs.read[f.name] += int64(n)
	f.fs.mu.Unlock()
	return n, err
}

// retainedLog writes segs sealed segments of ten 4 KiB records each to a
// new log, then three records to the current segment, and closes it. It
// returns the log dir, the data device and the names of the sealed
// segments.
func retainedLog(t *testing.T, segs int) (string, *blockdev.Memory, []string) {
	t.Helper()
	logDir := t.TempDir()
	mem := blockdev.NewMemory(devSize)
	p := openTest(t, mem, logDir, nil)
	var sealed []string
	for s := range segs {
		for i := range 10 {
			if _, err := p.WriteAt(bytes.Repeat([]byte{byte(s + i)}, 4096), int64(i)*4096); err != nil {
				t.Fatal(err)
			}
		}
		sealed = append(sealed, p.w.current().String())
		if err := p.Rotate(); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		if _, err := p.WriteAt([]byte("tail"), int64(i)*4096+100); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	return logDir, mem, sealed
}

// reopen opens the log in logDir through a read-counting FS and checks
// that the data device is what it was.
func reopen(t *testing.T, logDir string, mem *blockdev.Memory) (*Primary, *readCountFS) {
	t.Helper()
	want := append([]byte(nil), mem.Bytes()...)
	c := newReadCountFS()
	p := openTest(t, mem, logDir, func(o *Options) { o.FS = c })
	if !bytes.Equal(mem.Bytes(), want) {
		t.Fatal("the data changed on open")
	}
	return p, c
}

func indexNames(t *testing.T, logDir string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(logDir, indexFile))
	if err != nil {
		t.Fatal(err)
	}
	var f segIndexFile
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("segment index: %v", err)
	}
	var names []string
	for _, e := range f.Segments {
		names = append(names, e.Name)
	}
	return names
}

// Opening a log reads of each sealed, applied, indexed segment only its
// end marker, however many there are: what open reads does not grow with
// retention.
func TestOpenReadsOnlyIndexAndUnapplied(t *testing.T) {
	for _, segs := range []int{2, 12} {
		logDir, mem, sealed := retainedLog(t, segs)
		if got := indexNames(t, logDir); len(got) != segs {
			t.Fatalf("%d segments sealed by rotation, index lists %v", segs, got)
		}
		p, c := reopen(t, logDir, mem)
		readMarkersOnly(t, c, sealed)
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		// The newest segment was sealed on open: now it is indexed too.
		if got := indexNames(t, logDir); len(got) != segs+1 {
			t.Errorf("after open: index lists %v", got)
		}
	}
}

// TestCloseSealedIndexes: the segment CloseSealed seals (a handover) is
// indexed like one sealed by rotation, so the secondary this node becomes
// need not read it at its start, nor a later promotion.
func TestCloseSealedIndexes(t *testing.T) {
	logDir, mem, _ := retainedLog(t, 2)
	p, _ := reopen(t, logDir, mem)
	for i := range 3 {
		if _, err := p.WriteAt([]byte("more"), int64(i)*4096); err != nil {
			t.Fatal(err)
		}
	}
	cur := p.Status().Current
	if _, err := p.CloseSealed(); err != nil {
		t.Fatal(err)
	}
	e, ok := indexEntries(t, logDir)[cur]
	if !ok {
		t.Fatalf("the segment %s sealed by CloseSealed is not indexed: %v", cur, indexNames(t, logDir))
	}
	if size := fileSize(t, filepath.Join(logDir, cur)); e.Size != size || e.Records != 4 {
		t.Fatalf("index entry of %s: %+v; want size %d and 4 records (3 and the marker)", cur, e, size)
	}
}

// readMarkersOnly checks that an open through c read of each segment in
// sealed (segments 1..len(sealed) of alpha, indexed and applied) only its
// end marker, and scanned the newest (three 4-byte records).
func readMarkersOnly(t *testing.T, c *readCountFS, sealed []string) {
	t.Helper()
	for _, name := range sealed {
		if n := c.bytesRead(name); n > HeaderSize {
			t.Errorf("%d segments: open read %d bytes of the indexed applied segment %s (want its marker, %d bytes)", len(sealed), n, name, HeaderSize)
		}
	}
	newest := SegmentName{Seq: uint64(len(sealed) + 1), Node: "alpha"}.String()
	if n := c.bytesRead(newest); n < 3*(HeaderSize+4) {
		t.Errorf("open read %d bytes of the newest segment %s: it must be scanned", n, newest)
	}
}

// A missing or unreadable index costs one full scan and is written again.
func TestCorruptIndexFallsBackToScan(t *testing.T) {
	for _, content := range []string{"", "{not json", `{"version":99,"segments":[]}`} {
		logDir, mem, sealed := retainedLog(t, 3)
		path := filepath.Join(logDir, indexFile)
		if content == "" {
			os.Remove(path)
		} else {
			os.WriteFile(path, []byte(content), 0o600)
		}
		p, c := reopen(t, logDir, mem)
		for _, name := range sealed {
			if n, size := c.bytesRead(name), fileSize(t, filepath.Join(logDir, name)); n < size {
				t.Errorf("index %q: open read %d of %d bytes of %s: want a full scan", content, n, size, name)
			}
		}
		p.Close()
		if got := indexNames(t, logDir); len(got) != 4 {
			t.Errorf("index %q: rewritten index lists %v", content, got)
		}
		p, c = reopen(t, logDir, mem)
		for _, name := range sealed {
			if n := c.bytesRead(name); n > HeaderSize {
				t.Errorf("index %q: second open read %d bytes of %s", content, n, name)
			}
		}
		p.Close()
	}
}

// An index entry that no longer matches its segment is not trusted: the
// segment is scanned, and damage found there surfaces as without an index.
func TestStaleIndexEntry(t *testing.T) {
	t.Run("deleted segment", func(t *testing.T) {
		logDir, mem, sealed := retainedLog(t, 3)
		os.Remove(filepath.Join(logDir, sealed[0])) // as log-delete does
		p, c := reopen(t, logDir, mem)
		defer p.Close()
		if n := c.bytesRead(sealed[1]); n > HeaderSize {
			t.Errorf("open read %d bytes of %s", n, sealed[1])
		}
		if got := indexNames(t, logDir); len(got) != 3 || got[0] != sealed[1] {
			t.Errorf("index after open: %v", got)
		}
		if d := p.Damage(); len(d) != 0 {
			t.Errorf("damage: %+v", d)
		}
	})
	damaged := func(t *testing.T, name string, hurt func(path string, size int64)) {
		logDir, mem, sealed := retainedLog(t, 3)
		if name == "" {
			name = sealed[1]
		}
		path := filepath.Join(logDir, name)
		hurt(path, fileSize(t, path))
		p, c := reopen(t, logDir, mem)
		defer p.Close()
		if n := c.bytesRead(name); n <= HeaderSize {
			t.Errorf("open read only %d bytes of %s: it must be scanned", n, name)
		}
		if d := p.Damage(); len(d) != 1 || d[0].Segment != name || d[0].Quarantined == "" {
			t.Errorf("damage: %+v", d)
		}
		for _, got := range indexNames(t, logDir) {
			if got == name {
				t.Errorf("the index still lists the damaged segment %s", name)
			}
		}
	}
	t.Run("grown", func(t *testing.T) {
		damaged(t, "", func(path string, size int64) {
			f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			f.Write(make([]byte, 100))
			f.Close()
		})
	})
	t.Run("truncated", func(t *testing.T) {
		damaged(t, "", func(path string, size int64) { os.Truncate(path, size-HeaderSize) })
	})
	t.Run("marker rotten", func(t *testing.T) {
		damaged(t, "", func(path string, size int64) { flipByte(t, path, size-10) })
	})
}

// A record that rots inside an indexed segment is not read by open; the
// ship server finds it before it reaches a peer.
func TestRotAfterIndexFoundByShip(t *testing.T) {
	logDir, mem, sealed := retainedLog(t, 3)
	flipByte(t, filepath.Join(logDir, sealed[0]), HeaderSize+5)
	p, c := reopen(t, logDir, mem)
	defer p.Close()
	if n := c.bytesRead(sealed[0]); n > HeaderSize {
		t.Errorf("open read %d bytes of %s", n, sealed[0])
	}
	ss := &segStream{dir: logDir}
	defer ss.close()
	_, _, err := ss.readRecords(SegmentName{Seq: 1, Node: "alpha"}, 0, fileSize(t, filepath.Join(logDir, sealed[0])), nil)
	cerr, ok := corruptAt(err)
	if !ok || cerr.Offset != 0 {
		t.Fatalf("shipping the rotten segment: %v", err)
	}
	PrimarySource(p).(DamageSink).NoteDamage(cerr)
	if d := p.Damage(); len(d) != 1 || d[0].Quarantined == "" {
		t.Errorf("damage: %+v", d)
	}
	if got := indexNames(t, logDir); len(got) != 3 || got[0] == sealed[0] {
		t.Errorf("index after the damage: %v", got)
	}
}
