package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tharsis/tharsis/aoe"
	"github.com/tharsis/tharsis/appliance"
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

// demoRepl returns a --replication value of two free loopback ports.
func demoRepl(t *testing.T) string { return testutil.FreePort(t) + "," + testutil.FreePort(t) }

// viewJSON returns `tharsis view --json --raw` (the daemon's status) of a node.
func viewJSON(t *testing.T, cfg, node string) *appliance.Status {
	t.Helper()
	out, err := tharsis("view", "--json", "--raw", "--config", cfg, "--node", node).Output()
	if err != nil {
		t.Fatalf("tharsis view --json --node %s: %v", node, err)
	}
	var st appliance.Status
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("view --json is not a Status: %v\n%s", err, out)
	}
	return &st
}

// TestDemoNBD runs the demo (primary + secondary), reads the export with
// nbdinfo, writes through it with nbdcopy and waits until the write reached
// the secondary's disk byte for byte.
func TestDemoNBD(t *testing.T) {
	nbdinfo := testutil.NeedTool(t, "nbdinfo")
	nbdcopy := testutil.NeedTool(t, "nbdcopy")
	addr := testutil.FreePort(t)
	dir := t.TempDir()
	cmd, out := startDemo(t, "--no-aoe", "--listen", addr, "--size", "64MiB", "--dir", dir, "--replication", demoRepl(t))
	uri := "nbd://" + addr + "/demo"
	if !strings.Contains(out, "nbdinfo "+uri) {
		t.Errorf("demo does not print how to connect with nbdinfo (%s):\n%s", uri, out)
	}
	info, err := exec.Command(nbdinfo, uri).CombinedOutput()
	if err != nil || !strings.Contains(string(info), "export-size: 67108864") {
		t.Fatalf("nbdinfo %s: %v\n%s", uri, err, info)
	}
	// Write 8 MiB of random data through the export.
	data := make([]byte, 8<<20)
	rand.Read(data)
	src := filepath.Join(t.TempDir(), "rand")
	os.WriteFile(src, data, 0o600)
	if out, err := exec.Command(nbdcopy, src, uri).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy to the export: %v\n%s", err, out)
	}
	cfg := filepath.Join(dir, "tharsis.toml")
	want := viewJSON(t, cfg, "alpha").Resources[0].Replication.End.Seq
	testutil.WaitFor(t, 60*time.Second, "the secondary to replay the primary's log", func() bool {
		r := viewJSON(t, cfg, "beta").Resources[0].Replication
		return r != nil && r.Consistent && r.Applied.Seq >= want
	})
	view, _ := tharsis("view", "--config", cfg, "--node", "beta").CombinedOutput()
	if !strings.Contains(string(view), "alpha") || !strings.Contains(string(view), "beta") {
		t.Errorf("view of beta does not show both nodes:\n%s", view)
	}
	beta, err := os.ReadFile(filepath.Join(dir, "beta.img"))
	if err != nil || !bytes.Equal(beta[:len(data)], data) {
		t.Fatalf("the secondary's disk does not hold the write (err %v)\nview:\n%s", err, view)
	}
	stopDemo(t, cmd)
}

// TestDemoAoE checks that the demo, run as root, exports e1.1 on its veth
// pair and that discovery from the other end finds it.
func TestDemoAoE(t *testing.T) {
	testutil.NeedRoot(t)
	testutil.NeedTool(t, "ip")
	cmd, out := startDemo(t, "--no-secondary", "--listen", testutil.FreePort(t), "--size", "64MiB")
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
