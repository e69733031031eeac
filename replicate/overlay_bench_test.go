package replicate

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// BenchmarkReadUnappliedWindow measures a 4 KiB read while the unapplied
// window holds n records of random 4 KiB writes (the data device holds
// the applier back, as a disk slower than the log does): the read finds
// the records it overlaps in the window.
func BenchmarkReadUnappliedWindow(b *testing.B) {
	const size = 256 << 20
	for _, n := range []int{0, 1 << 10, 16 << 10} {
		b.Run(fmt.Sprintf("records=%d", n), func(b *testing.B) {
			dev := newHeldDevice(size)
			dev.hold()
			p, err := OpenPrimary(dev, Options{Dir: b.TempDir(), Node: "alpha", Resource: "r0", ApplyWindow: 256 << 20})
			if err != nil {
				b.Fatal(err)
			}
			defer func() { dev.release(); p.Close() }()
			r := rand.New(rand.NewPCG(1, 2))
			buf := make([]byte, 4096)
			for range n {
				if _, err := p.WriteAt(buf, r.Int64N(size/4096)*4096); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			for b.Loop() {
				if _, err := p.ReadAt(buf, r.Int64N(size/4096)*4096); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
