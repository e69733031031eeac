package replicate

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/tharsis/tharsis/blockdev"
)

// BenchmarkCatchUp measures how fast a secondary that is behind fetches
// and replays the primary's log over loopback (MB/s of log), with the
// cluster secret or over TLS 1.3.
func BenchmarkCatchUp(b *testing.B) {
	b.Run("1MiB-writes", func(b *testing.B) { benchCatchUp(b, 1<<20, false) })
	b.Run("4KiB-writes", func(b *testing.B) { benchCatchUp(b, 4<<10, false) })
	b.Run("1MiB-writes-TLS", func(b *testing.B) { benchCatchUp(b, 1<<20, true) })
	b.Run("4KiB-writes-TLS", func(b *testing.B) { benchCatchUp(b, 4<<10, true) })
}

func benchCatchUp(b *testing.B, wsize int, withTLS bool) {
	const size = 64 << 20
	var a *node
	opts := SecondaryOptions{Node: "beta", Resource: "r0", Secret: testSecret, RetryInterval: 50 * time.Millisecond}
	if withTLS {
		ca := newTestCA(b, "alpha", "beta")
		a = newTLSNode(b, "alpha", size, ca.identity("alpha"))
		opts.Secret, opts.TLS = nil, ca.identity("beta")
	} else {
		a = newNode(b, "alpha", size)
	}
	opts.Peers = func() []Peer { return []Peer{a.peer()} }
	a.startPrimary(16 << 20)
	buf := make([]byte, wsize)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	total := int64(size)
	if wsize < 1<<20 {
		total = 16 << 20 // 4096 records
	}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for off := int64(w * wsize); off < total; off += int64(8 * wsize) {
				if _, err := a.prim.WriteAt(buf, off); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	a.prim.Flush()
	logBytes := int64(0)
	for _, s := range a.prim.Status().Segments {
		logBytes += s.Size
	}
	b.SetBytes(logBytes)
	b.ResetTimer()
	for i := range b.N {
		dir := b.TempDir()
		opts.Dir = dir
		s, err := OpenSecondary(blockdev.NewMemory(size), opts)
		if err != nil {
			b.Fatal(err)
		}
		s.FakeSync()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		end := a.prim.Status().Logged
		deadline := time.Now().Add(60 * time.Second)
		for !caughtUp(a.prim, s) {
			if time.Now().After(deadline) {
				b.Fatalf("iteration %d: not caught up after 60s", i)
			}
			time.Sleep(time.Millisecond)
		}
		_ = end
		cancel()
		<-done
		s.Close()
	}
}

// BenchmarkSyncCompare measures a full sync of identical 64 MiB disks
// (compare only: checksums on both sides, nothing transferred).
func BenchmarkSyncCompare(b *testing.B) {
	const size = 64 << 20
	a := newNode(b, "alpha", size)
	a.startPrimary(0)
	b.SetBytes(size)
	for i := range b.N {
		s, err := OpenSecondary(blockdev.NewMemory(size), SecondaryOptions{Dir: b.TempDir(), Node: "beta", Resource: "r0", Secret: testSecret,
			Peers: func() []Peer { return []Peer{a.peer()} }, RetryInterval: 50 * time.Millisecond})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		deadline := time.Now().Add(60 * time.Second)
		for !s.Consistent() {
			if time.Now().After(deadline) {
				b.Fatalf("iteration %d: sync not done after 60s", i)
			}
			time.Sleep(time.Millisecond)
		}
		if ls := s.Status().LastSync; ls == nil || ls.Transferred != 0 {
			b.Fatalf("sync of identical disks: %+v", ls)
		}
		cancel()
		<-done
		s.Close()
	}
}
