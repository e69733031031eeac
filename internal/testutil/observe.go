package testutil

import (
	"context"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// What tests observe of the code under test: its log messages, its heap,
// and its end of a connection.

// Logs is a slog.Handler that keeps the message of every record, so a test
// can count what a component logged: slog.New(&testutil.Logs{}).
type Logs struct {
	mu   sync.Mutex
	msgs []string
}

func (h *Logs) Enabled(context.Context, slog.Level) bool { return true }
func (h *Logs) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *Logs) WithGroup(string) slog.Handler            { return h }

func (h *Logs) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.msgs = append(h.msgs, r.Message)
	return nil
}

// Count returns how many messages so far contain substr.
func (h *Logs) Count(substr string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, m := range h.msgs {
		if strings.Contains(m, substr) {
			n++
		}
	}
	return n
}

// HeapAfterGC returns the live heap after two collections (the second frees
// what sync.Pool's victim cache still held).
func HeapAfterGC() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// ClosedByPeer reads c until the other end closes it, failing the test
// (naming what) if that takes more than 20 seconds.
func ClosedByPeer(t testing.TB, c net.Conn, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatalf("%s not closed by its server: %v", what, err)
	}
}
