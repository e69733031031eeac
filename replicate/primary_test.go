package replicate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tharsis/tharsis/blockdev"
	"github.com/tharsis/tharsis/replicate/internal/crashmodel"
)

const devSize = 1 << 20

// noZeroAhead turns the zeros written ahead of the records off, for tests
// that count the log's fdatasyncs, watch the segment's size or fill the log
// filesystem by statfs (the zeros ahead count as free:
// TestZeroAheadCountsAsFree).
const noZeroAhead = -1

func openTest(t *testing.T, data blockdev.Device, dir string, mod func(*Options)) *Primary {
	t.Helper()
	opts := Options{Dir: dir, Node: "alpha", Resource: "r0", CheckpointInterval: time.Hour}
	if mod != nil {
		mod(&opts)
	}
	p, err := OpenPrimary(data, opts)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func readAll(t *testing.T, d blockdev.Device) []byte {
	t.Helper()
	b := make([]byte, d.Size())
	if _, err := d.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPrimaryWriteReadRestart(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "data.img")
	data, err := blockdev.CreateFile(img, devSize)
	if err != nil {
		t.Fatal(err)
	}
	logDir := filepath.Join(dir, "log")
	p := openTest(t, data, logDir, nil)
	want := make([]byte, devSize)
	w := func(off int64, s string) {
		if _, err := p.WriteAt([]byte(s), off); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], s)
	}
	w(0, "hello")
	w(1000, strings.Repeat("x", 5000))
	if err := p.Trim(2000, 1000); err != nil {
		t.Fatal(err)
	}
	clear(want[2000:3000])
	if err := p.WriteZeroes(4000, 100); err != nil {
		t.Fatal(err)
	}
	clear(want[4000:4100])
	if _, err := p.WriteAt(make([]byte, 1), devSize); !errors.Is(err, blockdev.ErrOutOfRange) {
		t.Fatalf("write past the end: %v", err)
	}
	if !bytes.Equal(readAll(t, p), want) {
		t.Fatal("read does not return the acknowledged writes")
	}
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	st := p.Status()
	if st.Written.Seq != 4 || st.Current != "log-000000001-alpha" {
		t.Fatalf("status %+v", st)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}

	data, err = blockdev.OpenFile(img, false)
	if err != nil {
		t.Fatal(err)
	}
	p = openTest(t, data, logDir, nil)
	defer p.Close()
	if p.Replayed() != 0 {
		t.Fatalf("restart after a clean close replayed %d records", p.Replayed())
	}
	if !bytes.Equal(readAll(t, p), want) {
		t.Fatal("data changed across restart")
	}
	st = p.Status()
	if st.Current != "log-000000002-alpha" || len(st.Segments) != 2 || !st.Segments[0].Sealed || st.Segments[0].Records != 5 {
		t.Fatalf("restart did not rotate: %+v", st)
	}
	if st.PendingReplay != 0 {
		t.Fatalf("pending replay %d after clean restart", st.PendingReplay)
	}
}

func TestPrimaryReplaysAfterCrash(t *testing.T) {
	logDir := t.TempDir()
	p := openTest(t, blockdev.NewMemory(devSize), logDir, nil)
	want := make([]byte, devSize)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 50 {
		off := r.Int64N(devSize - 4096)
		b := bytes.Repeat([]byte{byte(i + 1)}, 1+r.IntN(4096))
		if _, err := p.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], b)
	}
	p.crash()
	// The data device is lost entirely; the log alone rebuilds it.
	mem := blockdev.NewMemory(devSize)
	p = openTest(t, mem, logDir, nil)
	if p.Replayed() != 50 {
		t.Fatalf("replayed %d records, want 50", p.Replayed())
	}
	if !bytes.Equal(mem.Bytes(), want) {
		t.Fatal("replay did not rebuild the data")
	}
	// Replay is idempotent: a second crash and replay from the persisted
	// position changes nothing and applies nothing.
	p.crash()
	p = openTest(t, mem, logDir, nil)
	defer p.Close()
	if p.Replayed() != 0 || !bytes.Equal(mem.Bytes(), want) {
		t.Fatalf("second recovery replayed %d", p.Replayed())
	}
}

// TestOverlappingWritesInLogOrder: concurrent overlapping writes end up on
// the data device as the log orders them.
func TestOverlappingWritesInLogOrder(t *testing.T) {
	logDir := t.TempDir()
	mem := blockdev.NewMemory(64 << 10)
	p := openTest(t, mem, logDir, nil)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 9))
			for i := range 200 {
				off := r.Int64N(60 << 10)
				b := bytes.Repeat([]byte{byte(g*200 + i)}, 1+r.IntN(4096))
				if _, err := p.WriteAt(b, off); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := p.drain(); err != nil {
		t.Fatal(err)
	}
	got := bytes.Clone(mem.Bytes())
	p.crash()
	fresh := blockdev.NewMemory(64 << 10)
	n, _, err := Replay(logDir, fresh, Position{}, ReplayOptions{})
	if err != nil || n != 1600 {
		t.Fatalf("replay: %d records, %v", n, err)
	}
	if !bytes.Equal(fresh.Bytes(), got) {
		t.Fatal("data device differs from the log order")
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
}

// snapshot copies the state as a crash would leave it: the applied file
// first, then the data device, then the segments.
func snapshot(t *testing.T, logDir, img, dst string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dst, "log"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(logDir, appliedFile)); err == nil {
		copyFile(t, filepath.Join(logDir, appliedFile), filepath.Join(dst, "log", appliedFile))
	}
	copyFile(t, img, filepath.Join(dst, "data.img"))
	ents, err := os.ReadDir(logDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "log-") {
			copyFile(t, filepath.Join(logDir, e.Name()), filepath.Join(dst, "log", e.Name()))
		}
	}
}

// TestCrashSnapshots writes from many goroutines through a Primary on a
// file, takes crash snapshots at random moments, recovers each one and
// checks every write acknowledged before the snapshot.
func TestCrashSnapshots(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "data.img")
	data, err := blockdev.CreateFile(img, devSize)
	if err != nil {
		t.Fatal(err)
	}
	logDir := filepath.Join(dir, "log")
	p := openTest(t, data, logDir, func(o *Options) {
		o.SegmentSize = 256 << 10
		o.CheckpointInterval = 20 * time.Millisecond
	})
	defer p.Close()
	m := crashmodel.New(devSize)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stopWriters := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 77))
			for {
				select {
				case <-stopWriters:
					return
				case <-ctx.Done():
					return
				default:
				}
				off, n := m.Random(r, 32)
				w, b := m.Begin(off, n)
				if _, err := p.WriteAt(b, off); err != nil {
					t.Error(err)
					return
				}
				m.Acked(w)
			}
		}()
	}
	type snap struct {
		dir    string
		cs, ce uint64
	}
	var snaps []snap
	for i := range 6 {
		// Wait for some progress (bounded).
		target := m.Acks() + 200
		for m.Acks() < target && ctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
		s := snap{dir: filepath.Join(dir, fmt.Sprintf("snap%d", i))}
		s.cs = m.Now()
		snapshot(t, logDir, img, s.dir)
		s.ce = m.Now()
		snaps = append(snaps, s)
	}
	close(stopWriters)
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatal("timed out")
	}
	for i, s := range snaps {
		d, err := blockdev.OpenFile(filepath.Join(s.dir, "data.img"), false)
		if err != nil {
			t.Fatal(err)
		}
		rp := openTest(t, d, filepath.Join(s.dir, "log"), nil)
		err = m.Check(func(b []byte, off int64) error { _, err := rp.ReadAt(b, off); return err }, s.cs, s.ce)
		t.Logf("snapshot %d: replayed %d records", i, rp.Replayed())
		rp.Close()
		if err != nil {
			t.Fatalf("snapshot %d: %v", i, err)
		}
	}
	if m.Acks() < 1000 {
		t.Fatalf("only %d acknowledged writes", m.Acks())
	}
}

func TestPrimaryNoSpace(t *testing.T) {
	logDir := t.TempDir()
	fsys := newFaultFS()
	mem := blockdev.NewMemory(devSize)
	p := openTest(t, mem, logDir, func(o *Options) { o.FS = fsys; o.NoEmergency = true; o.ZeroAhead = noZeroAhead })
	p.w.mu.Lock()
	p.w.statfsMaxAge = 0 // see every change of the fake free space at once
	p.w.mu.Unlock()
	if _, err := p.WriteAt([]byte("acked"), 0); err != nil {
		t.Fatal(err)
	}
	p.drain() // applied: the checkpoint of the full log below covers it
	segPath := filepath.Join(logDir, p.Status().Current)
	sizeBefore := fileSize(t, segPath)

	// statfs says the filesystem is full.
	fsys.set(func(f *faultFS) { f.avail = 1000 })
	if _, err := p.WriteAt([]byte("nope"), 100); !errors.Is(err, blockdev.ErrNoSpace) || !strings.Contains(err.Error(), "log-delete") {
		t.Fatalf("write with a full log: %v", err)
	}
	// The write itself hits ENOSPC half way.
	fsys.set(func(f *faultFS) { f.avail = -1; f.writeErr = errENOSPC })
	if err := p.WriteZeroes(0, 5); !errors.Is(err, blockdev.ErrNoSpace) {
		t.Fatalf("write hitting ENOSPC: %v", err)
	}
	if got := fileSize(t, segPath); got != sizeBefore {
		t.Fatalf("segment grew from %d to %d bytes after failed writes (half record left)", sizeBefore, got)
	}
	b := make([]byte, 5)
	p.ReadAt(b, 0)
	if string(b) != "acked" || mem.Bytes()[100] != 0 {
		t.Fatalf("acknowledged data harmed or failed write applied: %q", b)
	}
	// Space is back: writes resume, the log stays readable.
	fsys.set(func(f *faultFS) { f.writeErr = nil })
	if _, err := p.WriteAt([]byte("again"), 200); err != nil {
		t.Fatal(err)
	}
	p.crash()
	// (The full log made the primary checkpoint while it looked for
	// segments to delete: "acked" is applied on disk, "again" replayed.)
	p = openTest(t, mem, logDir, nil)
	defer p.Close()
	if p.Replayed() != 1 || string(mem.Bytes()[:5]) != "acked" || string(mem.Bytes()[200:205]) != "again" {
		t.Fatalf("replayed %d after ENOSPC", p.Replayed())
	}
}

func fileSize(t *testing.T, path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

func TestPrimarySyncFailureIsSticky(t *testing.T) {
	for _, syncOn := range []bool{false, true} {
		t.Run(fmt.Sprintf("sync=%v", syncOn), func(t *testing.T) { testSyncFailureIsSticky(t, syncOn) })
	}
}

func testSyncFailureIsSticky(t *testing.T, syncOn bool) {
	fsys := newFaultFS()
	p := openTest(t, blockdev.NewMemory(devSize), t.TempDir(), func(o *Options) { o.FS = fsys; o.Sync = syncOn })
	defer p.Close()
	fsys.set(func(f *faultFS) { f.syncErr = errors.New("EIO") })
	_, err := p.WriteAt([]byte("x"), 0)
	if !syncOn {
		// Acknowledged from the page cache; the failure shows at Flush.
		if err != nil {
			t.Fatalf("write with sync=false: %v", err)
		}
		err = p.Flush()
	}
	if err == nil || !strings.Contains(err.Error(), "restart") {
		t.Fatalf("write with failing fdatasync: %v", err)
	}
	fsys.set(func(f *faultFS) { f.syncErr = nil })
	if _, err := p.WriteAt([]byte("x"), 0); err == nil {
		t.Fatal("write accepted after a failed fdatasync")
	}
	if p.Flush() == nil || p.Status().Err == "" {
		t.Fatal("Flush and Status do not report the failed log")
	}
}

func TestGroupCommit(t *testing.T) {
	fsys := newFaultFS()
	p := openTest(t, blockdev.NewMemory(devSize), t.TempDir(), func(o *Options) { o.FS = fsys; o.Sync = true })
	defer p.Close()
	fsys.set(func(f *faultFS) { f.syncCount = 0 })
	var wg sync.WaitGroup
	const writers, each = 32, 20
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if _, err := p.WriteAt([]byte{byte(i)}, int64(g*512)); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	fsys.mu.Lock()
	n := fsys.syncCount
	fsys.mu.Unlock()
	t.Logf("%d writes, %d fdatasyncs", writers*each, n)
	if n >= writers*each {
		t.Fatalf("%d fdatasyncs for %d concurrent writes: no group commit", n, writers*each)
	}
}

func TestRotateAndDelete(t *testing.T) {
	logDir := t.TempDir()
	var peers Position
	var peersMu sync.Mutex
	p := openTest(t, blockdev.NewMemory(devSize), logDir, func(o *Options) {
		o.SegmentSize = 8 << 10
		o.MinAppliedByPeers = func() Position { peersMu.Lock(); defer peersMu.Unlock(); return peers }
	})
	defer p.Close()
	if _, err := p.DeleteApplied(false); err == nil || !strings.Contains(err.Error(), "only the current segment") {
		t.Fatalf("delete with one segment: %v", err)
	}
	for i := range 20 {
		if _, err := p.WriteAt(bytes.Repeat([]byte{1}, 2048), int64(i)*2048); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Rotate(); err != nil {
		t.Fatal(err)
	}
	st := p.Status()
	if len(st.Segments) < 4 {
		t.Fatalf("no rotation at the size threshold: %+v", st.Segments)
	}
	// Peers have applied nothing: nothing may go.
	_, err := p.DeleteApplied(false)
	if err == nil || !strings.Contains(err.Error(), "log-000000001-alpha is not applied yet") {
		t.Fatalf("delete with lagging peers: %v", err)
	}
	peersMu.Lock()
	peers = st.Written
	peersMu.Unlock()
	removed, err := p.DeleteApplied(false)
	if err != nil || len(removed) != 1 || removed[0] != "log-000000001-alpha" {
		t.Fatalf("log-delete: %v %v", removed, err)
	}
	removed, err = p.DeleteApplied(true)
	if err != nil || len(removed) != len(st.Segments)-2 {
		t.Fatalf("log-delete-all: %v %v", removed, err)
	}
	if _, err := os.Stat(filepath.Join(logDir, "log-000000001-alpha")); !os.IsNotExist(err) {
		t.Fatal("segment file still there")
	}
	if left := p.Status().Segments; len(left) != 1 || left[0].Name != st.Current {
		t.Fatalf("left: %+v", left)
	}
}

func TestTornTailIsCut(t *testing.T) {
	logDir := t.TempDir()
	p := openTest(t, blockdev.NewMemory(devSize), logDir, nil)
	p.WriteAt([]byte("one"), 0)
	p.WriteAt([]byte("two"), 10)
	seg := filepath.Join(logDir, p.Status().Current)
	p.crash()
	// Half a record at the end, as a crash mid-write leaves it.
	r := Record{Kind: KindWrite, Segment: 1, Seq: 3, Offset: 20, Length: 5, Payload: []byte("three"), Synced: fileSize(t, seg)}
	b, _ := r.MarshalBinary()
	f, _ := os.OpenFile(seg, os.O_APPEND|os.O_WRONLY, 0)
	f.Write(b[:30])
	f.Close()
	mem := blockdev.NewMemory(devSize)
	p = openTest(t, mem, logDir, nil)
	defer p.Close()
	if p.Replayed() != 2 || string(mem.Bytes()[10:13]) != "two" {
		t.Fatalf("replayed %d", p.Replayed())
	}
	// The cut segment was sealed; the next one continues the sequence.
	if _, err := p.WriteAt([]byte("four"), 30); err != nil {
		t.Fatal(err)
	}
	if st := p.Status(); st.Logged.Seq != 4 || st.Segments[0].Records != 3 {
		t.Fatalf("status after cut: %+v", st)
	}
}

// TestWriteAtFUA: without Options.Sync, WriteAt returns with its record
// possibly only in the page cache, WriteAtFUA only once it is durable.
func TestWriteAtFUA(t *testing.T) {
	p := openTest(t, blockdev.NewMemory(devSize), t.TempDir(), nil)
	defer p.Close()
	if _, err := p.WriteAt([]byte("plain"), 0); err != nil {
		t.Fatal(err)
	}
	if st := p.Status(); st.Written.Seq >= st.Logged.Seq {
		t.Fatalf("a plain write is durable at once (written %v, logged %v): the test cannot tell FUA from it", st.Written, st.Logged)
	}
	for i := range 20 {
		if _, err := p.WriteAtFUA([]byte("fua"), int64(512*(i+1))); err != nil {
			t.Fatal(err)
		}
		if st := p.Status(); st.Written.Seq < st.Logged.Seq {
			t.Fatalf("WriteAtFUA returned before its record was durable: written %v, logged %v", st.Written, st.Logged)
		}
	}
	if got := readAll(t, p)[512:515]; string(got) != "fua" {
		t.Fatalf("read %q after WriteAtFUA", got)
	}
}
