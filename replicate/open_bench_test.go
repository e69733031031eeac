package replicate

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tharsis/tharsis/blockdev"
	"github.com/tharsis/tharsis/internal/testutil"
	"golang.org/x/sys/unix"
)

// benchDir is where benchmarks that need a real disk put their files:
// THARSIS_BENCH_DIR, default /var/tmp (fdatasync and cold reads cost what
// they cost there; tmpfs hides both).
func benchDir(b *testing.B) string {
	base := os.Getenv("THARSIS_BENCH_DIR")
	if base == "" {
		base = "/var/tmp"
	}
	dir, err := os.MkdirTemp(base, "tharsis-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// BenchmarkOpenRetained measures OpenPrimary of a log that retains
// THARSIS_BENCH_RETAINED bytes (default 1 GiB) of applied sealed segments
// (256 MiB each) plus a newest segment with one record, with a cold page
// cache for the log (posix_fadvise DONTNEED before each open): "index" as
// it runs, "scan" with the segment index removed before each open (every
// segment read and checked, as before the index). reads/op counts the
// pread calls of the log.
//
//	THARSIS_BENCH_RETAINED=$((8<<30)) go test -run - -bench OpenRetained -benchtime 5x ./replicate
func BenchmarkOpenRetained(b *testing.B) {
	logDir := filepath.Join(benchDir(b), "log")
	data, buf, retained := retainedBenchLog(b, logDir)
	benchOpens(b, logDir, "bench", data, buf, retained)
}

// BenchmarkPromoteFetched measures the promotion of a secondary (handover,
// `primary --force`): a primary writes THARSIS_BENCH_RETAINED bytes as in
// BenchmarkOpenRetained, a secondary fetches and replays all of it over
// loopback, stops, and its log is opened by OpenPrimary. With -benchtime
// 1x each mode's open is the promotion itself ("index": the index the
// secondary kept; "scan": without it, as before secondaries kept one);
// later iterations are restarts of the promoted node.
//
//	THARSIS_BENCH_RETAINED=$((4<<30)) go test -run - -bench PromoteFetched -benchtime 1x ./replicate
func BenchmarkPromoteFetched(b *testing.B) {
	dir := benchDir(b)
	primDir, secDir := filepath.Join(dir, "alpha"), filepath.Join(dir, "beta")
	pdata, buf, retained := retainedBenchLog(b, primDir)
	p, err := OpenPrimary(pdata, Options{Dir: primDir, Node: "bench", Resource: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &ShipServer{Node: "alpha", Secret: testSecret}
	go srv.Serve(l)
	defer srv.Shutdown(context.Background())
	srv.AddResource("bench", PrimarySource(p))
	sdata := blockdev.NewMemory(pdata.Size())
	s, err := OpenSecondary(sdata, SecondaryOptions{Dir: secDir, Node: "beta", Resource: "bench", Secret: testSecret,
		Peers: func() []Peer { return []Peer{{Name: "alpha", Addr: l.Addr().String()}} }})
	if err != nil {
		b.Fatal(err)
	}
	s.FakeSync() // both start zeroed
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	testutil.WaitFor(b, 10*time.Minute, "the secondary to fetch and replay the log", func() bool { return caughtUp(p, s) })
	cancel()
	<-done
	s.Close()
	srv.RemoveResource("bench")
	if err := p.Close(); err != nil {
		b.Fatal(err)
	}
	benchOpens(b, secDir, "beta", sdata, buf, retained)
}

// retainedBenchLog writes THARSIS_BENCH_RETAINED bytes (default 1 GiB) of
// 1 MiB writes through a primary in logDir, then seals its last segment
// and leaves one record in the newest. It returns the data device, the
// write buffer and the bytes written.
func retainedBenchLog(b *testing.B, logDir string) (*blockdev.Memory, []byte, int64) {
	retained := int64(1 << 30)
	if v := os.Getenv("THARSIS_BENCH_RETAINED"); v != "" {
		n, err := strconv.ParseInt(v, 0, 64)
		if err != nil {
			b.Fatalf("THARSIS_BENCH_RETAINED=%q: %v", v, err)
		}
		retained = n
	}
	data := blockdev.NewMemory(64 << 20)
	p, err := OpenPrimary(data, Options{Dir: logDir, Node: "bench", Resource: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	for off := int64(0); off < retained; off += int64(len(buf)) {
		if _, err := p.WriteAt(buf, off%data.Size()); err != nil {
			b.Fatal(err)
		}
	}
	if err := p.Close(); err != nil {
		b.Fatal(err)
	}
	// Seal the last segment written, and leave one record in the newest.
	if p, err = OpenPrimary(data, Options{Dir: logDir, Node: "bench", Resource: "bench"}); err == nil {
		_, err = p.WriteAt(buf[:4096], 0)
		if cerr := p.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		b.Fatal(err)
	}
	return data, buf, retained
}

// benchOpens times OpenPrimary of the log in logDir as node, with the
// segment index ("index") and with it removed before each open ("scan"),
// the log's page cache dropped first.
func benchOpens(b *testing.B, logDir, node string, data blockdev.Device, buf []byte, retained int64) {
	for _, mode := range []string{"index", "scan"} {
		b.Run(mode, func(b *testing.B) {
			var reads atomic.Int64
			fsys := &preadCountFS{reads: &reads}
			for b.Loop() {
				b.StopTimer()
				if mode == "scan" {
					os.Remove(filepath.Join(logDir, indexFile))
				}
				dropCache(b, logDir)
				reads.Store(0)
				b.StartTimer()
				p, err := OpenPrimary(data, Options{Dir: logDir, Node: node, Resource: "bench", FS: fsys})
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				b.ReportMetric(float64(reads.Load()), "reads/op")
				// A restarted node writes: the next newest segment holds a record.
				if _, err := p.WriteAt(buf[:4096], 0); err != nil {
					b.Fatal(err)
				}
				if err := p.Close(); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(retained)/(1<<30), "GiB-retained")
		})
	}
}

// dropCache evicts the files in dir from the page cache.
func dropCache(b *testing.B, dir string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		b.Fatal(err)
	}
	for _, e := range ents {
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		unix.Fdatasync(int(f.Fd()))
		unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
		f.Close()
	}
}

// preadCountFS counts the ReadAt calls on the files it opens.
type preadCountFS struct {
	OSFS
	reads *atomic.Int64
}

func (c *preadCountFS) Open(name string) (File, error) {
	f, err := c.OSFS.Open(name)
	if err != nil {
		return nil, err
	}
	return preadCountFile{File: f, reads: c.reads}, nil
}

type preadCountFile struct {
	File
	reads *atomic.Int64
}

func (f preadCountFile) ReadAt(b []byte, off int64) (int, error) {
	f.reads.Add(1)
	return f.File.ReadAt(b, off)
}

// BenchmarkAppendSync is the physical reference for the log's group
// commit: one pwrite of a record then one fdatasync, appended to a file on
// THARSIS_BENCH_DIR (default /var/tmp) prepared four ways. grow is an
// empty file, as segments are created today: every fdatasync also writes
// the inode (the size changed). fallocate sets the size first (unwritten
// extents, converted as they are written); keepsize reserves the blocks
// with FALLOC_FL_KEEP_SIZE (the size grows with each write); overwrite
// writes into a file written whole and synced before (pre-zeroed, or a
// recycled old segment): only data blocks change. Run with
// `go test -run - -bench AppendSync ./replicate`.
func BenchmarkAppendSync(b *testing.B) {
	for _, bs := range []int{4 << 10, 64 << 10} {
		for _, mode := range []string{"grow", "fallocate", "keepsize", "overwrite"} {
			b.Run(fmt.Sprintf("bs=%dk/%s", bs>>10, mode), func(b *testing.B) { benchAppendSync(b, bs, mode) })
		}
	}
}

func benchAppendSync(b *testing.B, bs int, mode string) {
	const fileSize = 64 << 20
	dir := benchDir(b)
	rec := make([]byte, bs)
	for i := range rec {
		rec[i] = byte(i)
	}
	var f *os.File
	var off int64
	n := 0
	prepare := func() {
		if f != nil {
			f.Close()
			os.Remove(f.Name())
		}
		var err error
		f, err = os.OpenFile(filepath.Join(dir, fmt.Sprintf("seg-%d", n)), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			b.Fatal(err)
		}
		n++
		off = 0
		fd := int(f.Fd())
		switch mode {
		case "fallocate":
			err = unix.Fallocate(fd, 0, 0, fileSize)
		case "keepsize":
			err = unix.Fallocate(fd, unix.FALLOC_FL_KEEP_SIZE, 0, fileSize)
		case "overwrite":
			zero := make([]byte, 1<<20)
			for o := int64(0); o < fileSize && err == nil; o += int64(len(zero)) {
				_, err = f.WriteAt(zero, o)
			}
		}
		if err == nil {
			err = unix.Fsync(fd)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	prepare()
	defer func() { f.Close() }()
	b.SetBytes(int64(bs))
	for b.Loop() {
		if off+int64(bs) > fileSize {
			b.StopTimer()
			prepare()
			b.StartTimer()
		}
		if _, err := f.WriteAt(rec, off); err != nil {
			b.Fatal(err)
		}
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			b.Fatal(err)
		}
		off += int64(bs)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "syncs/s")
}
