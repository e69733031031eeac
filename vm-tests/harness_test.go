//go:build vm

package vmtests

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tharsis/tharsis/internal/testutil"
)

const guestMAC = "52:54:00:12:34:56"

var (
	guest      *Guest
	tharsisBin string
	tharsisErr error
	kind       = TargetKind()
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// No qemu is a failure, never a skip: these tests exist to run the real drivers.
	if out, err := exec.CommandContext(ctx, "qemu-system-x86_64", "--version").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: vm-tests: qemu-system-x86_64 cannot start (install qemu-system-x86): %v\n%s\n", err, out)
		return 1
	}
	start := time.Now()
	g, err := BuildGuest(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: vm-tests: building the guest: %v\n", err)
		return 1
	}
	guest = g
	fmt.Fprintf(os.Stderr, "vm-tests: guest kernel %s, initramfs %s (rebuilt=%v, %s), accel=%s, target=%s\n",
		g.KernelVersion, g.Initrd, g.Rebuilt, time.Since(start).Round(time.Millisecond), Accel(), kind)
	if kind == KindTharsis {
		dir, err := os.MkdirTemp("", "tharsis-vm-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		tharsisBin, tharsisErr = BuildTharsis(ctx, dir)
	}
	return m.Run()
}

// scenario is one target + tap + control server, cleaned up with the test.
type scenario struct {
	t      *testing.T
	s      *Setup
	target Target
	ctl    *Control
	boots  []*Result
}

func newScenario(t *testing.T, mtu int, setup func(s *Setup)) *scenario {
	t.Helper()
	testutil.NeedRoot(t)
	switch kind {
	case KindReference:
		testutil.NeedTool(t, "vblade")
		testutil.NeedTool(t, "nbd-server")
	default:
		if tharsisErr != nil {
			testutil.Unavailable(t, "tharsis binary unavailable: "+tharsisErr.Error())
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tap, err := CreateTap(ctx, mtu)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tap.Close(); err != nil {
			t.Errorf("remove tap: %v", err)
		}
	})
	s := &Setup{Dir: t.TempDir(), Tap: tap}
	setup(s)
	if err := s.CreateResources(); err != nil {
		t.Fatal(err)
	}
	ctl, err := NewControl(context.Background(), tap.HostIP)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctl.Close() })
	sc := &scenario{t: t, s: s, ctl: ctl, target: NewTarget(kind, tharsisBin, s)}
	return sc
}

// start starts the target (after the test wrote any initial data).
func (sc *scenario) start() {
	sc.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := sc.target.Start(ctx); err != nil {
		sc.t.Fatalf("start %s target: %v\n--- target output ---\n%s", sc.target.Kind(), err, sc.target.Output())
	}
	sc.t.Cleanup(func() { sc.target.Stop() })
}

// stop stops the target so the host can read the resource files.
func (sc *scenario) stop() {
	sc.t.Helper()
	if err := sc.target.Stop(); err != nil {
		sc.fatalf("stop target: %v", err)
	}
}

// boot runs the guest with script; a guest that does not finish fails the test.
func (sc *scenario) boot(script string, files map[string][]byte) *Result {
	sc.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	r, err := Boot(ctx, BootConfig{Guest: guest, Tap: sc.s.Tap, MAC: guestMAC, Script: script, Files: files,
		Control: sc.ctl, WorkDir: sc.s.Dir})
	sc.boots = append(sc.boots, r)
	sc.t.Logf("guest boot: %s under %s (target %s)", r.Elapsed.Round(100*time.Millisecond), r.Accel, sc.target.Kind())
	if err != nil {
		sc.fatalf("guest: %v", err)
	}
	if v, _ := r.Value("done"); v != "rc=0" {
		sc.fatalf("guest scenario ended with %s", v)
	}
	return r
}

// fatalf fails with the guest console(s), the target's output and the host steps attached.
func (sc *scenario) fatalf(format string, args ...any) {
	sc.t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, format, args...)
	writeConsoles(&b, sc.boots)
	fmt.Fprintf(&b, "\n--- host steps ---\n%s", strings.Join(sc.ctl.Log(), "\n"))
	fmt.Fprintf(&b, "\n--- %s target output ---\n%s", sc.target.Kind(), sc.target.Output())
	sc.t.Fatal(b.String())
}

// writeConsoles appends the console of every boot to a failure report.
func writeConsoles(b *strings.Builder, boots []*Result) {
	for i, r := range boots {
		fmt.Fprintf(b, "\n--- guest console (boot %d, %s, %s) ---\n%s", i+1, r.Accel, r.Elapsed.Round(time.Millisecond), r.Console)
	}
}

// proof logs the marker lines that show a scenario passed.
func (sc *scenario) proof(r *Result, keys ...string) {
	for _, l := range r.Lines(keys...) {
		sc.t.Log(l)
	}
}

// want fails unless the guest printed marker key with exactly value.
func (sc *scenario) want(r *Result, key, value string) {
	sc.t.Helper()
	for _, v := range r.Values(key) {
		if v == value {
			return
		}
	}
	sc.fatalf("guest did not report %q %q (got %q)", key, value, r.Values(key))
}

// wantAoEStat fails unless aoe-stat listed dev with size, eth0, payload and up.
func (sc *scenario) wantAoEStat(r *Result, dev string, size int64, payload int) {
	sc.t.Helper()
	// aoe-stat's own arithmetic: GB with three decimals, truncated.
	gb := fmt.Sprintf("%04d", (512000*(size/512))/(1000*1000*1000))
	want := []string{dev, gb[:len(gb)-3] + "." + gb[len(gb)-3:] + "GB", "eth0", fmt.Sprint(payload), "up"}
	for _, v := range r.Values("aoe-stat") {
		if strings.Join(strings.Fields(v), " ") == strings.Join(want, " ") {
			return
		}
	}
	sc.fatalf("aoe-stat did not list %q (got %q)", strings.Join(want, " "), r.Values("aoe-stat"))
}

func (sc *scenario) readResource(name string, off, n int64) []byte {
	sc.t.Helper()
	f, err := os.Open(sc.s.ResourcePath(name))
	if err != nil {
		sc.t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		sc.t.Fatal(err)
	}
	return b
}

func (sc *scenario) writeResource(name string, off int64, b []byte) {
	sc.t.Helper()
	f, err := os.OpenFile(sc.s.ResourcePath(name), os.O_WRONLY, 0)
	if err != nil {
		sc.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		sc.t.Fatal(err)
	}
}

// checkFS runs e2fsck -fn on a resource and compares files inside it (via
// debugfs) with what the guest was given.
func (sc *scenario) checkFS(resource string, files map[string][]byte) {
	sc.t.Helper()
	img := sc.s.ResourcePath(resource)
	if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
		sc.fatalf("e2fsck -fn %s on the host: %v\n%s", resource, err, out)
	}
	for name, want := range files {
		var out, errb bytes.Buffer
		cmd := exec.Command("debugfs", "-R", "cat "+name, img)
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			sc.fatalf("debugfs cat %s: %v %s", name, err, errb.String())
		}
		if !bytes.Equal(out.Bytes(), want) {
			sc.fatalf("host reads %s in %s: %d bytes sha256 %s, want %d bytes sha256 %s",
				name, resource, out.Len(), shaHex(out.Bytes()), len(want), shaHex(want))
		}
		sc.t.Logf("host: %s in %s matches (%d bytes, sha256 %s)", name, resource, len(want), shaHex(want)[:16])
	}
}

func shaHex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// randBytes returns n deterministic pseudo-random bytes.
func randBytes(seed uint64, n int) []byte {
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 7})
	b := make([]byte, n)
	r.Read(b)
	return b
}

func ptr[T any](v T) *T { return &v }
