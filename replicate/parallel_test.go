package replicate

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tharsis/tharsis/blockdev"
	"github.com/tharsis/tharsis/internal/testutil"
)

// holdFirstWrite makes the next segment write wait until release is called
// (entered is closed once it waits), then fail with failWith (nil: succeed).
// Every other segment write goes through.
func holdFirstWrite(t *testing.T, fsys *faultFS, failWith error) (entered chan struct{}, release func()) {
	t.Helper()
	gate := make(chan struct{})
	entered = make(chan struct{})
	var once sync.Once
	fsys.set(func(f *faultFS) {
		f.onWrite = func(int64) error {
			first := false
			once.Do(func() { first = true })
			if !first {
				return nil
			}
			close(entered)
			<-gate
			return failWith
		}
	})
	var relOnce sync.Once
	release = func() { relOnce.Do(func() { close(gate) }) }
	t.Cleanup(release)
	return entered, release
}

// writeRecordSize is the encoded size of a write record of n bytes.
func writeRecordSize(n int) int64 { return HeaderSize + int64(n) }

// TestParallelWritesCompleteInOrder: a write whose record is written while
// an earlier record is still being written is not acknowledged before it;
// when the earlier one fails, both fail, neither reaches the data device,
// the segment is cut back, and later writes are logged and replayed fine.
func TestParallelWritesCompleteInOrder(t *testing.T) {
	logDir := t.TempDir()
	fsys := newFaultFS()
	mem := blockdev.NewMemory(devSize)
	p := openTest(t, mem, logDir, func(o *Options) { o.FS = fsys; o.NoEmergency = true; o.ZeroAhead = noZeroAhead })
	if _, err := p.WriteAt([]byte("acked"), 0); err != nil {
		t.Fatal(err)
	}
	segPath := filepath.Join(logDir, p.Status().Current)
	before := fileSize(t, segPath)

	entered, release := holdFirstWrite(t, fsys, errENOSPC)
	a := async(write(p, "AAAA", 100))
	select {
	case <-entered:
	case <-a:
		t.Fatal("write A returned while its log write was held")
	}
	b := async(write(p, "BBBB", 200))
	// B's record lands after A's place: the segment grows past both.
	testutil.WaitFor(t, waitLimit, "write B's record in the segment", func() bool {
		return fileSize(t, segPath) == before+2*writeRecordSize(4)
	})
	notDone(t, b, "write B (after a record still being written)")
	if mem.Bytes()[200] != 0 {
		t.Fatal("write B applied before the earlier record was written")
	}
	release()
	for _, w := range []struct {
		ch   chan error
		what string
	}{{a, "A"}, {b, "B"}} {
		select {
		case err := <-w.ch:
			if !errors.Is(err, blockdev.ErrNoSpace) {
				t.Fatalf("write %s after the earlier record failed with ENOSPC: %v", w.what, err)
			}
		case <-time.After(waitLimit):
			t.Fatalf("write %s did not return", w.what)
		}
	}
	if got := fileSize(t, segPath); got != before {
		t.Fatalf("segment is %d bytes after the failed writes, want %d (cut back)", got, before)
	}
	if mem.Bytes()[100] != 0 || mem.Bytes()[200] != 0 {
		t.Fatal("a failed write reached the data device")
	}
	fsys.set(func(f *faultFS) { f.onWrite = nil })
	if _, err := p.WriteAt([]byte("later"), 300); err != nil {
		t.Fatalf("write after the failure: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}

	// Replay everything from the log alone.
	if err := WriteApplied(OSFS{}, logDir, Position{}); err != nil {
		t.Fatal(err)
	}
	fresh := blockdev.NewMemory(devSize)
	p2 := openTest(t, fresh, logDir, nil)
	defer p2.Close()
	got := fresh.Bytes()
	if string(got[0:5]) != "acked" || string(got[300:305]) != "later" || got[100] != 0 || got[200] != 0 {
		t.Fatalf("replayed log: %q %q %q %q", got[0:5], got[100:104], got[200:204], got[300:305])
	}
}

// TestHoleIsTornTail: a crash while an earlier record is still being
// written and a later one is complete leaves a hole (zeros) before a valid
// record; recovery cuts both as a torn tail, and every acknowledged write
// is intact.
func TestHoleIsTornTail(t *testing.T) {
	dir := t.TempDir()
	logDir := filepath.Join(dir, "log")
	img := filepath.Join(dir, "data.img")
	data, err := blockdev.CreateFile(img, devSize)
	if err != nil {
		t.Fatal(err)
	}
	fsys := newFaultFS()
	p := openTest(t, data, logDir, func(o *Options) { o.FS = fsys; o.ZeroAhead = noZeroAhead })
	t.Cleanup(func() { p.Close() }) // after the held write is released
	acked := bytes.Repeat([]byte("k"), 3000)
	if _, err := p.WriteAt(acked, 4096); err != nil {
		t.Fatal(err)
	}
	// Make the acknowledged write durable in the middle of the segment, so
	// the later records claim a synced offset before the hole.
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.WriteAt([]byte("unsynced"), 9000); err != nil {
		t.Fatal(err)
	}
	segPath := filepath.Join(logDir, p.Status().Current)
	before := fileSize(t, segPath)

	entered, release := holdFirstWrite(t, fsys, nil)
	a := async(write(p, "AAAA", 100))
	<-entered
	b := async(write(p, "BBBB", 200))
	testutil.WaitFor(t, waitLimit, "write B's record in the segment", func() bool {
		return fileSize(t, segPath) == before+2*writeRecordSize(4)
	})
	notDone(t, b, "write B (after a record still being written)")

	snap := filepath.Join(dir, "snap")
	snapshot(t, logDir, img, snap)
	release()
	waitDone(t, a, "write A")
	waitDone(t, b, "write B")

	d, err := blockdev.OpenFile(filepath.Join(snap, "data.img"), false)
	if err != nil {
		t.Fatal(err)
	}
	rp, err := OpenPrimary(d, Options{Dir: filepath.Join(snap, "log"), Node: "alpha", Resource: "r0"})
	if err != nil {
		t.Fatalf("recovery of a segment with a hole before a valid record: %v", err)
	}
	defer rp.Close()
	got := readAll(t, rp)
	if !bytes.Equal(got[4096:4096+len(acked)], acked) || string(got[9000:9008]) != "unsynced" {
		t.Fatal("an acknowledged write was lost")
	}
	if got[200] != 0 {
		t.Fatal("the record after the hole was replayed")
	}
	if rp.Status().Err != "" || !strings.HasPrefix(rp.Status().Current, "log-") {
		t.Fatalf("status after recovery: %+v", rp.Status())
	}
}
