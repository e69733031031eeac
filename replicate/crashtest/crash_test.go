package crashtest

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tharsis/tharsis/replicate/internal/crashmodel"
)

var (
	cycles = flag.Int("cycles", 3, "kill -9 cycles of TestCrashKill9")
	syncOn = flag.Bool("sync", false, "run the daemon with `sync = true` (fdatasync before each acknowledgement); a kill -9 must lose no acknowledged write either way")
	nbdkit = flag.String("nbdkit", "", "self-check of the harness: serve the image with this nbdkit binary instead of tharsis run (TestCrashKill9 only)")
)

const (
	devSize = 16 << 20
	conns   = 4
)

// need skips, or fails when THARSIS_REQUIRE_PEERS=1 (CI).
func need(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("THARSIS_REQUIRE_PEERS") == "1" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	buildDir  string
)

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// tharsis builds cmd/tharsis once per test binary.
func tharsis(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "tharsis-crashtest-")
		if buildErr != nil {
			return
		}
		binPath = filepath.Join(buildDir, "tharsis")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/tharsis/tharsis/cmd/tharsis").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build cmd/tharsis: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// cluster is one node's daemon under test.
type cluster struct {
	t       *testing.T
	bin     string
	dir     string
	cfg     string
	nbdAddr string
	logDir  string
	cmd     *exec.Cmd
	out     *syncBuffer
	exited  chan error
}

func newCluster(t *testing.T, logDir string) *cluster {
	c := &cluster{t: t, dir: t.TempDir()}
	if *nbdkit == "" {
		c.bin = tharsis(t)
	}
	c.cfg = filepath.Join(c.dir, "tharsis.toml")
	c.nbdAddr = freePort(t)
	img := filepath.Join(c.dir, "r0.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(devSize)
	f.Close()
	state := filepath.Join(c.dir, "alpha")
	c.logDir = filepath.Join(state, "r0", "log")
	logLine := fmt.Sprintf("sync = %v\n", *syncOn)
	if logDir != "" {
		c.logDir = logDir
		logLine += fmt.Sprintf("log_dir = %q\n", logDir)
	}
	cfg := fmt.Sprintf(`[nodes.alpha]
replication = %q
state_dir = %q

[resources.r0]
disk = { alpha = %q }
segment_size = "1MiB"
%s
[[exports.nbd]]
resource = "r0"
listen = %q
name = "r0"
`, freePort(t), state, img, logLine, c.nbdAddr)
	if err := os.WriteFile(c.cfg, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.kill)
	return c
}

// start runs `tharsis run` and waits until the export answers.
func (c *cluster) start() {
	c.t.Helper()
	if err := c.startNoWait(); err != nil {
		c.t.Fatal(err)
	}
	started := time.Now()
	deadline := started.Add(30 * time.Second)
	for {
		if *nbdkit == "" && time.Since(started) > 5*time.Second && !c.hasLog() {
			c.kill()
			need(c.t, "tharsis run wrote no transaction log in %s within 5 s: the daemon does not wire replicate.OpenPrimary (or the NBD export) yet", c.logDir)
		}
		n, err := dialNBD(c.nbdAddr, "r0")
		if err == nil {
			n.Close()
			break
		}
		select {
		case err := <-c.exited:
			c.t.Fatalf("tharsis run exited (%v) before serving:\n%s", err, c.out)
		default:
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("NBD export not up after 30 s: %v\n%s", err, c.out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if *nbdkit == "" && !c.hasLog() {
		need(c.t, "tharsis run writes no transaction log in %s: the daemon does not wire replicate.OpenPrimary yet", c.logDir)
	}
}

func (c *cluster) hasLog() bool {
	ents, _ := filepath.Glob(filepath.Join(c.logDir, "log-*"))
	return len(ents) > 0
}

func (c *cluster) startNoWait() error {
	c.out = &syncBuffer{}
	c.cmd = exec.Command(c.bin, "run", "--config", c.cfg, "--node", "alpha")
	if *nbdkit != "" {
		// Self-check of the harness: the same file served by nbdkit.
		_, port, _ := net.SplitHostPort(c.nbdAddr)
		c.cmd = exec.Command(*nbdkit, "-f", "-i", "127.0.0.1", "-p", port, "file", filepath.Join(c.dir, "r0.img"))
	}
	c.cmd.Stdout, c.cmd.Stderr = c.out, c.out
	if err := c.cmd.Start(); err != nil {
		return err
	}
	c.exited = make(chan error, 1)
	cmd := c.cmd
	go func() { c.exited <- cmd.Wait() }()
	return nil
}

// kill sends SIGKILL and waits for the process to be gone.
func (c *cluster) kill() {
	if c.cmd == nil || c.cmd.Process == nil {
		return
	}
	c.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-c.exited:
	case <-time.After(10 * time.Second):
		c.t.Error("tharsis run did not die after SIGKILL")
	}
	c.cmd = nil
}

// stop sends SIGTERM and waits for a clean exit.
func (c *cluster) stop() {
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-c.exited:
		if err != nil {
			c.t.Fatalf("tharsis run exited with %v after SIGTERM:\n%s", err, c.out)
		}
	case <-time.After(20 * time.Second):
		c.t.Fatal("tharsis run did not stop after SIGTERM")
	}
	c.cmd = nil
}

func (c *cluster) dial() *nbdConn {
	c.t.Helper()
	n, err := dialNBD(c.nbdAddr, "r0")
	if err != nil {
		c.t.Fatal(err)
	}
	if n.Size() != devSize {
		c.t.Fatalf("export size %d, want %d", n.Size(), devSize)
	}
	return n
}

// check reads the whole export and checks it against the model.
func (c *cluster) check(m *crashmodel.Model, cs, ce uint64) error {
	n := c.dial()
	defer n.Close()
	return m.Check(func(p []byte, off int64) error { return n.ReadAt(p, off) }, cs, ce)
}

// drive writes random ranges from conns connections until ctx ends or a
// connection fails, recording issues and acknowledgements in m.
func drive(ctx context.Context, c *cluster, m *crashmodel.Model, seed uint64) *sync.WaitGroup {
	var wg sync.WaitGroup
	for g := range conns {
		n, err := dialNBD(c.nbdAddr, "r0")
		if err != nil {
			c.t.Errorf("dial: %v", err)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer n.Close()
			r := rand.New(rand.NewPCG(seed, uint64(g)))
			for ctx.Err() == nil {
				off, length := m.Random(r, 256) // up to 128 KiB
				w, b := m.Begin(off, length)
				if err := n.WriteAt(b, off, r.IntN(8) == 0); err != nil {
					return // killed
				}
				m.Acked(w)
				if r.IntN(16) == 0 && n.Flush() != nil {
					return
				}
			}
		}()
	}
	return &wg
}

// TestCrashKill9 kills tharsis run at random moments under write load and
// checks after each restart that every acknowledged write reads back and
// nothing else changed.
func TestCrashKill9(t *testing.T) {
	c := newCluster(t, "")
	if *nbdkit != "" {
		c.bin = *nbdkit
	}
	c.start()
	m := crashmodel.New(devSize)
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	total := 0
	for cycle := range *cycles {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		wg := drive(ctx, c, m, uint64(cycle))
		// Let some writes through, then kill at a random moment.
		before := m.Acks()
		deadline := time.Now().Add(10 * time.Second)
		for m.Acks() < before+20 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		time.Sleep(time.Duration(r.IntN(300)) * time.Millisecond) // the random moment, not synchronisation
		cs := m.Now()
		c.kill()
		ce := m.Now()
		cancel()
		wg.Wait()
		acked := m.Acks() - before
		total += acked
		if acked == 0 {
			t.Fatalf("cycle %d: no write was acknowledged", cycle)
		}
		c.start()
		if err := c.check(m, cs, ce); err != nil {
			t.Fatalf("cycle %d (%d writes acknowledged): %v\ndaemon output:\n%s", cycle, acked, err, c.out)
		}
		t.Logf("cycle %d: %d writes acknowledged before SIGKILL, all intact", cycle, acked)
	}
	t.Logf("%d cycles, %d acknowledged writes, none lost", *cycles, total)
}

// TestCrashCorruptSegment flips a byte in the middle of a sealed, applied
// segment of a stopped primary: tharsis run starts and serves every
// acknowledged write, reports the damage once (file, offset, what happens)
// and keeps the damaged segment aside instead of shipping it.
func TestCrashCorruptSegment(t *testing.T) {
	c := newCluster(t, "")
	c.start()
	m := crashmodel.New(devSize)
	ctx, cancel := context.WithCancel(context.Background())
	wg := drive(ctx, c, m, 42)
	deadline := time.Now().Add(20 * time.Second)
	var sealed string
	for sealed == "" && time.Now().Before(deadline) {
		// A sealed segment exists once the first one rotated (1 MiB).
		if _, err := os.Stat(filepath.Join(c.logDir, "log-000000002-alpha")); err == nil {
			sealed = filepath.Join(c.logDir, "log-000000001-alpha")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	wg.Wait()
	if sealed == "" {
		t.Fatal("the log never rotated")
	}
	c.stop()
	at := m.Now()
	b, err := os.ReadFile(sealed)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x5a
	if err := os.WriteFile(sealed, b, 0o600); err != nil {
		t.Fatal(err)
	}
	// A start does not read applied segments the segment index lists (rot
	// there is found when they are shipped); without the index it reads
	// and checks every one.
	if err := os.Remove(filepath.Join(c.logDir, "segments.json")); err != nil {
		t.Fatal(err)
	}
	c.start()
	if err := c.check(m, at, at); err != nil {
		t.Fatalf("after restart with a damaged applied segment: %v\n%s", err, c.out)
	}
	out := c.out.String()
	for _, s := range []string{"level=ERROR", "the transaction log is damaged", sealed, "offset=", "damaged-log-000000001-alpha"} {
		if !strings.Contains(out, s) {
			t.Errorf("output lacks %q:\n%s", s, out)
		}
	}
	if _, err := os.Stat(filepath.Join(c.logDir, "damaged-log-000000001-alpha")); err != nil {
		t.Errorf("the damaged segment was not kept aside: %v", err)
	}
}

// TestCrashLogFull writes about 13 MiB through a 4 MiB tmpfs log
// directory. With no other node to wait for, the primary deletes applied
// segments the moment an append finds the log full and retries, so every
// write succeeds; acknowledged data survives a kill.
func TestCrashLogFull(t *testing.T) {
	if os.Geteuid() != 0 {
		need(t, "mounting a size-limited tmpfs needs root; run as root")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "tharsis-crashtest", mnt).CombinedOutput(); err != nil {
		need(t, "mount -t tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })
	c := newCluster(t, filepath.Join(mnt, "log"))
	c.start()
	n := c.dial()
	defer n.Close()
	m := crashmodel.New(devSize)
	r := rand.New(rand.NewPCG(5, 6))
	for i := range 200 {
		off, length := m.Random(r, 256)
		w, b := m.Begin(off, length)
		if err := n.WriteAt(b, off, false); err != nil {
			t.Fatalf("write %d on a full log with nothing to wait for: %v\n%s", i, err, c.out)
		}
		m.Acked(w)
	}
	if !strings.Contains(c.out.String(), "the log filesystem was full: deleted the segments every node has replayed") {
		t.Errorf("the log never filled up, or no segment was deleted:\n%s", c.out)
	}
	// Acknowledged data survives a kill after all this.
	cs := m.Now()
	n.Close()
	c.kill()
	c.start()
	if err := c.check(m, cs, cs); err != nil {
		t.Fatalf("after restart: %v\n%s", err, c.out)
	}
}

// syncBuffer collects the daemon's output; tests read it while the daemon
// runs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
