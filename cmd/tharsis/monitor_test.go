package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tharsis/tharsis/appliance"
	"github.com/tharsis/tharsis/internal/testutil"
)

var defaultLimits = checkLimits{warnBytes: 64 << 20, warnSeconds: 60}

func TestCheckStates(t *testing.T) {
	states := viewStates()
	for _, c := range []struct {
		state string
		lim   checkLimits
		code  int
		want  string
	}{
		{"consistent", defaultLimits, checkOK, "THARSIS OK - demo: primary alpha, 2 nodes, at most 0 B behind | 'demo/alpha_behind'=0B;67108864;;0;"},
		{"syncing", defaultLimits, checkWarning, "THARSIS WARNING - demo/beta syncing (25%)"},
		{"paused", defaultLimits, checkWarning, "THARSIS WARNING - demo/beta fetch+replay paused"},
		{"disconnected", defaultLimits, checkWarning, "THARSIS WARNING - demo/beta unreachable for 45s |"},
		{"disconnected", checkLimits{warnBytes: 1 << 20}, checkWarning, "demo/beta 8.0 MiB behind"},
		{"disconnected", checkLimits{warnBytes: 1 << 20, critBytes: 4 << 20}, checkCritical, "THARSIS CRITICAL - demo/beta unreachable for 45s, demo/beta 8.0 MiB behind"},
		{"disconnected", checkLimits{critSeconds: 30}, checkCritical, "demo/beta 45s behind"},
		{"stale", defaultLimits, checkWarning, "THARSIS WARNING - demo/beta status 25s old"},
		{"split-brain", defaultLimits, checkCritical, "THARSIS CRITICAL - demo: SPLIT BRAIN between alpha and beta"},
		{"emergency", defaultLimits, checkCritical, "THARSIS CRITICAL - demo: EMERGENCY"},
		{"primary-unreachable", defaultLimits, checkCritical, "THARSIS CRITICAL - demo: primary alpha unreachable"},
	} {
		code, line := judge(appliance.NewView(states[c.state], appliance.DefaultStaleAfter), c.lim)
		if code != c.code || !strings.Contains(line, c.want) {
			t.Errorf("%s %+v: exit %d, %q; want exit %d and %q", c.state, c.lim, code, line, c.code, c.want)
		}
		if strings.Count(line, "\n") > 0 || !strings.HasPrefix(line, "THARSIS "+checkNames[c.code]+" - ") {
			t.Errorf("%s: not one status line: %q", c.state, line)
		}
	}
	// Inconsistent without a sync running: CRITICAL.
	st := viewStates()["syncing"]
	st.Peers[0].Status.Resources[0].Sync = nil
	if code, line := judge(appliance.NewView(st, 0), defaultLimits); code != checkCritical || !strings.Contains(line, "demo/beta inconsistent") {
		t.Errorf("inconsistent secondary: exit %d, %q; want CRITICAL", code, line)
	}
}

// runCheckCmd runs `tharsis check` and returns its exit code and output.
func runCheckCmd(t *testing.T, args ...string) (int, string) {
	t.Helper()
	cmd := tharsis(append([]string{"check"}, args...)...)
	out, err := cmd.Output()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), strings.TrimSpace(string(out))
}

func TestCheckUnknown(t *testing.T) {
	code, out := runCheckCmd(t, "--socket", filepath.Join(t.TempDir(), "none.sock"))
	if code != checkUnknown || !strings.HasPrefix(out, "THARSIS UNKNOWN - no tharsis daemon answers") {
		t.Errorf("no daemon: exit %d, %q; want 3, THARSIS UNKNOWN", code, out)
	}
	code, out = runCheckCmd(t, "--warn-lag", "lots")
	if code != checkUnknown || !strings.HasPrefix(out, "THARSIS UNKNOWN - bad --warn-lag") {
		t.Errorf("bad flag: exit %d, %q; want 3, THARSIS UNKNOWN", code, out)
	}
}

// TestCheckLive runs the demo (primary alpha, secondary beta) and checks
// `tharsis check` on the live pair: OK once beta is consistent, WARNING
// while beta's replay is paused, CRITICAL once no node is primary.
func TestCheckLive(t *testing.T) {
	dir := t.TempDir()
	cmd, _ := startDemo(t, "--no-aoe", "--listen", testutil.FreePort(t), "--size", "64MiB", "--dir", dir, "--replication", demoRepl(t))
	cfg := filepath.Join(dir, "tharsis.toml")
	on := func(node string, args ...string) []string { return append(args, "--config", cfg, "--node", node) }
	var code int
	var out string
	testutil.WaitFor(t, 60*time.Second, "check to say OK", func() bool {
		code, out = runCheckCmd(t, on("alpha")...)
		return code == checkOK
	})
	if !strings.Contains(out, "demo: primary alpha, 2 nodes") || !strings.Contains(out, "'demo/beta_behind'=") {
		t.Errorf("check on a healthy pair: %q", out)
	}

	if out, err := tharsis(on("beta", "pause-replay", "demo")...).CombinedOutput(); err != nil {
		t.Fatalf("pause-replay: %v\n%s", err, out)
	}
	testutil.WaitFor(t, 30*time.Second, "check to warn about the paused replay", func() bool {
		code, out = runCheckCmd(t, on("alpha", "demo")...)
		return code == checkWarning && strings.Contains(out, "demo/beta replay paused")
	})

	if out, err := tharsis(on("alpha", "secondary", "demo")...).CombinedOutput(); err != nil {
		t.Fatalf("secondary on alpha: %v\n%s", err, out)
	}
	testutil.WaitFor(t, 30*time.Second, "check to say CRITICAL without a primary", func() bool {
		code, out = runCheckCmd(t, on("beta")...)
		return code == checkCritical && strings.Contains(out, "demo: no designated primary")
	})
	stopDemo(t, cmd)
}
