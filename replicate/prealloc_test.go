package replicate

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/tharsis/tharsis/blockdev"
)

const testPrealloc = 1 << 20

// allocated returns the bytes of disk blocks the file at path holds.
func allocated(t *testing.T, path string) (size, blocks int64) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size(), st.Sys().(*syscall.Stat_t).Blocks * 512
}

// scanEnd returns the end of the last good record of a segment file.
func scanEnd(t *testing.T, path string) SegmentInfo {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	n, _ := ParseSegmentName(filepath.Base(path))
	info, err := ScanSegment(f, st.Size(), n, ScanOptions{Newest: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// TestPreallocSealedSizeIsEnd: with preallocation the current segment holds
// blocks past its end but its size is the end of its records; every
// segment sealed (rotation, recovery, CloseSealed) is cut to its end, the
// blocks past it freed, and a crash loses nothing and reports no torn tail.
func TestPreallocSealedSizeIsEnd(t *testing.T) {
	dir := t.TempDir()
	logDir := filepath.Join(dir, "log")
	mem := blockdev.NewMemory(devSize)
	open := func() *Primary {
		return openTest(t, mem, logDir, func(o *Options) { o.Sync = true; o.prealloc = testPrealloc })
	}
	p := open()
	want := make([]byte, devSize)
	n := 0
	write := func(count int) {
		for range count {
			b := bytes.Repeat([]byte{byte(n + 1)}, 4096)
			off := int64(n%200) * 4096
			if _, err := p.WriteAt(b, off); err != nil {
				t.Fatal(err)
			}
			copy(want[off:], b)
			n++
		}
	}
	write(20)
	cur := filepath.Join(logDir, p.Status().Current)
	size, blocks := allocated(t, cur)
	if end := scanEnd(t, cur).End; size != end || size != 20*(HeaderSize+4096) {
		t.Fatalf("current segment: size %d, end of records %d", size, end)
	}
	if blocks < testPrealloc {
		t.Fatalf("current segment holds %d bytes of blocks, want at least the %d preallocated", blocks, testPrealloc)
	}
	checkSealed := func(path string) {
		t.Helper()
		info := scanEnd(t, path)
		size, blocks := allocated(t, path)
		if !info.Sealed || size != info.End {
			t.Fatalf("sealed segment %s: size %d, end %d, sealed %v", path, size, info.End, info.Sealed)
		}
		if blocks >= testPrealloc {
			t.Fatalf("sealed segment %s of %d bytes still holds %d bytes of blocks", path, size, blocks)
		}
	}
	if err := p.Rotate(); err != nil {
		t.Fatal(err)
	}
	checkSealed(cur)

	// A crash with preallocated blocks past the records: recovery finds
	// every acknowledged record and no torn tail, and seals the segment
	// to its end.
	write(30)
	cur = filepath.Join(logDir, p.Status().Current)
	p.crash()
	p = open()
	if p.Replayed() != 30 || !bytes.Equal(mem.Bytes(), want) {
		t.Fatalf("replayed %d records after the crash, want 30", p.Replayed())
	}
	checkSealed(cur)

	write(5)
	cur = filepath.Join(logDir, p.Status().Current)
	if _, err := p.CloseSealed(); err != nil {
		t.Fatal(err)
	}
	checkSealed(cur)
}

// TestPreallocFailureAppends: when preallocation fails (the filesystem is
// full, or cannot), writes go on as plain appends.
func TestPreallocFailureAppends(t *testing.T) {
	for _, perr := range []error{errENOSPC, errors.ErrUnsupported} {
		fsys := newFaultFS()
		fsys.preallocErr = perr
		mem := blockdev.NewMemory(devSize)
		p := openTest(t, mem, t.TempDir(), func(o *Options) { o.Sync = true; o.FS = fsys; o.prealloc = 64 << 10 })
		for i := range 50 {
			if _, err := p.WriteAt(bytes.Repeat([]byte{1}, 4096), int64(i)*4096); err != nil {
				t.Fatalf("write with preallocation failing (%v): %v", perr, err)
			}
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		if fsys.preallocs < 2 {
			t.Fatalf("preallocation tried %d times, want it tried again as the segment grows", fsys.preallocs)
		}
	}
}

// TestPreallocCountsAsFree: blocks preallocated past the records count as
// free space, so a write that fits in them is not refused although statfs
// counts them as used; with preallocation off the same write is refused.
func TestPreallocCountsAsFree(t *testing.T) {
	for _, prealloc := range []int64{0, testPrealloc} {
		fsys := newFaultFS()
		p := openTest(t, blockdev.NewMemory(devSize), t.TempDir(), func(o *Options) {
			o.FS, o.NoEmergency, o.MinFree, o.prealloc = fsys, true, 1<<20, prealloc
		})
		p.w.mu.Lock()
		p.w.statfsMaxAge = 0
		p.w.mu.Unlock()
		fsys.set(func(f *faultFS) { f.avail = 1<<20 + spaceReserve + 100 })
		_, err := p.WriteAt(make([]byte, 4096), 0)
		if prealloc > 0 && err != nil || prealloc == 0 && !errors.Is(err, blockdev.ErrNoSpace) {
			t.Fatalf("prealloc %d: write of 4 KiB with 100 bytes over the minimum free: %v", prealloc, err)
		}
		p.Close()
	}
}
