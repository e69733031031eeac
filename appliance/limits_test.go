package appliance

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/tharsis/tharsis/config"
	"github.com/tharsis/tharsis/internal/netlimit"
	"github.com/tharsis/tharsis/internal/testutil"
)

// Tests of the [limits] as the daemon applies them: one NBD payload budget
// for all listeners, connection caps, the control socket's idle timeout and
// the replication listener's authentication deadline.

// oneNode is a config of node alpha alone, with resource r0 unreplicated
// on r0.img.
const oneNode = `
[nodes.alpha]
replication = "127.0.0.1:1"
state_dir = "state"
[resources.r0]
disk = { alpha = "r0.img" }
replicated = false
`

// startDaemon writes doc (with disks of 64 MiB for the names in disks) to a
// temporary directory, runs node alpha of it in this process and returns
// the running daemon; it stops at the end of the test.
func startDaemon(t *testing.T, doc string, disks ...string) *Daemon {
	t.Helper()
	dir := t.TempDir()
	for _, name := range disks {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, 64<<20); err != nil {
			t.Fatal(err)
		}
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	if err := os.WriteFile(filepath.Join(dir, "secret"), secret, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse("t.toml", []byte(doc), dir)
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Options{Config: cfg, Node: "alpha", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() { done <- d.Run(ctx, func(*Daemon) { close(ready) }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("daemon did not start: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("daemon not ready after 30s")
	}
	return d
}

// nbdOpen connects to an NBD listener and chooses export name with
// NBD_OPT_GO (fixed newstyle, no structured replies).
func nbdOpen(t *testing.T, addr, name string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	if _, err := io.ReadFull(br, make([]byte, 18)); err != nil {
		t.Fatalf("greeting: %v", err)
	}
	b := binary.BigEndian.AppendUint32(nil, 3) // FIXED_NEWSTYLE | NO_ZEROES
	b = binary.BigEndian.AppendUint64(b, 0x49484156454f5054)
	b = binary.BigEndian.AppendUint32(b, 7) // NBD_OPT_GO
	b = binary.BigEndian.AppendUint32(b, uint32(4+len(name)+2))
	b = binary.BigEndian.AppendUint32(b, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, 0)
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	for {
		var h [20]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			t.Fatalf("GO reply: %v", err)
		}
		typ, n := binary.BigEndian.Uint32(h[12:]), binary.BigEndian.Uint32(h[16:])
		if _, err := io.CopyN(io.Discard, br, int64(n)); err != nil {
			t.Fatal(err)
		}
		if typ == 1 { // NBD_REP_ACK
			break
		}
		if typ&(1<<31) != 0 {
			t.Fatalf("GO %q refused (%#x)", name, typ)
		}
	}
	c.SetDeadline(time.Time{})
	return c
}

// TestDaemonNBDLimits: the NBD listeners of one daemon share nbd_memory;
// eight clients stalled in 32 MiB writes hold no more than it; each listener
// closes connections over nbd_max_connections at once; real clients still
// work afterwards.
func TestDaemonNBDLimits(t *testing.T) {
	a, b := testutil.FreePort(t), testutil.FreePort(t)
	d := startDaemon(t, oneNode+`[[exports.nbd]]
resource = "r0"
listen = "`+a+`"
[[exports.nbd]]
resource = "r0"
listen = "`+b+`"
[limits]
nbd_memory = "64MiB"
nbd_max_connections = 4
`, "r0.img")
	d.expMu.Lock()
	la, lb := d.nbd[a], d.nbd[b]
	d.expMu.Unlock()
	mem := la.srv.Memory
	if mem == nil || lb.srv.Memory != mem || mem.Size() != 64<<20 {
		t.Fatalf("listeners' budgets %p and %p, want one of 64 MiB", mem, lb.srv.Memory)
	}

	const size = 32 << 20
	payload := make([]byte, size-1)
	hdr := make([]byte, 28)
	binary.BigEndian.PutUint32(hdr, 0x25609513)
	binary.BigEndian.PutUint16(hdr[6:], 1) // WRITE
	binary.BigEndian.PutUint32(hdr[24:], size)
	base := testutil.HeapAfterGC()
	var wg sync.WaitGroup
	var conns []net.Conn
	for _, addr := range []string{a, b} {
		for range 4 {
			c := nbdOpen(t, addr, "r0")
			conns = append(conns, c)
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := c.Write(hdr); err == nil {
					c.Write(payload) // blocks until read, or fails at close
				}
			}()
		}
		over, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		testutil.ClosedByPeer(t, over, "a fifth NBD connection on "+addr)
		over.Close()
	}
	testutil.WaitFor(t, 20*time.Second, "the budget spent", func() bool { return mem.InUse() == mem.Size() })
	held := testutil.HeapAfterGC()
	t.Logf("8 partial 32 MiB writes on two listeners: heap %d MiB above the start, budget %d MiB", int64(held-base)>>20, mem.Size()>>20)
	if held > base+uint64(mem.Size())+(24<<20) {
		t.Errorf("heap grew by %d MiB, budget %d MiB + 24 MiB slack", (held-base)>>20, mem.Size()>>20)
	}
	for _, c := range conns {
		c.Close()
	}
	wg.Wait()
	runtime.KeepAlive(payload)
	testutil.WaitFor(t, 20*time.Second, "the budget given back", func() bool { return mem.InUse() == 0 })

	nbdcopy := testutil.NeedTool(t, "nbdcopy")
	src := filepath.Join(t.TempDir(), "src.img")
	data := make([]byte, 16<<20)
	rand.Read(data)
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	uri := "nbd://" + a + "/r0"
	if out, err := exec.Command(nbdcopy, "--no-extents", "--connections=4", src, uri).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy to the export: %v\n%s", err, out)
	}
	back := filepath.Join(t.TempDir(), "back.img")
	if out, err := exec.Command(nbdcopy, "--no-extents", "--connections=4", "nbd://"+b+"/r0", back).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy from the export: %v\n%s", err, out)
	}
	got, err := os.ReadFile(back)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got[:len(data)]) != sha256.Sum256(data) {
		t.Fatal("data read back differs from what nbdcopy wrote")
	}
}

// TestControlLimits: an idle keep-alive connection to the control socket is
// closed after control_idle_timeout, connections over
// control_max_connections are closed at once, and the CLI's client still
// gets through.
func TestControlLimits(t *testing.T) {
	d := startDaemon(t, oneNode+`[limits]
control_max_connections = 2
control_idle_timeout = "300ms"
`, "r0.img")
	sock := d.node.Control
	var kept []net.Conn
	for range 2 {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		io.WriteString(c, "GET /v0/status HTTP/1.1\r\nHost: tharsis\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("status over a keep-alive connection: %v", err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Close {
			t.Fatalf("status: %s, close %v", resp.Status, resp.Close)
		}
		kept = append(kept, c)
	}
	over, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer over.Close()
	testutil.ClosedByPeer(t, over, "a third control connection")
	gate := d.control.ln.(*netlimit.Listener).Gate()
	if n := gate.Open(); n != 2 {
		t.Fatalf("%d control connections open after the refusal, want 2", n)
	}
	start := time.Now()
	for _, c := range kept {
		testutil.ClosedByPeer(t, c, "an idle keep-alive control connection")
	}
	t.Logf("idle keep-alive connections closed %v after the last request", time.Since(start).Round(time.Millisecond))
	testutil.WaitFor(t, 10*time.Second, "the places given back", func() bool { return gate.Open() == 0 })
	cl := &Client{Socket: sock}
	for range 5 {
		if _, err := cl.Status(context.Background()); err != nil {
			t.Fatalf("Client.Status: %v", err)
		}
	}
	testutil.WaitFor(t, 10*time.Second, "the client's connections closed", func() bool { return gate.Open() == 0 })
}

// TestReplicationLimits: the replication listener closes connections over
// replication_max_connections at once, and a peer that does not
// authenticate within replication_auth_timeout (shorter than the ship
// server's own 10 s) is closed.
func TestReplicationLimits(t *testing.T) {
	repl := testutil.FreePort(t)
	d := startDaemon(t, `
secret_file = "secret"
[nodes.alpha]
replication = "`+repl+`"
state_dir = "state"
[nodes.beta]
replication = "127.0.0.2:1"
[resources.r0]
disk = { alpha = "r0.img", beta = "/dev/null" }
primary = "alpha"
[limits]
replication_max_connections = 2
replication_auth_timeout = "2s"
`, "r0.img")
	gate := d.shipLn.(*netlimit.Listener).Gate()
	start := time.Now()
	var silent []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", repl)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		silent = append(silent, c)
	}
	testutil.WaitFor(t, 10*time.Second, "two connections admitted", func() bool { return gate.Open() == 2 })
	over, err := net.Dial("tcp", repl)
	if err != nil {
		t.Fatal(err)
	}
	defer over.Close()
	testutil.ClosedByPeer(t, over, "a third replication connection")
	if n := gate.Open(); n != 2 {
		t.Fatalf("%d replication connections open after the refusal, want the 2 silent ones", n)
	}
	for _, c := range silent {
		testutil.ClosedByPeer(t, c, "a peer that does not authenticate")
	}
	if el := time.Since(start); el > 8*time.Second {
		t.Errorf("silent peers closed after %v; replication_auth_timeout is 2s", el)
	}
}
