package nbd

import (
	"testing"

	"github.com/tharsis/tharsis/blockdev"
)

// TestExportStats checks that every request is counted in its export's
// Stats by the time the client has its reply: payload bytes of reads and
// writes, failures, and the other operations.
func TestExportStats(t *testing.T) {
	st := new(blockdev.Stats)
	l := startServer(t, newServer(),
		Export{Name: "counted", Device: blockdev.NewMemory(1 << 20), Stats: st},
		Export{Name: "other", Device: blockdev.NewMemory(1 << 20)})
	k := dial(t, l)
	k.open("counted", true)
	other := dial(t, l)
	other.open("other", false)

	for i := range 3 {
		if r := k.do(cmdWrite, 0, uint64(i), uint64(i)*8192, 8192, pattern(8192, byte(i))); r.errno != 0 {
			t.Fatalf("write: %v", r)
		}
	}
	if r := k.do(cmdRead, 0, 10, 0, 4096, nil); r.errno != 0 {
		t.Fatalf("read: %v", r)
	}
	if r := k.do(cmdFlush, 0, 11, 0, 0, nil); r.errno != 0 {
		t.Fatalf("flush: %v", r)
	}
	if r := k.do(cmdTrim, 0, 12, 0, 4096, nil); r.errno != 0 {
		t.Fatalf("trim: %v", r)
	}
	if r := k.do(cmdWrite, 0, 13, 1<<20, 512, make([]byte, 512)); r.errno == 0 {
		t.Fatal("a write past the end succeeded")
	}
	// Requests on an export without Stats are not counted anywhere.
	if r := other.do(cmdWrite, 0, 14, 0, 4096, make([]byte, 4096)); r.errno != 0 {
		t.Fatalf("write to other: %v", r)
	}

	w := st.Load(blockdev.OpWrite)
	if w.Requests != 4 || w.Bytes != 3*8192 || w.Errors != 1 {
		t.Errorf("writes: %d requests, %d bytes, %d errors; want 4, %d, 1", w.Requests, w.Bytes, w.Errors, 3*8192)
	}
	if w.Latency <= 0 {
		t.Errorf("writes: latency sum %v, want > 0", w.Latency)
	}
	if r := st.Load(blockdev.OpRead); r.Requests != 1 || r.Bytes != 4096 || r.Errors != 0 {
		t.Errorf("reads: %+v, want 1 request of 4096 bytes", r)
	}
	for _, op := range []blockdev.Op{blockdev.OpFlush, blockdev.OpTrim} {
		if got := st.Load(op); got.Requests != 1 || got.Bytes != 0 {
			t.Errorf("%v: %d requests, %d bytes; want 1, 0", op, got.Requests, got.Bytes)
		}
	}
	if got := st.Load(blockdev.OpWriteZeroes); got.Requests != 0 {
		t.Errorf("write_zeroes: %d requests, want 0", got.Requests)
	}
}
