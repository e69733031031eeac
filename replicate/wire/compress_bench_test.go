package wire

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// benchData is 64 frames of 1 MiB: text-like (lines with counters, words
// repeated across frames) or random.
func benchData(kind string) [][]byte {
	rng := rand.New(rand.NewPCG(1, 2))
	words := []string{"block", "write", "replica", "segment", "the", "quick", "brown", "fox", "log", "record"}
	frames := make([][]byte, 64)
	for i := range frames {
		var b bytes.Buffer
		for b.Len() < 1<<20 {
			if kind == "random" {
				var w [8]byte
				for j := range w {
					w[j] = byte(rng.Uint32())
				}
				b.Write(w[:])
				continue
			}
			fmt.Fprintf(&b, "%d %s %s %x\n", rng.IntN(1e6), words[rng.IntN(len(words))], words[rng.IntN(len(words))], rng.Uint32())
		}
		frames[i] = b.Bytes()[:1<<20]
	}
	return frames
}

// BenchmarkCompressFrames compares compressing each ~1 MiB frame on its own
// (what the ship server does) with one zstd stream per connection flushed
// after every frame (matches across frames, but state for the whole
// connection): MB/s of data and the ratio (wire/data).
func BenchmarkCompressFrames(b *testing.B) {
	for _, kind := range []string{"text", "random"} {
		frames := benchData(kind)
		b.Run(kind+"/frame", func(b *testing.B) {
			c := NewCompressor()
			var in, out int64
			b.SetBytes(1 << 20)
			for i := 0; b.Loop(); i++ {
				f := frames[i%len(frames)]
				m := c.Compress(&SegmentData{Data: f})
				in += int64(len(f))
				if cm, ok := m.(*CompressedData); ok {
					out += int64(len(cm.Data))
				} else {
					out += int64(len(f))
				}
			}
			b.ReportMetric(float64(out)/float64(in), "wire/data")
		})
		b.Run(kind+"/stream", func(b *testing.B) {
			var buf bytes.Buffer
			enc, _ := zstd.NewWriter(&buf, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
			var in, out int64
			b.SetBytes(1 << 20)
			for i := 0; b.Loop(); i++ {
				f := frames[i%len(frames)]
				enc.Write(f)
				enc.Flush()
				in += int64(len(f))
				out += int64(buf.Len())
				buf.Reset()
			}
			b.ReportMetric(float64(out)/float64(in), "wire/data")
		})
	}
}
