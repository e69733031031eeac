package replicate

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tharsis/tharsis/blockdev"
)

// BenchmarkPrimaryWrite measures the write path (log pwrite, apply,
// acknowledge) with 32 concurrent writers of bs bytes on a file device, as
// an NBD client at queue depth 32 drives it. With sync=false nothing is
// synced but the background checkpoint; sync=true syncs every write; fua
// writes with WriteAtFUA (sync=false), each waiting for the group commit.
// Besides MB/s it reports writes/s and the log's fdatasyncs/s (segment
// syncs only). The log and image live in the test's temp dir (TMPDIR).
func BenchmarkPrimaryWrite(b *testing.B) {
	for _, bs := range []int{4 << 10, 256 << 10} {
		b.Run(fmt.Sprintf("bs=%dk/file", bs>>10), func(b *testing.B) { benchPlainWrite(b, bs) })
		for _, mode := range []string{"sync=false", "sync=true", "fua"} {
			b.Run(fmt.Sprintf("bs=%dk/%s", bs>>10, mode), func(b *testing.B) { benchPrimaryWrite(b, bs, mode) })
		}
	}
}

// BenchmarkLogSync compares the write path with and without zeros written
// ahead of the records (Options.ZeroAhead): 4 KiB writes with sync=true at
// queue depth 1 (every write one fdatasync) and 32 (group commit), FUA
// writes, and 256 KiB writes with and without sync (where zeros would only
// cost bandwidth). -count N runs each N times in a row: to compare under
// the same noise, run the test binary N times instead (bench/RESULTS.md).
func BenchmarkLogSync(b *testing.B) {
	for _, c := range []struct {
		bs, qd int
		mode   string
	}{{4 << 10, 1, "sync=true"}, {4 << 10, 32, "sync=true"}, {4 << 10, 32, "fua"}, {256 << 10, 32, "sync=true"}, {256 << 10, 32, "sync=false"}} {
		for _, ahead := range []int64{-1, DefaultZeroAhead} {
			b.Run(fmt.Sprintf("bs=%dk/qd=%d/%s/zeroahead=%dM", c.bs>>10, c.qd, c.mode, max(0, ahead)>>20), func(b *testing.B) {
				benchPrimaryWriteOpts(b, c.bs, c.mode, c.qd, ahead)
			})
		}
	}
}

const benchSize = 256 << 20

var benchCheckpoint = time.Second

// benchPlainWrite is the baseline: the same writes straight to the file
// device (what an unreplicated export does).
func benchPlainWrite(b *testing.B, bs int) {
	data, err := blockdev.CreateFile(filepath.Join(b.TempDir(), "data.img"), benchSize)
	if err != nil {
		b.Fatal(err)
	}
	defer data.Close()
	benchWrites(b, data.WriteAt, bs, 32)
}

func benchPrimaryWrite(b *testing.B, bs int, mode string) { benchPrimaryWriteOpts(b, bs, mode, 32, 0) }

func benchPrimaryWriteOpts(b *testing.B, bs int, mode string, qd int, zeroAhead int64) {
	dir := b.TempDir()
	data, err := blockdev.CreateFile(filepath.Join(dir, "data.img"), benchSize)
	if err != nil {
		b.Fatal(err)
	}
	syncs := new(atomic.Int64)
	p, err := OpenPrimary(data, Options{Dir: filepath.Join(dir, "log"), Node: "bench", Resource: "bench", Sync: mode == "sync=true",
		CheckpointInterval: benchCheckpoint, FS: syncCountFS{syncs: syncs}, ZeroAhead: zeroAhead})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	write := p.WriteAt
	if mode == "fua" {
		write = p.WriteAtFUA
	}
	syncs.Store(0)
	benchWrites(b, write, bs, qd)
	b.ReportMetric(float64(syncs.Load())/b.Elapsed().Seconds(), "syncs/s")
}

// syncCountFS counts the fdatasyncs of log segments; the files keep the
// optional interfaces of the OS files (pwritev).
type syncCountFS struct {
	OSFS
	syncs *atomic.Int64
}

type syncCountFile struct {
	osFile
	syncs *atomic.Int64
}

func (f syncCountFile) Sync() error { f.syncs.Add(1); return f.osFile.Sync() }

func (c syncCountFS) Create(name string) (File, error) { return c.wrap(c.OSFS.Create(name)) }
func (c syncCountFS) Open(name string) (File, error)   { return c.wrap(c.OSFS.Open(name)) }

func (c syncCountFS) wrap(f File, err error) (File, error) {
	if err != nil || !strings.HasPrefix(filepath.Base(f.(osFile).Name()), "log-") {
		return f, err
	}
	return syncCountFile{osFile: f.(osFile), syncs: c.syncs}, nil
}

func benchWrites(b *testing.B, write func([]byte, int64) (int, error), bs, qd int) {
	const size = benchSize
	var seed atomic.Uint64
	b.SetBytes(int64(bs))
	b.ReportAllocs()
	writer := func(next func() bool) {
		r := rand.New(rand.NewPCG(seed.Add(1), 1))
		buf := make([]byte, bs)
		for i := range buf {
			buf[i] = byte(r.Uint32())
		}
		for next() {
			off := r.Int64N(size/int64(bs)) * int64(bs)
			if _, err := write(buf, off); err != nil {
				b.Error(err)
				return
			}
		}
	}
	cpu0 := processCPU()
	b.ResetTimer()
	if qd == 1 {
		writer(b.Loop)
	} else {
		b.SetParallelism(max(1, qd/max(1, testingProcs())))
		b.RunParallel(func(pb *testing.PB) { writer(pb.Next) })
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
	// CPU time per write (user + system, the whole process): robust on a
	// shared machine, where ns/op is not.
	b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op")
}

// processCPU returns the CPU time the process used so far (user + system).
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func testingProcs() int { return runtime.GOMAXPROCS(0) }

func init() {
	if d, err := time.ParseDuration(os.Getenv("BENCH_CHECKPOINT")); err == nil {
		benchCheckpoint = d
	}
}
