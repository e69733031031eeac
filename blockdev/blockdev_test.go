package blockdev

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func testDevice(t *testing.T, d Device) {
	t.Helper()
	size := d.Size()
	p := bytes.Repeat([]byte{0xab}, 4096)
	if _, err := d.WriteAt(p, 8192); err != nil {
		t.Fatalf("WriteAt: %v", err)
	}
	got := make([]byte, 4096)
	if _, err := d.ReadAt(got, 8192); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("ReadAt after WriteAt: err %v, equal %v", err, bytes.Equal(got, p))
	}
	if err := d.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if err := d.Trim(8192, 1024); err != nil {
		t.Fatalf("Trim: %v", err)
	}
	if err := d.WriteZeroes(8192+1024, 1024); err != nil {
		t.Fatalf("WriteZeroes: %v", err)
	}
	d.ReadAt(got, 8192)
	want := append(make([]byte, 2048), p[:2048]...)
	if !bytes.Equal(got, want) {
		t.Fatalf("after Trim+WriteZeroes the range does not read as zeros")
	}
	for _, tc := range []struct{ off, n int64 }{{size, 1}, {size - 1, 2}, {-1, 1}, {0, size + 1}} {
		if _, err := d.ReadAt(make([]byte, tc.n), tc.off); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("ReadAt(off %d, len %d) = %v, want ErrOutOfRange", tc.off, tc.n, err)
		}
		if _, err := d.WriteAt(make([]byte, tc.n), tc.off); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("WriteAt(off %d, len %d) = %v, want ErrOutOfRange", tc.off, tc.n, err)
		}
		if err := d.Trim(tc.off, tc.n); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("Trim(off %d, len %d) = %v, want ErrOutOfRange", tc.off, tc.n, err)
		}
	}
}

func TestMemory(t *testing.T) { testDevice(t, NewMemory(1<<20)) }

func TestFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk")
	d, err := CreateFile(path, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	testDevice(t, d)
	if err := d.Limit(1 << 21); err == nil {
		t.Error("Limit beyond the disk's size succeeded")
	}
	if err := d.Limit(1 << 19); err != nil || d.Size() != 1<<19 {
		t.Errorf("Limit(512 KiB): err %v, size %d", err, d.Size())
	}
}

func TestFileReadOnly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk")
	d, err := CreateFile(path, 4096)
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	ro, err := OpenFile(path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if _, err := ro.WriteAt([]byte{1}, 0); !errors.Is(err, ErrReadOnly) {
		t.Errorf("WriteAt on read-only = %v, want ErrReadOnly", err)
	}
}

// TestSyncerGroupCommit checks that concurrent callers share syncs and that
// every caller is covered by a sync that started after it called.
func TestSyncerGroupCommit(t *testing.T) {
	var calls atomic.Int64
	release := make(chan struct{})
	entered := make(chan struct{}, 100)
	s := NewSyncer(func() error {
		calls.Add(1)
		entered <- struct{}{}
		<-release
		return nil
	})
	// First caller starts a sync and blocks in it.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); s.Sync() }()
	<-entered
	// 50 more callers arrive while it runs; they must share one more sync.
	for range 50 {
		wg.Add(1)
		go func() { defer wg.Done(); s.MarkDirty(); s.Sync() }()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		n := s.waiters
		s.mu.Unlock()
		if n == 50 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of 50 callers are waiting after 10s", n)
		}
		runtime.Gosched()
	}
	close(release)
	wg.Wait()
	if n := calls.Load(); n != 2 {
		t.Fatalf("51 callers caused %d syncs, want 2", n)
	}
	// Nothing dirty: no sync.
	before := calls.Load()
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	if calls.Load() != before {
		t.Errorf("Sync with nothing dirty synced")
	}
}

func TestSyncerError(t *testing.T) {
	fail := true
	s := NewSyncer(func() error {
		if fail {
			return errors.New("io error")
		}
		return nil
	})
	if err := s.Sync(); err == nil {
		t.Fatal("Sync did not return the sync error")
	}
	fail = false
	if err := s.Sync(); err != nil {
		t.Fatalf("Sync after a failed sync: %v (it must retry)", err)
	}
}

func TestFileDetachAttach(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk")
	d, err := CreateFile(path, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.WriteAt([]byte("before"), 4096); err != nil {
		t.Fatal(err)
	}
	if err := d.Detach(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if _, err := d.ReadAt(buf, 4096); !errors.Is(err, ErrDetached) {
		t.Fatalf("read while detached: %v, want ErrDetached", err)
	}
	if _, err := d.WriteAt(buf, 0); !errors.Is(err, ErrDetached) {
		t.Fatalf("write while detached: %v, want ErrDetached", err)
	}
	// Detached means closed: the operator may change the file meanwhile.
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("during"), 8192)
	f.Close()
	if d.Name() != path || d.Size() != 1<<20 {
		t.Fatalf("name/size while detached: %s %d", d.Name(), d.Size())
	}
	if err := d.Attach(); err != nil {
		t.Fatal(err)
	}
	for off, want := range map[int64]string{4096: "before", 8192: "during"} {
		if _, err := d.ReadAt(buf, off); err != nil || string(buf) != want {
			t.Fatalf("after attach at %d: %q %v, want %q", off, buf, err, want)
		}
	}
	// A disk that shrank while detached is refused.
	d.Detach()
	os.Truncate(path, 4096)
	if err := d.Attach(); err == nil {
		t.Fatal("attach of a disk smaller than the size in use succeeded")
	}
}
