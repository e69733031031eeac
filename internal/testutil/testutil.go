// Package testutil holds helpers shared by tharsis's tests: the rule for
// tests that need an outside tool or root, free loopback ports, and waiting
// on a condition with a deadline.
package testutil

import (
	"net"
	"os"
	"os/exec"
	"testing"
	"time"
)

// RequirePeers reports whether tests must fail, rather than skip, when a
// peer tool, root or a network namespace is missing (CI sets
// THARSIS_REQUIRE_PEERS=1).
func RequirePeers() bool { return os.Getenv("THARSIS_REQUIRE_PEERS") == "1" }

// Unavailable skips the test with why, or fails it when peers are required.
func Unavailable(t testing.TB, why string) {
	t.Helper()
	if RequirePeers() {
		t.Fatalf("%s (THARSIS_REQUIRE_PEERS=1: not skipping)", why)
	}
	t.Skip(why)
}

// NeedTool returns the path of the named program, or skips/fails the test.
func NeedTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Unavailable(t, name+" is not installed (scripts/test.sh installs it)")
	}
	return p
}

// NeedRoot skips/fails the test unless it runs as root.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "needs root (network namespaces, raw sockets, mounts)")
	}
}

// FreePort returns a TCP address on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// WaitFor polls cond until it returns true or the deadline passes, in which
// case the test fails with what.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for delay := time.Millisecond; ; delay = min(delay*2, 100*time.Millisecond) {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(delay)
	}
}

// WaitListening waits until something accepts TCP connections on addr.
func WaitListening(t testing.TB, addr string, timeout time.Duration) {
	t.Helper()
	WaitFor(t, timeout, "a listener on "+addr, func() bool {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			c.Close()
			return true
		}
		return false
	})
}
