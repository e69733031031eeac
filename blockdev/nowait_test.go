package blockdev

import (
	"bytes"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestFileNoWait reads and writes a File through the RWF_NOWAIT first try
// and through the ordinary path alone, with the pages cached and evicted
// (where RWF_NOWAIT refuses with EAGAIN and the ordinary path must finish
// the transfer): the bytes are the same either way.
func TestFileNoWait(t *testing.T) {
	for _, disabled := range []bool{false, true} {
		name := "nowait"
		if disabled {
			name = "ordinary"
		}
		t.Run(name, func(t *testing.T) {
			d, err := CreateFile(filepath.Join(t.TempDir(), "disk"), 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			d.nowait.disabled = disabled
			want := make([]byte, 3*4096+512)
			for i := range want {
				want[i] = byte(i*7 + 1)
			}
			if n, err := d.WriteAt(want, 8192+512); err != nil || n != len(want) {
				t.Fatalf("WriteAt: %d, %v", n, err)
			}
			got := make([]byte, len(want))
			if n, err := d.ReadAt(got, 8192+512); err != nil || n != len(got) || !bytes.Equal(got, want) {
				t.Fatalf("ReadAt of cached pages: %d, %v, equal %v", n, err, bytes.Equal(got, want))
			}
			if !disabled {
				if n := d.nowait.try(got[:4096], 8192+512, false); n != 4096 && !d.nowait.noRead.Load() {
					t.Fatalf("RWF_NOWAIT read of a cached page moved %d bytes and was not refused", n)
				}
				t.Logf("RWF_NOWAIT reads refused: %v, writes refused: %v", d.nowait.noRead.Load(), d.nowait.noWrite.Load())
			}
			// Evict the pages: a RWF_NOWAIT read gets EAGAIN (or part),
			// the ordinary read does the rest.
			if err := d.Flush(); err != nil {
				t.Fatal(err)
			}
			if err := unix.Fadvise(int(d.f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
				t.Fatal(err)
			}
			clear(got)
			if n, err := d.ReadAt(got, 8192+512); err != nil || n != len(got) || !bytes.Equal(got, want) {
				t.Fatalf("ReadAt of evicted pages: %d, %v, equal %v", n, err, bytes.Equal(got, want))
			}
			// The last bytes of the device.
			tail := []byte("the end")
			off := d.Size() - int64(len(tail))
			if _, err := d.WriteAt(tail, off); err != nil {
				t.Fatal(err)
			}
			got = make([]byte, len(tail))
			if n, err := d.ReadAt(got, off); err != nil || n != len(tail) || !bytes.Equal(got, tail) {
				t.Fatalf("ReadAt of the last bytes: %d, %v, %q", n, err, got)
			}
		})
	}
}

// TestFileNoWaitAllocs: the RWF_NOWAIT try does not allocate per call.
func TestFileNoWaitAllocs(t *testing.T) {
	d, err := CreateFile(filepath.Join(t.TempDir(), "disk"), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	p := make([]byte, 4096)
	if _, err := d.WriteAt(p, 0); err != nil {
		t.Fatal(err)
	}
	if a := testing.AllocsPerRun(100, func() { _, _ = d.ReadAt(p, 0) }); a > 0 {
		t.Fatalf("ReadAt allocates %.1f times per call, want 0", a)
	}
}
