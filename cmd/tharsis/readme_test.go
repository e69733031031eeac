package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tharsis/tharsis/internal/testutil"
)

// readmeCommands returns the shell commands of the README's "Two commands"
// section, in order.
func readmeCommands(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(b), "\n## Two commands\n")
	if !ok {
		t.Fatal(`README.md has no "## Two commands" section`)
	}
	sec, _, _ = strings.Cut(sec, "\n## ")
	var cmds []string
	in := false
	for _, l := range strings.Split(sec, "\n") {
		switch {
		case strings.HasPrefix(l, "```"):
			in = !in
		case in && strings.TrimSpace(l) != "":
			cmds = append(cmds, l)
		}
	}
	return cmds
}

// TestReadmeCommands: the README's two commands are the demo and exactly
// what CI runs.
func TestReadmeCommands(t *testing.T) {
	cmds := readmeCommands(t)
	ci, err := os.ReadFile("../../.ci/run")
	if err != nil {
		t.Fatal(err)
	}
	if len(cmds) != 2 || cmds[0] != "bash scripts/demo.sh" || !strings.Contains(string(ci), "\nexec "+cmds[1]+"\n") {
		t.Errorf("README commands %q; want the demo and .ci/run's command:\n%s", cmds, ci)
	}
}

// lockedBuffer collects a child's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestReadmeDemo runs the README's demo command exactly as printed, as
// root with a PATH on which sudo only records that it was called, in a
// network namespace of its own (its fixed ports and veth pair stay there).
// It waits for the banner, checks the start logged no WARN or ERROR and
// that the files the banner names exist, runs every command line of the
// banner as printed (but those loading kernel modules) in that namespace,
// then stops the demo with Ctrl-C.
func TestReadmeDemo(t *testing.T) {
	testutil.NeedRoot(t)
	for _, tool := range []string{"unshare", "nsenter", "ip", "nbdinfo", "nbdcopy", "qemu-img"} {
		testutil.NeedTool(t, tool)
	}
	demo := readmeCommands(t)[0]
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	shim := t.TempDir()
	sudoCalled := filepath.Join(shim, "sudo-called")
	os.WriteFile(filepath.Join(shim, "sudo"), []byte("#!/bin/sh\necho \"sudo $*\" >> "+sudoCalled+"\nexit 1\n"), 0o755)
	env := []string{"PATH=" + shim + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "PATH" && k != "THARSIS_TEST_MAIN" && !strings.HasPrefix(k, "SUDO_") {
			env = append(env, kv)
		}
	}

	cmd := exec.Command("unshare", "--net", "--", "bash", "-c", `ip link set lo up && exec bash -c "$0"`, demo)
	cmd.Dir, cmd.Env = root, env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var logs lockedBuffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	exited := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	})
	banner := make(chan string, 1)
	go func() {
		var b strings.Builder
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			b.WriteString(sc.Text() + "\n")
			if strings.HasPrefix(sc.Text(), "Press Ctrl-C") {
				banner <- b.String()
			}
		}
	}()
	var out string
	select {
	case out = <-banner:
	case <-exited:
		t.Fatalf("%s exited (%v) before it was ready\nlogs:\n%s", demo, waitErr, logs.String())
	case <-time.After(5 * time.Minute): // it builds the binary first
		t.Fatalf("%s not ready after 5 minutes\nlogs:\n%s", demo, logs.String())
	}
	if l := logs.String(); strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
		t.Errorf("the demo's start logged warnings or errors:\n%s", l)
	}

	// Where each node's disk and state live, and that they do.
	nodeLine := regexp.MustCompile(`(?m)^node (alpha|beta) \((primary|secondary)\): disk (/\S+); state in (/\S+) \(transaction log in (/\S+)\)$`)
	nodes := nodeLine.FindAllStringSubmatch(out, -1)
	if len(nodes) != 2 {
		t.Errorf("the banner does not say where both nodes' disks and state are:\n%s", out)
	}
	for _, m := range nodes {
		for _, p := range m[3:] {
			if _, err := os.Stat(p); err != nil {
				t.Errorf("node %s: %v", m[1], err)
			}
		}
	}

	ns := "--net=/proc/" + strconv.Itoa(cmd.Process.Pid) + "/ns/net"
	ran := 0
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, "  ") || strings.HasPrefix(line, "   ") {
			continue
		}
		line = strings.TrimSpace(line)
		if strings.Contains(line, "modprobe") || strings.Contains(line, "nbd-client") {
			continue // loads a kernel module or takes a host's /dev/nbd0
		}
		if strings.Contains(line, "tharsis ") && !strings.HasPrefix(line, "/") {
			t.Errorf("banner command does not name the binary by its absolute path: %s", line)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		c := exec.CommandContext(ctx, "nsenter", ns, "--", "bash", "-c", line)
		c.Env, c.Dir = env, t.TempDir()
		res, err := c.CombinedOutput()
		cancel()
		ran++
		if err != nil {
			t.Errorf("banner command failed as printed: %s\n%v\n%s", line, err, res)
			continue
		}
		if strings.Contains(line, "sha256sum") {
			sums := regexp.MustCompile(`\b[0-9a-f]{64}\b`).FindAllString(string(res), -1)
			if len(sums) != 2 || sums[0] != sums[1] {
				t.Errorf("%s: what was read back differs from what was written:\n%s", line, res)
			}
		}
		if strings.Contains(line, " view ") && !strings.Contains(string(res), "alpha") {
			t.Errorf("%s shows no node alpha:\n%s", line, res)
		}
	}
	if ran < 7 {
		t.Errorf("ran %d banner commands, want at least 7 (NBD, view of both nodes, pause-replay, aoe-stat):\n%s", ran, out)
	}
	if b, err := os.ReadFile(sudoCalled); err == nil {
		t.Errorf("sudo was called as root:\n%s", b)
	}

	cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-exited:
		if waitErr != nil {
			t.Fatalf("demo exited with %v after Ctrl-C\nlogs:\n%s", waitErr, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("demo still running 30s after Ctrl-C")
	}
	for _, m := range nodes {
		if _, err := os.Stat(filepath.Dir(m[3])); !os.IsNotExist(err) {
			t.Errorf("the demo's directory %s is still there after it stopped (%v)", filepath.Dir(m[3]), err)
		}
	}
}
