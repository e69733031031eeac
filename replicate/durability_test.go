package replicate

import (
	"bytes"
	"path/filepath"
	"testing"
	"time"

	"github.com/tharsis/tharsis/blockdev"
	"github.com/tharsis/tharsis/internal/testutil"
)

const waitLimit = 10 * time.Second

// gateSyncs makes every segment fdatasync of fsys wait until the returned
// release is called; entered receives once per fdatasync that started.
func gateSyncs(t *testing.T, fsys *faultFS) (entered chan struct{}, release func()) {
	t.Helper()
	gate := make(chan struct{})
	entered = make(chan struct{}, 64)
	fsys.set(func(f *faultFS) { f.syncGate, f.syncEntered = gate, entered })
	done := false
	release = func() {
		if done {
			return
		}
		done = true
		fsys.set(func(f *faultFS) { f.syncGate, f.syncEntered = nil, nil })
		close(gate)
	}
	t.Cleanup(release)
	return entered, release
}

// async runs fn in a goroutine; the channel yields its error.
func async(fn func() error) chan error {
	ch := make(chan error, 1)
	go func() { ch <- fn() }()
	return ch
}

func waitDone(t *testing.T, ch chan error, what string) {
	t.Helper()
	select {
	case err := <-ch:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(waitLimit):
		t.Fatalf("%s did not return within %v", what, waitLimit)
	}
}

func waitEntered(t *testing.T, entered chan struct{}) {
	t.Helper()
	select {
	case <-entered:
	case <-time.After(waitLimit):
		t.Fatalf("no fdatasync started within %v", waitLimit)
	}
}

func notDone(t *testing.T, ch chan error, what string) {
	t.Helper()
	select {
	case err := <-ch:
		t.Fatalf("%s returned (%v) while the fdatasync it needs was held", what, err)
	default:
	}
}

func write(p *Primary, s string, off int64) func() error {
	return func() error { _, err := p.WriteAt([]byte(s), off); return err }
}

// TestSyncOffAcksBeforeSync: with Sync=false a write returns without any
// fdatasync; Flush waits for one, shared by concurrent flushers; a Flush
// with nothing pending does not sync.
func TestSyncOffAcksBeforeSync(t *testing.T) {
	fsys := newFaultFS()
	mem := blockdev.NewMemory(devSize)
	p := openTest(t, mem, t.TempDir(), func(o *Options) { o.FS = fsys; o.ZeroAhead = noZeroAhead })
	t.Cleanup(func() { p.Close() })
	entered, release := gateSyncs(t, fsys)
	base := fsys.syncs()

	waitDone(t, async(write(p, "acked", 0)), "WriteAt with the fdatasync held")
	p.drain() // applied behind, without an fdatasync either
	if fsys.syncs() != base || string(mem.Bytes()[:5]) != "acked" {
		t.Fatalf("WriteAt synced (%d fdatasyncs) or did not apply", fsys.syncs()-base)
	}
	f1 := async(p.Flush)
	waitEntered(t, entered)
	notDone(t, f1, "Flush")
	// Writes go on while the fdatasync runs (flushing and syncing apart).
	waitDone(t, async(write(p, "more", 100)), "WriteAt during an fdatasync")
	f2 := async(p.Flush)
	f3 := async(p.Flush)
	notDone(t, f1, "Flush")
	release()
	waitDone(t, f1, "first Flush")
	waitDone(t, f2, "second Flush")
	waitDone(t, f3, "third Flush")
	// The first fdatasync covered "acked"; f2 and f3 share one more for "more".
	if n := fsys.syncs() - base; n != 2 {
		t.Fatalf("%d fdatasyncs for three Flushes over two writes, want 2", n)
	}
	st := p.Status()
	if st.Written != st.Logged {
		t.Fatalf("after Flush durable %v, logged %v", st.Written, st.Logged)
	}
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := fsys.syncs() - base; n != 2 {
		t.Fatalf("Flush with nothing pending synced (%d fdatasyncs)", n)
	}
}

// TestSyncOnWaitsForSync: with Sync=true WriteAt returns only after the
// fdatasync of its record, and Flush afterwards has nothing to do.
func TestSyncOnWaitsForSync(t *testing.T) {
	fsys := newFaultFS()
	mem := blockdev.NewMemory(devSize)
	p := openTest(t, mem, t.TempDir(), func(o *Options) { o.FS = fsys; o.Sync = true; o.ZeroAhead = noZeroAhead })
	t.Cleanup(func() { p.Close() })
	entered, release := gateSyncs(t, fsys)
	base := fsys.syncs()

	w1 := async(write(p, "one", 0))
	waitEntered(t, entered)
	notDone(t, w1, "WriteAt")
	// The next write is written to the log while the first one's
	// fdatasync runs, and waits for its own.
	w2 := async(write(p, "two", 100))
	testutil.WaitFor(t, waitLimit, "second record written during the fdatasync", func() bool { return p.Status().Logged.Seq == 2 })
	notDone(t, w1, "WriteAt")
	notDone(t, w2, "WriteAt")
	release()
	waitDone(t, w1, "first WriteAt")
	waitDone(t, w2, "second WriteAt")
	n := fsys.syncs() - base
	if n < 1 || n > 2 {
		t.Fatalf("%d fdatasyncs for two writes", n)
	}
	if st := p.Status(); st.Written.Seq != 2 {
		t.Fatalf("acknowledged writes not durable: %+v", st)
	}
	if err := p.Flush(); err != nil || fsys.syncs()-base != n {
		t.Fatalf("Flush after synced writes: %v, %d fdatasyncs", err, fsys.syncs()-base-n)
	}
}

// TestCheckpointNotPastDurable: the applied position is persisted only once
// the log is durable up to it.
func TestCheckpointNotPastDurable(t *testing.T) {
	fsys := newFaultFS()
	dir := t.TempDir()
	p := openTest(t, blockdev.NewMemory(devSize), dir, func(o *Options) { o.FS = fsys; o.ZeroAhead = noZeroAhead })
	t.Cleanup(func() { p.Close() })
	for i := range 5 {
		if _, err := p.WriteAt(bytes.Repeat([]byte{1}, 700), int64(i)*1000); err != nil {
			t.Fatal(err)
		}
	}
	p.drain()
	before, err := ReadApplied(nil, dir)
	if err != nil {
		t.Fatal(err)
	}
	entered, release := gateSyncs(t, fsys)
	ck := async(p.Checkpoint)
	waitEntered(t, entered)
	notDone(t, ck, "Checkpoint")
	if now, _ := ReadApplied(nil, dir); now != before {
		t.Fatalf("applied position %v persisted before the log was durable up to it", now)
	}
	release()
	waitDone(t, ck, "Checkpoint")
	now, _ := ReadApplied(nil, dir)
	st := p.Status()
	if now.Seq != 5 || now.Seq > st.Written.Seq || st.Persisted != now {
		t.Fatalf("persisted %v, durable %v", now, st.Written)
	}
}

// TestSyncedFieldClaimsOnlySynced: a record's synced field never claims
// offsets no fdatasync covered.
func TestSyncedFieldClaimsOnlySynced(t *testing.T) {
	for _, syncOn := range []bool{false, true} {
		dir := t.TempDir()
		p := openTest(t, blockdev.NewMemory(devSize), dir, func(o *Options) { o.Sync = syncOn })
		for i := range 6 {
			if _, err := p.WriteAt([]byte("abc"), int64(i)*10); err != nil {
				t.Fatal(err)
			}
			if i == 2 {
				if err := p.Flush(); err != nil {
					t.Fatal(err)
				}
			}
		}
		seg := p.Status().Current
		p.crash()
		var synced []int64
		recLen := int64(HeaderSize + 3)
		f, err := OSFS{}.Open(filepath.Join(dir, seg))
		if err != nil {
			t.Fatal(err)
		}
		size, _ := f.Size()
		_, err = ScanSegment(f, size, SegmentName{Seq: 1, Node: "alpha"}, ScanOptions{Newest: true}, func(r Record, end int64) error {
			synced = append(synced, r.Synced)
			return nil
		})
		f.Close()
		if err != nil || len(synced) != 6 {
			t.Fatalf("scan: %v, %d records", err, len(synced))
		}
		for i, s := range synced {
			var want int64
			switch {
			case syncOn:
				// Each write was synced before the next was written
				// (one writer).
				want = int64(i) * recLen
			case i > 2:
				want = 3 * recLen // the Flush after the third write
			}
			if s != want {
				t.Errorf("sync=%v: record %d claims synced %d, want %d (all: %v)", syncOn, i+1, s, want, synced)
			}
		}
	}
}

// TestWriteVAt: the pwritev path writes every buffer in order, also past
// IOV_MAX buffers.
func TestWriteVAt(t *testing.T) {
	f, err := OSFS{}.Create(filepath.Join(t.TempDir(), "v"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var bufs [][]byte
	var want []byte
	for i := range 3000 {
		b := bytes.Repeat([]byte{byte(i)}, 1+i%7)
		bufs = append(bufs, b)
		want = append(want, b...)
	}
	n, err := f.(vectorWriter).WriteVAt(bufs, 10)
	if err != nil || n != len(want) {
		t.Fatalf("WriteVAt: %d, %v", n, err)
	}
	got := make([]byte, len(want))
	if _, err := f.ReadAt(got, 10); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read back differs (%v)", err)
	}
}
