// Package aoetest builds throw-away network namespaces joined by a veth pair
// for AoE tests and benchmarks: the target runs in one namespace, the
// initiator in the other.
package aoetest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/tharsis/tharsis/internal/testutil"
)

// Pair is two network namespaces joined by a veth pair.
type Pair struct {
	TargetNS, InitNS string // namespace names (ip netns)
	TargetIf, InitIf string // interface names inside them
}

// NewPair creates a Pair with the given MTU. It skips the test (or fails it
// when THARSIS_REQUIRE_PEERS=1) unless it runs as root with ip(8), and
// removes everything on cleanup.
func NewPair(t testing.TB, mtu int) *Pair {
	t.Helper()
	need(t)
	p, err := Create(mtu)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Remove)
	return p
}

func need(t testing.TB) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "AoE netns tests need root (ip netns, raw sockets); run them as root"
	} else if _, err := exec.LookPath("ip"); err != nil {
		why = "AoE netns tests need ip(8) from iproute2"
	}
	if why == "" {
		return
	}
	if os.Getenv("THARSIS_REQUIRE_PEERS") == "1" {
		t.Fatal(why + " (THARSIS_REQUIRE_PEERS=1)")
	}
	t.Skip(why)
}

// Create makes a Pair with the given MTU; call Remove to delete it.
func Create(mtu int) (*Pair, error) {
	var r [4]byte
	_, _ = rand.Read(r[:])
	id := hex.EncodeToString(r[:])
	p := &Pair{TargetNS: "aoet-" + id, InitNS: "aoei-" + id, TargetIf: "at" + id, InitIf: "ai" + id}
	cmds := [][]string{
		{"netns", "add", p.TargetNS},
		{"netns", "add", p.InitNS},
		{"link", "add", p.TargetIf, "netns", p.TargetNS, "mtu", fmt.Sprint(mtu), "type", "veth",
			"peer", "name", p.InitIf, "netns", p.InitNS, "mtu", fmt.Sprint(mtu)},
		{"-n", p.TargetNS, "link", "set", p.TargetIf, "up"},
		{"-n", p.InitNS, "link", "set", p.InitIf, "up"},
	}
	for _, c := range cmds {
		if err := ip(c...); err != nil {
			p.Remove()
			return nil, err
		}
	}
	return p, nil
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// SetMTU changes the MTU of both ends.
func (p *Pair) SetMTU(mtu int) error {
	if err := ip("-n", p.TargetNS, "link", "set", p.TargetIf, "mtu", fmt.Sprint(mtu)); err != nil {
		return err
	}
	return ip("-n", p.InitNS, "link", "set", p.InitIf, "mtu", fmt.Sprint(mtu))
}

// Remove deletes the namespaces (and with them the veth pair).
func (p *Pair) Remove() {
	_ = ip("netns", "del", p.TargetNS)
	_ = ip("netns", "del", p.InitNS)
}

// Do runs fn on an OS thread that has entered namespace ns, and waits for
// it; see testutil.InNetns.
func Do(ns string, fn func() error) error { return testutil.InNetns(ns, fn) }

// Command returns cmd set up to run inside namespace ns (ip netns exec).
func Command(ns string, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}
