package vmtests

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
)

// Segment is one L2 segment shared by the QEMU guest and several tharsis
// nodes: a Linux bridge in the root namespace holding the guest's tap
// device and one veth pair per node, whose other end is NodeDev inside the
// node's own network namespace.
//
//	guest eth0 ── tap ─┐
//	                   ├─ bridge (HostIP: control server, host tools)
//	alpha eth0 ── veth ┤   (netns thvm<pid>-<id>-alpha)
//	beta  eth0 ── veth ┘   (netns thvm<pid>-<id>-beta)
//
// Every link and namespace it creates carries the creating process's PID
// (ifalias, namespace name) so that RemoveLeftovers can clean up after a
// test binary that was killed before its cleanups ran.
type Segment struct {
	ID     string // short hex, unique per segment
	Bridge string
	Tap    *Tap // Name is the tap device; HostIP is the bridge's address
	Prefix string
	Nodes  []*NetNode

	links []string // root-namespace links to delete
}

// NetNode is a node's namespace on a Segment.
type NetNode struct {
	Name  string
	NS    string // network namespace
	IP    string
	MAC   string // of NodeDev
	Index int    // ifindex of NodeDev inside NS
}

// NodeDev is the name of every node's end of its veth pair, inside its
// namespace, so that one config names the same interface on every node.
const NodeDev = "eth0"

const leftoverAlias = "tharsis-vm-test pid="

// CreateSegment creates the bridge and the guest's tap on a fresh /24:
// the bridge is .1 (Tap.HostIP), the guest .2 (Tap.GuestIP). Close removes
// everything it and AddNode created.
func CreateSegment(ctx context.Context, mtu int) (*Segment, error) {
	if mtu == 0 {
		mtu = 1500
	}
	var b [3]byte
	rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	prefix, err := freeSubnet()
	if err != nil {
		return nil, err
	}
	s := &Segment{ID: id, Bridge: "thb" + id, Prefix: prefix,
		Tap: &Tap{Name: "thv" + id, HostIP: prefix + ".1", GuestIP: prefix + ".2", MTU: mtu}}
	alias := leftoverAlias + strconv.Itoa(os.Getpid())
	steps := [][]string{
		{"link", "add", s.Bridge, "type", "bridge"},
		{"link", "set", s.Bridge, "alias", alias},
		{"link", "set", s.Bridge, "mtu", fmt.Sprint(mtu)},
		{"addr", "add", s.Tap.HostIP + "/24", "dev", s.Bridge},
		{"link", "set", s.Bridge, "up"},
		{"tuntap", "add", "dev", s.Tap.Name, "mode", "tap"},
		{"link", "set", s.Tap.Name, "alias", alias},
		{"link", "set", s.Tap.Name, "mtu", fmt.Sprint(mtu)},
		{"link", "set", s.Tap.Name, "master", s.Bridge},
		{"link", "set", s.Tap.Name, "up"},
	}
	for i, args := range steps {
		if err := ipCmd(ctx, args...); err != nil {
			s.Close()
			if i == 0 {
				return nil, fmt.Errorf("create bridge (needs root / CAP_NET_ADMIN): %w", err)
			}
			return nil, err
		}
		switch i {
		case 0:
			s.links = append(s.links, s.Bridge)
		case 5:
			s.links = append(s.links, s.Tap.Name)
		}
	}
	ifi, err := net.InterfaceByName(s.Tap.Name)
	if err != nil {
		s.Close()
		return nil, err
	}
	s.Tap.Index = ifi.Index
	return s, nil
}

// AddNode creates a namespace for node name with NodeDev at prefix.host
// (host 3..254), joined to the bridge.
func (s *Segment) AddNode(ctx context.Context, name string, host int) (*NetNode, error) {
	n := &NetNode{Name: name, NS: fmt.Sprintf("thvm%d-%s-%s", os.Getpid(), s.ID, name), IP: fmt.Sprintf("%s.%d", s.Prefix, host)}
	if err := ipCmd(ctx, "netns", "add", n.NS); err != nil {
		return nil, err
	}
	s.Nodes = append(s.Nodes, n)
	port := fmt.Sprintf("thn%s%d", s.ID, len(s.Nodes))
	alias := leftoverAlias + strconv.Itoa(os.Getpid())
	for _, args := range [][]string{
		{"link", "add", port, "mtu", fmt.Sprint(s.Tap.MTU), "type", "veth", "peer", "name", NodeDev, "mtu", fmt.Sprint(s.Tap.MTU), "netns", n.NS},
		{"link", "set", port, "alias", alias},
		{"link", "set", port, "master", s.Bridge},
		{"link", "set", port, "up"},
		{"-n", n.NS, "addr", "add", n.IP + "/24", "dev", NodeDev},
		{"-n", n.NS, "link", "set", NodeDev, "up"},
		{"-n", n.NS, "link", "set", "lo", "up"},
	} {
		if err := ipCmd(ctx, args...); err != nil {
			return nil, err
		}
	}
	var links []struct {
		Index   int    `json:"ifindex"`
		Address string `json:"address"`
	}
	out, err := exec.CommandContext(ctx, "ip", "-n", n.NS, "-j", "link", "show", NodeDev).Output()
	if err == nil {
		err = json.Unmarshal(out, &links)
	}
	if err != nil || len(links) != 1 {
		return nil, fmt.Errorf("ip -n %s -j link show %s: %v: %s", n.NS, NodeDev, err, out)
	}
	n.Index, n.MAC = links[0].Index, links[0].Address
	return n, nil
}

// Close removes the namespaces (and with them the veth pairs), the tap and
// the bridge. Processes still running inside a namespace keep it alive
// until they exit: stop them first.
func (s *Segment) Close() error {
	var errs []error
	for _, n := range s.Nodes {
		if err := ipCmd(context.Background(), "netns", "del", n.NS); err != nil {
			errs = append(errs, err)
		}
	}
	for i := len(s.links) - 1; i >= 0; i-- {
		if err := ipCmd(context.Background(), "link", "del", s.links[i]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// RemoveLeftovers deletes what segments of test processes that no longer
// run left behind (a test binary killed by -timeout or SIGKILL): their
// namespaces, the processes still inside them, and their links.
func RemoveLeftovers() {
	alive := func(pid int) bool { return pid == os.Getpid() || syscall.Kill(pid, 0) == nil }
	if out, err := exec.Command("ip", "netns", "list").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) == 0 || !strings.HasPrefix(f[0], "thvm") {
				continue
			}
			pidStr, _, _ := strings.Cut(strings.TrimPrefix(f[0], "thvm"), "-")
			pid, err := strconv.Atoi(pidStr)
			if err != nil || alive(pid) {
				continue
			}
			if pids, err := exec.Command("ip", "netns", "pids", f[0]).Output(); err == nil {
				for _, p := range strings.Fields(string(pids)) {
					if n, err := strconv.Atoi(p); err == nil {
						syscall.Kill(n, syscall.SIGKILL)
					}
				}
			}
			ipCmd(context.Background(), "netns", "del", f[0])
		}
	}
	var links []struct {
		Name  string `json:"ifname"`
		Alias string `json:"ifalias"`
	}
	out, err := exec.Command("ip", "-j", "link", "show").Output()
	if err != nil || json.Unmarshal(out, &links) != nil {
		return
	}
	for _, l := range links {
		pidStr, ok := strings.CutPrefix(l.Alias, leftoverAlias)
		if !ok {
			continue
		}
		if pid, err := strconv.Atoi(pidStr); err == nil && !alive(pid) {
			ipCmd(context.Background(), "link", "del", l.Name)
		}
	}
}
