package replicate

import (
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"testing"
	"time"
)

// delayProxy forwards TCP connections to target, delaying every chunk by
// oneWay in each direction (order kept): an emulated WAN link on loopback.
func delayProxy(tb testing.TB, target string, oneWay time.Duration) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { l.Close() })
	pipe := func(dst, src net.Conn) {
		type chunk struct {
			b  []byte
			at time.Time
		}
		ch := make(chan chunk, 4096)
		go func() {
			defer close(ch)
			for {
				b := make([]byte, 64<<10)
				n, err := src.Read(b)
				if n > 0 {
					ch <- chunk{b[:n], time.Now().Add(oneWay)}
				}
				if err != nil {
					return
				}
			}
		}()
		for c := range ch {
			time.Sleep(time.Until(c.at))
			if _, err := dst.Write(c.b); err != nil {
				break
			}
		}
		io.Copy(io.Discard, src)
		dst.Close()
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			t, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			go pipe(t, c)
			go pipe(c, t)
		}
	}()
	return l.Addr().String()
}

// BenchmarkAckLatency: 4 KiB write latency (one writer) with
// ack_secondaries 0 and 1, one secondary behind an emulated link of 1 ms
// and 50 ms RTT (in-process delay proxy on loopback). Reports p50 and p99.
// Run: go test ./replicate -run '^$' -bench AckLatency -benchtime 200x
func BenchmarkAckLatency(b *testing.B) {
	for _, rtt := range []time.Duration{time.Millisecond, 50 * time.Millisecond} {
		for _, k := range []int{0, 1} {
			b.Run("rtt="+rtt.String()+"/ack_secondaries="+string(rune('0'+k)), func(b *testing.B) {
				const size = 64 << 20
				a, s := newNode(b, "alpha", size), newNode(b, "beta", size)
				a.startAckPrimary(AckOptions{Secondaries: k, Timeout: AckForever})
				via := delayProxy(b, a.addr, rtt/2)
				s.beforeRun = func(sec *Secondary) { sec.FakeSync() }
				s.startSecondary(func() []Peer { return []Peer{{Name: "alpha", Addr: via}} }, nil)
				buf := make([]byte, 4096)
				rng := rand.New(rand.NewPCG(1, 2))
				// Warm up: the stream is open and caught up.
				a.prim.WriteAt(buf, 0)
				waitCaughtUp(b, a.prim, s)
				lat := make([]time.Duration, 0, b.N)
				b.ResetTimer()
				for range b.N {
					off := rng.Int64N(size/4096) * 4096
					t0 := time.Now()
					if _, err := a.prim.WriteAt(buf, off); err != nil {
						b.Fatal(err)
					}
					lat = append(lat, time.Since(t0))
				}
				b.StopTimer()
				slices.Sort(lat)
				b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			})
		}
	}
}
