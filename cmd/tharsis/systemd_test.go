package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tharsis/tharsis/dist/systemd"
	"github.com/tharsis/tharsis/internal/testutil"
)

// verifyUnit runs systemd-analyze verify on unit (a path; for a template,
// the path of an instance next to it) and returns what it says about it.
// It needs no running systemd. systemd-analyze exits 0 on unknown keys and
// bad values, printing them, so any line naming the unit counts.
func verifyUnit(t *testing.T, analyze, unit string) string {
	t.Helper()
	out, err := exec.Command(analyze, "verify", unit).CombinedOutput()
	var about []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "tharsis@") {
			about = append(about, l)
		}
	}
	if err != nil {
		about = append(about, err.Error())
	}
	return strings.Join(about, "\n")
}

// TestInstallSystemd installs the binary and the unit template into
// temporary directories, checks the unit with systemd-analyze verify, and
// installs again from the installed binary.
func TestInstallSystemd(t *testing.T) {
	analyze := testutil.NeedTool(t, "systemd-analyze")
	dir := t.TempDir()
	bin, units := filepath.Join(dir, "sbin", "tharsis"), filepath.Join(dir, "units")
	out, stderr, code := runTharsis(t, "install-systemd", "--bin", bin, "--unit-dir", units, "--no-reload")
	if code != exitOK || !strings.Contains(out, "installed "+bin) || !strings.Contains(out, "systemctl enable --now tharsis@NODE") {
		t.Fatalf("install-systemd: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, stderr)
	}
	self, _ := os.ReadFile(os.Args[0])
	got, err := os.ReadFile(bin)
	if st, _ := os.Stat(bin); err != nil || !bytes.Equal(got, self) || st.Mode().Perm() != 0o755 {
		t.Fatalf("installed binary differs from this one or is not 0755 (err %v)", err)
	}
	unitPath := filepath.Join(units, systemd.UnitName)
	unit, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.Replace(systemd.Unit, "ExecStart="+systemd.DefaultBinary+" ", "ExecStart="+bin+" ", 1); string(unit) != want {
		t.Fatalf("installed unit is not the template with ExecStart=%s:\n%s", bin, unit)
	}
	for _, want := range []string{"Type=notify", "--node %i", "KillSignal=SIGTERM", "WantedBy=multi-user.target"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("unit lacks %q", want)
		}
	}
	if msg := verifyUnit(t, analyze, filepath.Join(units, "tharsis@alpha.service")); msg != "" {
		t.Errorf("systemd-analyze verify tharsis@alpha.service:\n%s", msg)
	}
	// The check itself catches a broken unit with this systemd-analyze.
	bad := filepath.Join(t.TempDir(), systemd.UnitName)
	os.WriteFile(bad, []byte(strings.Replace(string(unit), "Type=notify", "Type=notfy\nRestartSecs=1", 1)), 0o644)
	if msg := verifyUnit(t, analyze, filepath.Join(filepath.Dir(bad), "tharsis@alpha.service")); !strings.Contains(msg, "notfy") || !strings.Contains(msg, "RestartSecs") {
		t.Errorf("systemd-analyze verify does not report a bad type and an unknown key, it says:\n%s", msg)
	}

	// Again, from the installed binary (which is then itself the target).
	cmd := exec.Command(bin, "install-systemd", "--bin", bin, "--unit-dir", units, "--no-reload")
	cmd.Env = append(os.Environ(), "THARSIS_TEST_MAIN=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("install-systemd from the installed binary: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(bin); !bytes.Equal(got, self) {
		t.Error("installing over itself changed the binary")
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*", ".*")); len(left) > 0 {
		t.Errorf("temporary files left behind: %v", left)
	}
}

// TestRunNotifiesSystemd runs `tharsis run` as systemd would: it must send
// READY=1 to NOTIFY_SOCKET once its export serves, STOPPING=1 on SIGTERM,
// exit 0, and log to the journal stream as logfmt with priorities and no
// time.
func TestRunNotifiesSystemd(t *testing.T) {
	addr := testutil.FreePort(t)
	dir, cfg := writeConfig(t, addr, "")
	sock := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	notes := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(notes)
				return
			}
			notes <- string(buf[:n])
		}
	}()
	// The journal stream: stderr is this file, JOURNAL_STREAM names it.
	logPath := filepath.Join(dir, "journal")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(logf.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	cmd := tharsis("run", "--config", cfg, "--node", "alpha")
	cmd.Env = append(cmd.Env, "NOTIFY_SOCKET="+sock, fmt.Sprintf("JOURNAL_STREAM=%d:%d", st.Dev, st.Ino))
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	logs := func() string { b, _ := os.ReadFile(logPath); return string(b) }

	waitNote := func(want string) string {
		t.Helper()
		deadline := time.After(30 * time.Second)
		for {
			select {
			case n, ok := <-notes:
				if !ok {
					t.Fatalf("notify socket closed before %s", want)
				}
				if strings.Contains(n, want) {
					return n
				}
			case err := <-done:
				t.Fatalf("tharsis run exited (%v) before sending %s\nlogs:\n%s", err, want, logs())
			case <-deadline:
				t.Fatalf("no %s on NOTIFY_SOCKET after 30s\nlogs:\n%s", want, logs())
			}
		}
	}
	ready := waitNote("READY=1")
	if !strings.Contains(ready, "STATUS=node alpha serving") {
		t.Errorf("READY=1 without a STATUS: %q", ready)
	}
	// Ready means serving: the export accepts at once.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("READY=1 sent but the NBD export does not accept: %v", err)
	}
	c.Close()

	cmd.Process.Signal(syscall.SIGTERM)
	waitNote("STOPPING=1")
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("after SIGTERM: %v\nlogs:\n%s", err, logs())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("still running 30s after SIGTERM\nlogs:\n%s", logs())
	}
	l := logs()
	if !strings.Contains(l, "<6>level=INFO msg=\"stopped cleanly\"") || strings.Contains(l, "time=") {
		t.Errorf("journal lines are not logfmt with a priority and without a time:\n%s", l)
	}
	for _, line := range strings.Split(strings.TrimSpace(l), "\n") {
		if !strings.HasPrefix(line, "<") {
			t.Errorf("journal line without a priority: %q", line)
		}
	}
}

func TestJournalHandler(t *testing.T) {
	var b bytes.Buffer
	log := slog.New(newJournalHandler(&b, slog.LevelDebug)).With("resource", "r0")
	log.Error("disk failed", "err", "EIO")
	log.WithGroup("g").Warn("slow", "ms", 12)
	log.Info("ok")
	log.Debug("detail")
	want := `<3>level=ERROR msg="disk failed" resource=r0 err=EIO
<4>level=WARN msg=slow resource=r0 g.ms=12
<6>level=INFO msg=ok resource=r0
<7>level=DEBUG msg=detail resource=r0
`
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}

	f, err := os.Create(filepath.Join(t.TempDir(), "stream"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st syscall.Stat_t
	syscall.Fstat(int(f.Fd()), &st)
	for env, want := range map[string]bool{
		fmt.Sprintf("%d:%d", st.Dev, st.Ino):   true,
		fmt.Sprintf("%d:%d", st.Dev, st.Ino+1): false, // stderr was redirected
		"":                                     false,
		"garbage":                              false,
	} {
		if got := toJournal(f, env); got != want {
			t.Errorf("toJournal(JOURNAL_STREAM=%q) = %v, want %v", env, got, want)
		}
	}
}
