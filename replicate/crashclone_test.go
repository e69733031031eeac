package replicate

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/tharsis/tharsis/blockdev"
	"github.com/tharsis/tharsis/internal/testutil"
	"github.com/tharsis/tharsis/replicate/internal/crashmodel"
)

// memFS is an in-memory FS that knows what a machine crash keeps, as
// pebble's vfs.MemFS CrashClone does: a file's data survives once it was
// fdatasync'd, a directory entry once its directory was synced; anything
// else only by chance. Its mutex also guards the crashDev data devices made
// with it, so a crash clone of both is one instant.
type memFS struct {
	mu       sync.Mutex
	names    map[string]*memNode // current directory entries
	durNames map[string]*memNode // entries as of the last SyncDir of their directory
	dirs     map[string]bool
}

type memNode struct {
	data   []byte
	synced []byte // content as of the last Sync
}

func newMemFS() *memFS {
	return &memFS{names: map[string]*memNode{}, durNames: map[string]*memNode{}, dirs: map[string]bool{}}
}

func (m *memFS) Create(name string) (File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.names[name]; ok {
		return nil, &fs.PathError{Op: "create", Path: name, Err: fs.ErrExist}
	}
	n := &memNode{}
	m.names[name] = n
	return &memFile{fs: m, n: n}, nil
}

func (m *memFS) Open(name string) (File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, ok := m.names[name]
	if !ok {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return &memFile{fs: m, n: n}, nil
}

func (m *memFS) Remove(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.names[name]; !ok {
		return &fs.PathError{Op: "remove", Path: name, Err: fs.ErrNotExist}
	}
	delete(m.names, name)
	return nil
}

func (m *memFS) Rename(o, n string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	node, ok := m.names[o]
	if !ok {
		return &fs.PathError{Op: "rename", Path: o, Err: fs.ErrNotExist}
	}
	delete(m.names, o)
	m.names[n] = node
	return nil
}

func (m *memFS) ReadDir(dir string) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.dirs[dir] {
		return nil, &fs.PathError{Op: "readdir", Path: dir, Err: fs.ErrNotExist}
	}
	var names []string
	for n := range m.names {
		if filepath.Dir(n) == dir {
			names = append(names, filepath.Base(n))
		}
	}
	sort.Strings(names)
	return names, nil
}

func (m *memFS) MkdirAll(dir string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.dirs[dir] = true
	return nil
}

func (m *memFS) SyncDir(dir string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for n := range m.durNames {
		if filepath.Dir(n) == dir {
			delete(m.durNames, n)
		}
	}
	for n, node := range m.names {
		if filepath.Dir(n) == dir {
			m.durNames[n] = node
		}
	}
	return nil
}

func (m *memFS) Available(string) (int64, error) { return 1 << 40, nil }

type memFile struct {
	fs *memFS
	n  *memNode
}

func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if off >= int64(len(f.n.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.n.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *memFile) WriteAt(p []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if end := off + int64(len(p)); end > int64(len(f.n.data)) {
		f.n.data = append(f.n.data, make([]byte, end-int64(len(f.n.data)))...)
	}
	return copy(f.n.data[off:], p), nil
}

func (f *memFile) Truncate(size int64) error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if size <= int64(len(f.n.data)) {
		f.n.data = f.n.data[:size]
	} else {
		f.n.data = append(f.n.data, make([]byte, size-int64(len(f.n.data)))...)
	}
	return nil
}

func (f *memFile) Sync() error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	f.n.synced = append(f.n.synced[:0], f.n.data...)
	return nil
}

func (f *memFile) Size() (int64, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	return int64(len(f.n.data)), nil
}

func (f *memFile) Close() error { return nil }

// crashDev is a data device whose crash keeps what was flushed, and of the
// rest each sector by chance.
type crashDev struct {
	fs           *memFS
	cur, flushed []byte
}

func newCrashDev(m *memFS, size int64) *crashDev {
	return &crashDev{fs: m, cur: make([]byte, size), flushed: make([]byte, size)}
}

func (d *crashDev) ReadAt(p []byte, off int64) (int, error) {
	if err := blockdev.CheckRange(off, int64(len(p)), d.Size()); err != nil {
		return 0, err
	}
	d.fs.mu.Lock()
	defer d.fs.mu.Unlock()
	return copy(p, d.cur[off:]), nil
}

func (d *crashDev) WriteAt(p []byte, off int64) (int, error) {
	if err := blockdev.CheckRange(off, int64(len(p)), d.Size()); err != nil {
		return 0, err
	}
	d.fs.mu.Lock()
	defer d.fs.mu.Unlock()
	return copy(d.cur[off:], p), nil
}

func (d *crashDev) Flush() error {
	d.fs.mu.Lock()
	defer d.fs.mu.Unlock()
	copy(d.flushed, d.cur)
	return nil
}

func (d *crashDev) Trim(off, length int64) error { return d.WriteZeroes(off, length) }

func (d *crashDev) WriteZeroes(off, length int64) error {
	if err := blockdev.CheckRange(off, length, d.Size()); err != nil {
		return err
	}
	d.fs.mu.Lock()
	defer d.fs.mu.Unlock()
	clear(d.cur[off : off+length])
	return nil
}

func (d *crashDev) Size() int64  { return int64(len(d.cur)) }
func (d *crashDev) Close() error { return nil }

// keep says which unsynced sectors a crash keeps.
type keep int

const (
	keepSynced keep = iota // only what was synced or flushed
	keepSome               // each unsynced sector by chance
	keepAll                // everything written (a process kill)
)

func (k keep) take(r *rand.Rand) bool {
	switch k {
	case keepAll:
		return true
	case keepSome:
		return r.IntN(2) == 0
	}
	return false
}

// crashClone returns the file system and the device d as a machine crash
// now could leave them.
func (m *memFS) crashClone(d *crashDev, r *rand.Rand, k keep) (*memFS, *crashDev) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := newMemFS()
	for dir := range m.dirs {
		c.dirs[dir] = true
	}
	for name, n := range m.durNames {
		data := crashContent(n.synced, n.data, r, k)
		node := &memNode{data: data, synced: bytes.Clone(data)}
		c.names[name], c.durNames[name] = node, node
	}
	cd := &crashDev{fs: c, cur: crashContent(d.flushed, d.cur, r, k)}
	cd.flushed = bytes.Clone(cd.cur)
	return c, cd
}

// crashContent is synced plus, by k, the sectors of data that differ.
func crashContent(synced, data []byte, r *rand.Rand, k keep) []byte {
	const sector = crashmodel.SectorSize
	out := bytes.Clone(synced)
	for off := 0; off < len(data); off += sector {
		end := min(off+sector, len(data))
		if end <= len(synced) && bytes.Equal(synced[off:end], data[off:end]) {
			continue
		}
		if !k.take(r) {
			continue
		}
		if end > len(out) {
			out = append(out, make([]byte, end-len(out))...)
		}
		copy(out[off:end], data[off:end])
	}
	return out
}

// TestCrashClone writes from several goroutines through a Primary on a
// memFS, takes machine-crash clones at random moments, recovers each one
// and checks every write that was durable before the clone: with sync=true
// every acknowledged write, with sync=false every write acknowledged before
// a Flush that returned. It also checks that the persisted applied position
// never lies beyond the durable end of the log.
func TestCrashClone(t *testing.T) {
	for _, syncOn := range []bool{false, true} {
		t.Run(fmt.Sprintf("sync=%v", syncOn), func(t *testing.T) { testCrashClone(t, syncOn) })
	}
}

func testCrashClone(t *testing.T, syncOn bool) {
	const dir = "/log"
	mfs := newMemFS()
	dev := newCrashDev(mfs, devSize)
	opts := func(o *Options) {
		o.FS = mfs
		o.Sync = syncOn
		o.SegmentSize = 256 << 10
		o.CheckpointInterval = 5 * time.Millisecond
	}
	p := openTest(t, dev, dir, opts)
	defer p.Close()
	m := crashmodel.New(devSize)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 5))
			var unflushed []*crashmodel.Write
			for {
				select {
				case <-stop:
					return
				case <-ctx.Done():
					return
				default:
				}
				off, n := m.Random(r, 16)
				w, b := m.Begin(off, n)
				if _, err := p.WriteAt(b, off); err != nil {
					t.Error(err)
					return
				}
				if syncOn {
					m.Acked(w) // durable once acknowledged
					continue
				}
				unflushed = append(unflushed, w)
				if r.IntN(24) == 0 {
					if err := p.Flush(); err != nil {
						t.Error(err)
						return
					}
					for _, w := range unflushed {
						m.Acked(w) // durable once a later Flush returned
					}
					unflushed = unflushed[:0]
				}
			}
		}()
	}
	type clone struct {
		fs     *memFS
		dev    *crashDev
		k      keep
		cs, ce uint64
	}
	var clones []clone
	r := rand.New(rand.NewPCG(3, 4))
	for i := range 9 {
		target := m.Acks() + 150
		testutil.WaitFor(t, 15*time.Second, "writes acknowledged", func() bool { return m.Acks() >= target || ctx.Err() != nil })
		c := clone{k: keep(i % 3), cs: m.Now()}
		c.fs, c.dev = mfs.crashClone(dev, r, c.k)
		c.ce = m.Now()
		clones = append(clones, c)
	}
	// And one clone, of what was synced, while zeros written ahead lie
	// past the records (with the writer's lock held, so the segment does
	// not rotate away meanwhile): recovery must take them for the end of
	// the log.
	testutil.WaitFor(t, 15*time.Second, "zeros written ahead of the records", func() bool {
		p.w.mu.Lock()
		defer p.w.mu.Unlock()
		if p.w.allocated <= p.w.written || ctx.Err() != nil {
			return ctx.Err() != nil
		}
		c := clone{k: keepSynced, cs: m.Now()}
		c.fs, c.dev = mfs.crashClone(dev, r, c.k)
		c.ce = m.Now()
		clones = append(clones, c)
		return true
	})
	close(stop)
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatal("timed out")
	}
	zeroTails := 0
	for i, c := range clones {
		if names, err := listSegments(c.fs, dir); err == nil && len(names) > 0 {
			last := filepath.Join(dir, names[len(names)-1].String())
			if f, err := c.fs.Open(last); err == nil {
				// Zeros past the records survived the crash: the scan
				// reads them as a zero tail, or as part of a torn one
				// when a record written ahead of an unwritten one
				// survived too (a hole, then the record, then zeros).
				size, _ := f.Size()
				var lastByte [1]byte
				if size > 0 {
					f.ReadAt(lastByte[:], size-1)
				}
				if info, err := ScanSegment(f, size, names[len(names)-1], ScanOptions{Newest: true}, nil); err == nil && size > info.End && lastByte[0] == 0 {
					zeroTails++
				}
				f.Close()
			}
		}
		applied, err := ReadApplied(c.fs, dir)
		if err != nil {
			t.Fatalf("clone %d: %v", i, err)
		}
		// Where the surviving log ends (cutting nothing). As recovery
		// does, first drop an empty newest segment (a crash during
		// rotation).
		for {
			names, err := listSegments(c.fs, dir)
			if err != nil || len(names) == 0 {
				break
			}
			last := filepath.Join(dir, names[len(names)-1].String())
			if f, _ := c.fs.Open(last); f != nil {
				if size, _ := f.Size(); size != 0 {
					break
				}
			}
			c.fs.Remove(last)
		}
		_, end, err := Replay(dir, blockdev.NewMemory(devSize), Position{}, ReplayOptions{FS: c.fs})
		if err != nil {
			t.Fatalf("clone %d (keep %d): scanning the log: %v", i, c.k, err)
		}
		if applied.Seq > end.Seq {
			t.Fatalf("clone %d (keep %d): persisted applied position %v is past the durable end of the log %v", i, c.k, applied, end)
		}
		rp, err := OpenPrimary(c.dev, Options{Dir: dir, Node: "alpha", Resource: "r0", FS: c.fs, CheckpointInterval: time.Hour})
		if err != nil {
			t.Fatalf("clone %d (keep %d): recovery: %v", i, c.k, err)
		}
		err = m.Check(func(b []byte, off int64) error { _, err := rp.ReadAt(b, off); return err }, c.cs, c.ce)
		t.Logf("clone %d (keep %d): applied %d, log end %d, replayed %d records", i, c.k, applied.Seq, end.Seq, rp.Replayed())
		rp.Close()
		if err != nil {
			t.Fatalf("clone %d (keep %d): %v", i, c.k, err)
		}
	}
	// The writer keeps zeros ahead of its records (the log is synced
	// often here): some crash must have left them behind, or recovery
	// from a zero tail went untested.
	if zeroTails == 0 {
		t.Fatalf("none of the %d crash clones ends in zeros written ahead of the records", len(clones))
	}
	t.Logf("%d of %d crash clones end in zeros written ahead of the records", zeroTails, len(clones))
}
