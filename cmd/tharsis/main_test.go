package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tharsis/tharsis/internal/testutil"
)

// TestMain lets the tests run this binary as a child process: with
// THARSIS_TEST_MAIN=1 the test binary is tharsis itself.
func TestMain(m *testing.M) {
	if os.Getenv("THARSIS_TEST_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// tharsis returns a command that runs this binary as tharsis with args.
func tharsis(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "THARSIS_TEST_MAIN=1")
	return cmd
}

// writeConfig writes a one-node config with a 64 MiB resource exported
// over NBD on listen, and returns its path.
func writeConfig(t *testing.T, listen string, extra string) (dir, path string) {
	t.Helper()
	dir = t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "r0.img"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filepath.Join(dir, "r0.img"), 64<<20); err != nil {
		t.Fatal(err)
	}
	cfg := `
[nodes.alpha]
replication = "127.0.0.1:17701"
state_dir = "state"

[resources.r0]
disk = { alpha = "r0.img" }
` + extra + `
[[exports.nbd]]
resource = "r0"
listen = "` + listen + `"
name = "r0"
`
	path = filepath.Join(dir, "tharsis.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, path
}

func TestConfigCheck(t *testing.T) {
	_, good := writeConfig(t, "127.0.0.1:10899", "")
	out, err := tharsis("config", "check", good).CombinedOutput()
	if err != nil {
		t.Fatalf("config check of a valid file: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "r0") {
		t.Errorf("summary does not name the resource:\n%s", out)
	}
	for _, want := range []string{"checked on this host as node alpha", "ok    resource r0: disk", "ok    resource r0: log dir"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("config check output lacks %q:\n%s", want, out)
		}
	}
	// The disk is smaller than the resource: the local check fails.
	_, small := writeConfig(t, "127.0.0.1:10899", "size = \"128MiB\"\n")
	cmd := tharsis("config", "check", small)
	out, _ = cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != 1 || !strings.Contains(string(out), "FAIL  resource r0: disk") || !strings.Contains(string(out), "fewer than the resource's 128 MiB") {
		t.Errorf("config check with a disk smaller than the resource: exit %d\n%s", cmd.ProcessState.ExitCode(), out)
	}

	bad := filepath.Join(t.TempDir(), "bad.toml")
	os.WriteFile(bad, []byte("[nodes.alpha]\nreplicaton = \"x:1\"\n"), 0o600)
	cmd = tharsis("config", "check", bad)
	out, err = cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != 1 {
		t.Fatalf("config check of a bad file: exit %d (err %v), want 1\n%s", cmd.ProcessState.ExitCode(), err, out)
	}
	for _, want := range []string{"bad.toml:2", "replicaton", "did you mean"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("error output lacks %q:\n%s", want, out)
		}
	}
}

// TestRunServesAndStopsOnSIGTERM runs the daemon as a child process, reads
// the export with nbdinfo, then checks SIGTERM drains and exits 0.
func TestRunServesAndStopsOnSIGTERM(t *testing.T) {
	nbdinfo := testutil.NeedTool(t, "nbdinfo")
	addr := testutil.FreePort(t)
	dir, cfg := writeConfig(t, addr, "")
	cmd := tharsis("run", "--config", cfg, "--node", "alpha")
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	testutil.WaitListening(t, addr, 20*time.Second)

	out, err := exec.Command(nbdinfo, "--json", "nbd://"+addr+"/r0").Output()
	if err != nil {
		t.Fatalf("nbdinfo: %v\nlogs:\n%s", err, logs.String())
	}
	var info struct {
		Exports []struct {
			Size int64 `json:"export-size"`
		} `json:"exports"`
	}
	if err := json.Unmarshal(out, &info); err != nil || len(info.Exports) != 1 || info.Exports[0].Size != 64<<20 {
		t.Fatalf("nbdinfo says %s (err %v), want one export of 64 MiB", out, err)
	}
	// The control socket answers `tharsis view`.
	view, err := tharsis("view", "--config", cfg, "--node", "alpha").CombinedOutput()
	if err != nil || !strings.Contains(string(view), "resource r0: primary") {
		t.Errorf("tharsis view: %v\n%s", err, view)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("after SIGTERM: %v\nlogs:\n%s", err, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("daemon still running 30s after SIGTERM\nlogs:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "stopped cleanly") {
		t.Errorf("logs do not say the daemon stopped cleanly:\n%s", logs.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "state", "control.sock")); !os.IsNotExist(err) {
		t.Errorf("control socket left behind after a clean stop (stat: %v)", err)
	}
}
