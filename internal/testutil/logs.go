package testutil

import (
	"context"
	"log/slog"
	"strings"
	"sync"
)

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
