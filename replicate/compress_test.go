package replicate

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tharsis/tharsis/internal/testutil"
	"github.com/tharsis/tharsis/replicate/wire"
)

// writeText writes n blocks of text-like (compressible) data through p.
func writeText(t testing.TB, p *Primary, n int) {
	t.Helper()
	for i := range n {
		b := []byte(strings.Repeat(fmt.Sprintf("block %d: the quick brown fox jumps over the lazy dog\n", i), 2000)[:64<<10])
		if _, err := p.WriteAt(b, int64(i%32)*int64(len(b))); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCompressionNegotiation: the log is shipped compressed exactly when
// the serving node's resource compresses and the fetcher accepts it; a
// node of an older release on either side gets (or sends) it uncompressed,
// and the secondary ends with the primary's data in every case.
func TestCompressionNegotiation(t *testing.T) {
	tests := []struct {
		name         string
		compress     Compression
		oldFetcher   bool // never sends Fetch.Accept
		oldServer    bool // lists no features, refuses Fetch.Accept
		wantCompress bool
	}{
		{"both on", CompressZstd, false, false, true},
		{"server off", CompressOff, false, false, false},
		{"old fetcher", CompressZstd, true, false, false},
		{"old server", CompressZstd, false, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const size = 4 << 20
			a, b := newNode(t, "alpha", size), newNode(t, "beta", size)
			a.srv.noFetchAccept = tt.oldServer
			a.startPrimary(64 << 20)
			a.srv.AddResource("r0", compressedSource{PrimarySource(a.prim), tt.compress})
			writeText(t, a.prim, 64)
			b.beforeRun = func(s *Secondary) { s.noAccept = tt.oldFetcher }
			b.startSecondary(func() []Peer { return []Peer{a.peer()} }, nil)
			waitCaughtUp(t, a.prim, b)
			sameData(t, a, b)
			st := b.sec.Status()
			t.Logf("log %d bytes, wire %d bytes, compression %q", st.FetchLogBytes, st.FetchWireBytes, st.FetchCompression)
			if st.FetchLogBytes < 4<<20 {
				t.Fatalf("fetched %d bytes of log, want the whole log (> 4 MiB)", st.FetchLogBytes)
			}
			if tt.wantCompress {
				if st.FetchCompression != "zstd" || st.FetchWireBytes*4 > st.FetchLogBytes {
					t.Errorf("compression %q, %d wire bytes for %d of log: want zstd, less than a quarter", st.FetchCompression, st.FetchWireBytes, st.FetchLogBytes)
				}
			} else if st.FetchCompression != "" || st.FetchWireBytes != st.FetchLogBytes {
				t.Errorf("compression %q, %d wire bytes for %d of log: want none", st.FetchCompression, st.FetchWireBytes, st.FetchLogBytes)
			}
		})
	}
}

// TestCorruptCompressedFrame: a compressed frame damaged in transit is
// refused with an error that says so, nothing of it is stored, and the
// fetcher reconnects and completes the log.
func TestCorruptCompressedFrame(t *testing.T) {
	const size = 4 << 20
	a, b := newNode(t, "alpha", size), newNode(t, "beta", size)
	var damaged atomic.Int32
	a.srv.mangle = func(m wire.Message) {
		if cm, ok := m.(*wire.CompressedData); ok && damaged.Add(1) == 2 {
			cm.Data[len(cm.Data)/2] ^= 0x55
		}
	}
	a.startPrimary(64 << 20)
	a.srv.AddResource("r0", compressedSource{PrimarySource(a.prim), CompressZstd})
	writeText(t, a.prim, 64)
	b.startSecondary(func() []Peer { return []Peer{a.peer()} }, nil)
	waitCaughtUp(t, a.prim, b)
	sameData(t, a, b)
	if damaged.Load() < 3 {
		t.Errorf("%d compressed frames sent: no frame after the damaged one", damaged.Load())
	}
	testutil.WaitFor(t, 5*time.Second, "the fetch error in the log", func() bool {
		return strings.Contains(b.logBuf.String(), "undecodable compressed segment data")
	})
	if got := strings.Count(b.logBuf.String(), "fetching the log\""); got < 2 {
		t.Errorf("fetched %d times, want a reconnect after the damaged frame", got)
	}
}
