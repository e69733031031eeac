package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tharsis/tharsis/internal/testutil"
)

// startNode runs `tharsis run` on cfg until the test ends (or stop) and
// waits until addr listens ("": until the control socket answers).
func startNode(t *testing.T, cfg, addr string) (cmd *exec.Cmd, stop func()) {
	t.Helper()
	cmd = tharsis("run", "--config", cfg, "--node", "alpha")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cmd.Process.Signal(os.Interrupt)
			cmd.Wait()
		}
	}
	t.Cleanup(stop)
	if addr != "" {
		testutil.WaitListening(t, addr, 20*time.Second)
		return cmd, stop
	}
	deadline := time.Now().Add(20 * time.Second)
	for tharsis("view", "--config", cfg, "--node", "alpha").Run() != nil {
		if time.Now().After(deadline) {
			t.Fatal("the daemon's control socket did not answer within 20 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return cmd, stop
}

// nbdInfo runs nbdinfo on export r0 at addr.
func nbdInfo(t *testing.T, addr string) (string, error) {
	out, err := exec.Command(testutil.NeedTool(t, "nbdinfo"), "nbd://"+addr+"/r0").CombinedOutput()
	return string(out), err
}

// TestAttachDetachUnreplicated: detach stops an unreplicated resource's
// export and closes its disk, persists across a restart, and attach serves
// again; the refusals say what to do.
func TestAttachDetachUnreplicated(t *testing.T) {
	addr := testutil.FreePort(t)
	dir, cfg := writeConfig(t, addr, "replicated = false\n")
	_, stop := startNode(t, cfg, addr)
	verb := func(args ...string) (string, error) {
		out, err := tharsis(append(args, "--config", cfg, "--node", "alpha")...).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	if out, err := verb("attach", "r0"); err != nil || !strings.Contains(out, "attached already") {
		t.Errorf("attach of an attached resource: %v %s", err, out)
	}
	if out, err := verb("detach", "r0"); err != nil || !strings.Contains(out, "detached") {
		t.Fatalf("detach: %v %s", err, out)
	}
	if out, err := nbdInfo(t, addr); err == nil {
		t.Errorf("nbdinfo of a detached export answered: %s", out)
	}
	if out, err := verb("invalidate", "r0"); err == nil {
		t.Errorf("invalidate of an unreplicated resource succeeded: %s", out)
	}
	if out, err := verb("delete-resource", "r0"); err == nil || !strings.Contains(out, "not replicated") {
		t.Errorf("delete-resource of an unreplicated resource: %v %s", err, out)
	}
	stop()
	if _, err := os.Stat(filepath.Join(dir, "state", "detached-r0")); err != nil {
		t.Fatalf("the detached state did not persist: %v", err)
	}
	startNode(t, cfg, "") // detached: no export listens
	if out, err := nbdInfo(t, addr); err == nil {
		t.Errorf("after a restart the detached export answers: %s", out)
	}
	if out, err := verb("attach", "r0"); err != nil || !strings.Contains(out, "serve again") {
		t.Fatalf("attach: %v %s", err, out)
	}
	if out, err := nbdInfo(t, addr); err != nil {
		t.Errorf("nbdinfo after attach: %v %s", err, out)
	}
}
