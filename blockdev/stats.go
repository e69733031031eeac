package blockdev

import (
	"sync/atomic"
	"time"
)

// Op is a kind of request an export serves, as Stats counts them.
type Op uint8

// Ops. OpOther counts requests that are none of the others (AoE IDENTIFY,
// unsupported commands).
const (
	OpRead Op = iota
	OpWrite
	OpFlush
	OpTrim
	OpWriteZeroes
	OpOther
	// NumOps is the number of Ops.
	NumOps
)

var opNames = [NumOps]string{"read", "write", "flush", "trim", "write_zeroes", "other"}

// String returns the op's metric label: "read", "write", "flush", "trim",
// "write_zeroes" or "other".
func (o Op) String() string {
	if o < NumOps {
		return opNames[o]
	}
	return "other"
}

// LatencyBuckets are the upper bounds of Stats' latency histogram, from
// 25 µs to 10 s; a last bucket holds the slower requests.
var LatencyBuckets = [...]time.Duration{
	25 * time.Microsecond, 50 * time.Microsecond, 100 * time.Microsecond,
	250 * time.Microsecond, 500 * time.Microsecond, time.Millisecond,
	2500 * time.Microsecond, 5 * time.Millisecond, 10 * time.Millisecond,
	25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond,
	250 * time.Millisecond, 500 * time.Millisecond, time.Second,
	2500 * time.Millisecond, 5 * time.Second, 10 * time.Second,
}

// Stats counts the requests one export served, per Op: how many, their
// payload bytes, how many failed, and a latency histogram. Record is safe
// for concurrent use and neither locks nor allocates, so the exports call
// it for every request; a nil *Stats records nothing.
type Stats struct {
	ops [NumOps]opStats
}

type opStats struct {
	bytes   atomic.Uint64
	errors  atomic.Uint64
	nanos   atomic.Uint64 // sum of the latencies
	buckets [len(LatencyBuckets) + 1]atomic.Uint64
	_       [64]byte // keeps the hot counters of two ops off one cache line
}

// Record counts one request of op that moved n payload bytes and took d;
// failed says it was answered with an error.
func (s *Stats) Record(op Op, n int, d time.Duration, failed bool) {
	if s == nil {
		return
	}
	if op >= NumOps {
		op = OpOther
	}
	o := &s.ops[op]
	i := 0
	for i < len(LatencyBuckets) && d > LatencyBuckets[i] {
		i++
	}
	o.buckets[i].Add(1)
	o.nanos.Add(uint64(max(d, 0)))
	if n > 0 {
		o.bytes.Add(uint64(n))
	}
	if failed {
		o.errors.Add(1)
	}
}

// OpStats is a snapshot of one op's counters.
type OpStats struct {
	Requests uint64 // requests served, failed or not
	Bytes    uint64 // payload bytes read or written
	Errors   uint64 // requests answered with an error
	Latency  time.Duration
	// Buckets[i] counts the requests that took at most LatencyBuckets[i]
	// (cumulative, as Prometheus histograms are); Requests counts all.
	Buckets [len(LatencyBuckets)]uint64
}

// Load returns a snapshot of op's counters. Requests recorded while it
// runs may be counted in some fields and not yet in others.
func (s *Stats) Load(op Op) OpStats {
	var out OpStats
	if s == nil || op >= NumOps {
		return out
	}
	o := &s.ops[op]
	var sum uint64
	for i := range o.buckets {
		sum += o.buckets[i].Load()
		if i < len(out.Buckets) {
			out.Buckets[i] = sum
		}
	}
	out.Requests = sum
	out.Bytes = o.bytes.Load()
	out.Errors = o.errors.Load()
	out.Latency = time.Duration(o.nanos.Load())
	return out
}
