package main

import (
	"bufio"
	"context"
	"io"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tharsis/tharsis/aoe"
	"github.com/tharsis/tharsis/internal/testutil"
)

// startDemo runs `tharsis demo` with args and returns once it printed its
// help (the exports are serving by then), with the printed text.
func startDemo(t *testing.T, args ...string) (*exec.Cmd, string) {
	t.Helper()
	cmd := tharsis(append([]string{"demo"}, args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	printed := make(chan string, 1)
	go func() {
		var b strings.Builder
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			b.WriteString(sc.Text() + "\n")
			if strings.HasPrefix(sc.Text(), "Press Ctrl-C") {
				printed <- b.String()
				io.Copy(io.Discard, stdout)
				return
			}
		}
		printed <- b.String()
	}()
	select {
	case out := <-printed:
		if !strings.Contains(out, "Press Ctrl-C") {
			t.Fatalf("demo stopped before it was ready:\n%s\nlogs:\n%s", out, logs.String())
		}
		return cmd, out
	case <-time.After(60 * time.Second):
		t.Fatalf("demo not ready after 60s; logs:\n%s", logs.String())
	}
	return nil, ""
}

func stopDemo(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("demo exited with %v after SIGINT", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("demo still running 30s after SIGINT")
	}
}

func TestDemoNBD(t *testing.T) {
	nbdinfo := testutil.NeedTool(t, "nbdinfo")
	addr := testutil.FreePort(t)
	cmd, out := startDemo(t, "--no-aoe", "--listen", addr, "--size", "64MiB")
	uri := "nbd://" + addr + "/demo"
	if !strings.Contains(out, "nbdinfo "+uri) {
		t.Errorf("demo does not print how to connect with nbdinfo (%s):\n%s", uri, out)
	}
	info, err := exec.Command(nbdinfo, uri).CombinedOutput()
	if err != nil || !strings.Contains(string(info), "export-size: 67108864") {
		t.Fatalf("nbdinfo %s: %v\n%s", uri, err, info)
	}
	stopDemo(t, cmd)
}

// TestDemoAoE checks that the demo, run as root, exports e1.1 on its veth
// pair and that discovery from the other end finds it.
func TestDemoAoE(t *testing.T) {
	testutil.NeedRoot(t)
	testutil.NeedTool(t, "ip")
	cmd, out := startDemo(t, "--listen", testutil.FreePort(t), "--size", "64MiB")
	if !strings.Contains(out, "tharsis aoe-stat -i "+demoVethClient) {
		t.Fatalf("demo does not print how to see the AoE target:\n%s", out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	targets, err := aoe.Stat(ctx, []string{demoVethClient}, 2*time.Second)
	if err != nil || len(targets) != 1 || targets[0].Name() != "e1.1" || targets[0].Sectors != 64<<20/512 {
		t.Fatalf("aoe.Stat on %s = %+v, %v; want e1.1 of 64 MiB", demoVethClient, targets, err)
	}
	stopDemo(t, cmd)
	if err := exec.Command("ip", "link", "show", demoVethTarget).Run(); err == nil {
		t.Errorf("demo left its veth pair %s behind", demoVethTarget)
	}
}
