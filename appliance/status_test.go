package appliance

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tharsis/tharsis/config"
	"github.com/tharsis/tharsis/internal/testutil"
)

// dupHandler fails the test on a log record that carries an attribute key
// twice (its own or from the logger's With).
type dupHandler struct {
	t     *testing.T
	mu    *sync.Mutex
	dups  *[]string
	attrs []string
}

func (h dupHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h dupHandler) Handle(_ context.Context, r slog.Record) error {
	keys := slices.Clone(h.attrs)
	r.Attrs(func(a slog.Attr) bool { keys = append(keys, a.Key); return true })
	seen := map[string]bool{}
	for _, k := range keys {
		if seen[k] {
			h.mu.Lock()
			*h.dups = append(*h.dups, fmt.Sprintf("%q carries %s twice (keys %v)", r.Message, k, keys))
			h.mu.Unlock()
		}
		seen[k] = true
	}
	return nil
}

func (h dupHandler) WithAttrs(as []slog.Attr) slog.Handler {
	for _, a := range as {
		h.attrs = append(slices.Clip(h.attrs), a.Key)
	}
	return h
}

func (h dupHandler) WithGroup(string) slog.Handler { return h }

// TestPairViewAndLogs runs a primary and a secondary in this process: the
// secondary syncs, the view on each node shows both consistent and caught
// up with current statuses, and no log line repeats an attribute.
func TestPairViewAndLogs(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"alpha.img", "beta.img"} {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(filepath.Join(dir, n), 16<<20); err != nil {
			t.Fatal(err)
		}
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	if err := os.WriteFile(filepath.Join(dir, "secret"), secret, 0o600); err != nil {
		t.Fatal(err)
	}
	doc := fmt.Sprintf(`
secret_file = "secret"
[nodes.alpha]
replication = %q
state_dir = "alpha"
[nodes.beta]
replication = %q
state_dir = "beta"
[resources.r0]
disk = { alpha = "alpha.img", beta = "beta.img" }
primary = "alpha"
`, testutil.FreePort(t), testutil.FreePort(t))
	cfg, err := config.Parse("t.toml", []byte(doc), dir)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var dups []string
	log := slog.New(dupHandler{t: t, mu: &mu, dups: &dups})
	nodes := map[string]*Daemon{}
	for _, name := range []string{"alpha", "beta"} {
		d, err := New(Options{Config: cfg, Node: name, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		ready, done := make(chan struct{}), make(chan error, 1)
		go func() { done <- d.Run(ctx, func(*Daemon) { close(ready) }) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("daemon %s: %v", name, err)
			}
		})
		nodes[name] = d
		select {
		case <-ready:
		case err := <-done:
			t.Fatalf("daemon %s did not start: %v", name, err)
		case <-time.After(30 * time.Second):
			t.Fatalf("daemon %s not ready after 30s", name)
		}
	}
	for _, name := range []string{"alpha", "beta"} {
		testutil.WaitFor(t, 60*time.Second, name+"'s view to show both nodes consistent and caught up", func() bool {
			st := nodes[name].Status()
			v := NewView(&st, 0)
			if len(v.Resources) != 1 || len(v.Resources[0].Nodes) != 2 {
				return false
			}
			r := v.Resources[0]
			ok := r.DesignatedPrimary == "alpha" && r.PrimaryReachable && r.PrimaryLogEnd != nil
			for _, n := range r.Nodes {
				ok = ok && n.DiskState == DiskConsistent && n.BehindBytes == 0 && !n.Stale && n.Reachable
			}
			return ok
		})
	}
	mu.Lock()
	defer mu.Unlock()
	for _, d := range dups {
		t.Error(d)
	}
}
