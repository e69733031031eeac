package blockdev

import (
	"sync"
	"testing"
	"time"
)

func TestStatsRecord(t *testing.T) {
	var s Stats
	s.Record(OpWrite, 4096, 10*time.Microsecond, false)
	s.Record(OpWrite, 8192, 3*time.Millisecond, false)
	s.Record(OpWrite, 0, time.Minute, true) // slower than every bucket
	s.Record(OpRead, 512, 25*time.Microsecond, false)

	w := s.Load(OpWrite)
	if w.Requests != 3 || w.Bytes != 12288 || w.Errors != 1 {
		t.Fatalf("write: %d requests, %d bytes, %d errors; want 3, 12288, 1", w.Requests, w.Bytes, w.Errors)
	}
	if want := time.Minute + 3*time.Millisecond + 10*time.Microsecond; w.Latency != want {
		t.Errorf("write latency sum %v, want %v", w.Latency, want)
	}
	// 10 µs falls in the first bucket, 3 ms in the 5 ms one, a minute in
	// none of the bounded ones.
	for i, b := range LatencyBuckets {
		want := uint64(0)
		switch {
		case b >= 5*time.Millisecond:
			want = 2
		case b >= 25*time.Microsecond:
			want = 1
		}
		if w.Buckets[i] != want {
			t.Errorf("write bucket le=%v holds %d, want %d", b, w.Buckets[i], want)
		}
	}
	// A latency equal to a bound belongs to that bucket (le).
	if r := s.Load(OpRead); r.Buckets[0] != 1 || r.Requests != 1 || r.Bytes != 512 {
		t.Errorf("read: %+v, want 1 request of 512 bytes in the first bucket", r)
	}
	if f := s.Load(OpFlush); f.Requests != 0 {
		t.Errorf("flush: %d requests, want 0", f.Requests)
	}
}

func TestStatsNilAndConcurrent(t *testing.T) {
	var nilStats *Stats
	nilStats.Record(OpRead, 1, time.Millisecond, false) // must not panic
	if got := nilStats.Load(OpRead); got.Requests != 0 {
		t.Fatalf("nil stats loaded %d requests", got.Requests)
	}

	var s Stats
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				s.Record(OpTrim, 2, time.Microsecond, false)
			}
		})
	}
	wg.Wait()
	if got := s.Load(OpTrim); got.Requests != 8000 || got.Bytes != 16000 {
		t.Fatalf("trim: %d requests, %d bytes; want 8000, 16000", got.Requests, got.Bytes)
	}
	if n := testing.AllocsPerRun(100, func() { s.Record(OpWrite, 4096, time.Millisecond, false) }); n != 0 {
		t.Errorf("Record allocates %v times per call, want 0", n)
	}
}

func BenchmarkStatsRecord(b *testing.B) {
	var s Stats
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			s.Record(OpWrite, 4096, 80*time.Microsecond, false)
		}
	})
}
