package replicate

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tharsis/tharsis/blockdev"
)

// BenchmarkPrimaryWrite measures the write path (log pwrite, apply,
// acknowledge) with 32 concurrent writers of bs bytes on a file device, as
// an NBD client at queue depth 32 drives it. With sync=false nothing is
// synced but the background checkpoint; sync=true syncs every write. The
// log and image live in the test's temp dir (TMPDIR).
func BenchmarkPrimaryWrite(b *testing.B) {
	for _, bs := range []int{4 << 10, 256 << 10} {
		b.Run(fmt.Sprintf("bs=%dk/file", bs>>10), func(b *testing.B) { benchPlainWrite(b, bs) })
		for _, syncOn := range []bool{false, true} {
			b.Run(fmt.Sprintf("bs=%dk/sync=%v", bs>>10, syncOn), func(b *testing.B) { benchPrimaryWrite(b, bs, syncOn) })
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
	benchWrites(b, data, bs)
}

func benchPrimaryWrite(b *testing.B, bs int, syncOn bool) {
	dir := b.TempDir()
	data, err := blockdev.CreateFile(filepath.Join(dir, "data.img"), benchSize)
	if err != nil {
		b.Fatal(err)
	}
	p, err := OpenPrimary(data, Options{Dir: filepath.Join(dir, "log"), Node: "bench", Resource: "bench", Sync: syncOn, CheckpointInterval: benchCheckpoint})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	benchWrites(b, p, bs)
}

func benchWrites(b *testing.B, d blockdev.Device, bs int) {
	const size = benchSize
	var seed atomic.Uint64
	b.SetBytes(int64(bs))
	b.ReportAllocs()
	b.SetParallelism(32 / max(1, testingProcs()))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		r := rand.New(rand.NewPCG(seed.Add(1), 1))
		buf := make([]byte, bs)
		for i := range buf {
			buf[i] = byte(r.Uint32())
		}
		for pb.Next() {
			off := r.Int64N(size/int64(bs)) * int64(bs)
			if _, err := d.WriteAt(buf, off); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func testingProcs() int { return runtime.GOMAXPROCS(0) }

func init() {
	if d, err := time.ParseDuration(os.Getenv("BENCH_CHECKPOINT")); err == nil {
		benchCheckpoint = d
	}
}
