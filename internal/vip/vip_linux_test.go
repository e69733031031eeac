//go:build linux

package vip

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/tharsis/tharsis/internal/testutil"
)

// pair is two network namespaces joined by a veth pair: the node (holds
// and announces addresses) and the client (watches).
type pair struct {
	nodeNS, clientNS string
	nodeIf, clientIf string
}

func newPair(t *testing.T) *pair {
	t.Helper()
	testutil.NeedRoot(t)
	testutil.NeedTool(t, "ip")
	var r [4]byte
	_, _ = rand.Read(r[:])
	id := hex.EncodeToString(r[:])
	p := &pair{nodeNS: "vipn-" + id, clientNS: "vipc-" + id, nodeIf: "vn" + id, clientIf: "vc" + id}
	t.Cleanup(func() {
		_ = ipCmd("netns", "del", p.nodeNS)
		_ = ipCmd("netns", "del", p.clientNS)
	})
	for _, args := range [][]string{
		{"netns", "add", p.nodeNS},
		{"netns", "add", p.clientNS},
		{"link", "add", p.nodeIf, "netns", p.nodeNS, "type", "veth", "peer", "name", p.clientIf, "netns", p.clientNS},
		{"-n", p.nodeNS, "addr", "add", "10.55.0.1/24", "dev", p.nodeIf},
		{"-n", p.clientNS, "addr", "add", "10.55.0.2/24", "dev", p.clientIf},
		{"-n", p.nodeNS, "addr", "add", "fd00:55::1/64", "dev", p.nodeIf, "nodad"},
		{"-n", p.clientNS, "addr", "add", "fd00:55::2/64", "dev", p.clientIf, "nodad"},
		{"-n", p.nodeNS, "link", "set", p.nodeIf, "up"},
		{"-n", p.clientNS, "link", "set", p.clientIf, "up"},
		{"-n", p.nodeNS, "link", "set", "lo", "up"},
	} {
		if err := ipCmd(args...); err != nil {
			t.Fatal(err)
		}
	}
	// IPv6 multicast (the all-nodes address of a neighbour advertisement)
	// is routed once the kernel saw the carrier come up, a moment later.
	for _, end := range [][2]string{{p.nodeNS, p.nodeIf}, {p.clientNS, p.clientIf}} {
		testutil.WaitFor(t, 10*time.Second, "IPv6 multicast on "+end[1], func() bool {
			out, err := exec.Command("ip", "-n", end[0], "-6", "route", "show", "table", "local", "dev", end[1]).Output()
			return err == nil && strings.Contains(string(out), "multicast ff00::/8")
		})
	}
	return p
}

// ipCmd runs ip(8).
var ipCmd = testutil.IP

// in runs fn in ns and fails the test on its error.
func in(t *testing.T, ns string, fn func() error) {
	t.Helper()
	if err := testutil.InNetns(ns, fn); err != nil {
		t.Fatal(err)
	}
}

// ipAddr is one address of `ip -j addr`.
type ipAddr struct {
	Local     string `json:"local"`
	PrefixLen int    `json:"prefixlen"`
	Tentative bool   `json:"tentative"`
}

// addrs lists the addresses of ifname in ns as `ip -j addr` shows them.
func addrs(t *testing.T, ns, ifname string) []ipAddr {
	t.Helper()
	out, err := exec.Command("ip", "-n", ns, "-j", "addr", "show", "dev", ifname).Output()
	if err != nil {
		t.Fatalf("ip -j addr in %s: %v", ns, err)
	}
	var links []struct {
		AddrInfo []ipAddr `json:"addr_info"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		t.Fatalf("ip -j addr: %v: %s", err, out)
	}
	return links[0].AddrInfo
}

func TestAddRemove(t *testing.T) {
	p := newPair(t)
	for _, s := range []string{"10.55.0.10/24", "fd00:55::10/64"} {
		pf := netip.MustParsePrefix(s)
		in(t, p.nodeNS, func() error {
			if added, err := Add(p.nodeIf, pf); err != nil || !added {
				return fmt.Errorf("Add(%s) = %v, %v; want added", pf, added, err)
			}
			if added, err := Add(p.nodeIf, pf); err != nil || added {
				return fmt.Errorf("Add(%s) again = %v, %v; want not added, no error", pf, added, err)
			}
			if held, err := Holds(p.nodeIf, pf.Addr()); err != nil || !held {
				return fmt.Errorf("Holds(%s) after Add = %v, %v", pf.Addr(), held, err)
			}
			return nil
		})
		found := false
		for _, a := range addrs(t, p.nodeNS, p.nodeIf) {
			if a.Local == pf.Addr().String() {
				found = true
				if a.PrefixLen != pf.Bits() || a.Tentative {
					t.Errorf("%s: prefix length %d, tentative %v; want %d, not tentative", pf, a.PrefixLen, a.Tentative, pf.Bits())
				}
			}
		}
		if !found {
			t.Fatalf("ip addr does not show %s after Add", pf)
		}
		// The node's own connections do not take it as their source.
		in(t, p.nodeNS, func() error {
			peer := "10.55.0.11" // nearer the service address than the node's own
			if pf.Addr().Is6() {
				peer = "fd00:55::11"
			}
			c, err := net.Dial("udp", net.JoinHostPort(peer, "9"))
			if err != nil {
				return err
			}
			defer c.Close()
			if src := c.LocalAddr().(*net.UDPAddr).IP.String(); src == pf.Addr().String() {
				return fmt.Errorf("a connection from the node to %s has the source %s", peer, src)
			}
			return nil
		})
		// Usable at once: a plain listener binds to it (IPv6: no DAD).
		in(t, p.nodeNS, func() error {
			l, err := net.Listen("tcp", netip.AddrPortFrom(pf.Addr(), 0).String())
			if err != nil {
				return fmt.Errorf("listen on %s right after Add: %w", pf.Addr(), err)
			}
			return l.Close()
		})
		in(t, p.nodeNS, func() error {
			if removed, err := Remove(p.nodeIf, pf.Addr()); err != nil || !removed {
				return fmt.Errorf("Remove(%s) = %v, %v; want removed", pf.Addr(), removed, err)
			}
			if removed, err := Remove(p.nodeIf, pf.Addr()); err != nil || removed {
				return fmt.Errorf("Remove(%s) again = %v, %v; want nothing, no error", pf.Addr(), removed, err)
			}
			if held, err := Holds(p.nodeIf, pf.Addr()); err != nil || held {
				return fmt.Errorf("Holds(%s) after Remove = %v, %v", pf.Addr(), held, err)
			}
			return nil
		})
		for _, a := range addrs(t, p.nodeNS, p.nodeIf) {
			if a.Local == pf.Addr().String() {
				t.Errorf("ip addr still shows %s after Remove", pf)
			}
		}
	}
	// The node's own address, held with another prefix length, counts.
	in(t, p.nodeNS, func() error {
		if added, err := Add(p.nodeIf, netip.MustParsePrefix("10.55.0.1/32")); err != nil || added {
			return fmt.Errorf("Add of an address held as /24 = %v, %v; want not added", added, err)
		}
		return nil
	})
}

func TestMissingInterface(t *testing.T) {
	p := newPair(t)
	in(t, p.nodeNS, func() error {
		pf := netip.MustParsePrefix("10.55.0.10/24")
		if _, err := Add("nosuch0", pf); !errors.Is(err, ErrNoInterface) || !strings.Contains(err.Error(), "nosuch0") {
			return fmt.Errorf("Add on a missing interface: %v, want ErrNoInterface naming it", err)
		}
		if removed, err := Remove("nosuch0", pf.Addr()); err != nil || removed {
			return fmt.Errorf("Remove on a missing interface = %v, %v; want nothing, no error", removed, err)
		}
		if held, err := Holds("nosuch0", pf.Addr()); err != nil || held {
			return fmt.Errorf("Holds on a missing interface = %v, %v", held, err)
		}
		if err := Announce("nosuch0", pf.Addr()); !errors.Is(err, ErrNoInterface) {
			return fmt.Errorf("Announce on a missing interface: %v, want ErrNoInterface", err)
		}
		return nil
	})
}

// capture opens a packet socket for EtherType proto on ifname in ns.
func capture(t *testing.T, ns, ifname string, proto int) *packet.Conn {
	t.Helper()
	var c *packet.Conn
	in(t, ns, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		c, err = packet.Listen(ifi, packet.Raw, proto, nil)
		return err
	})
	t.Cleanup(func() { c.Close() })
	return c
}

// nextAnnouncement reads frames until one announces addr (5 s at most).
func nextAnnouncement(t *testing.T, c *packet.Conn, addr netip.Addr) announcement {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1500)
	for {
		n, _, err := c.ReadFrom(b)
		if err != nil {
			t.Fatalf("no announcement of %s seen on the peer: %v", addr, err)
		}
		if a, err := parseAnnouncement(b[:n]); err == nil && a.addr == addr {
			return a
		}
	}
}

// neighbour returns the client's neighbour entry (MAC) for addr.
func neighbour(p *pair, addr netip.Addr) string {
	out, err := exec.Command("ip", "-n", p.clientNS, "-j", "neigh", "show", addr.String(), "dev", p.clientIf).Output()
	if err != nil {
		return "ip neigh: " + err.Error()
	}
	var l []struct {
		LLAddr string `json:"lladdr"`
	}
	if json.Unmarshal(out, &l) != nil || len(l) == 0 {
		return "none"
	}
	return l[0].LLAddr
}

// TestAnnounce: the peer sees a gratuitous ARP (IPv4) or an unsolicited
// neighbour advertisement with override (IPv6) from the node's MAC for the
// address, and Linux on the peer moves a stale neighbour entry to it.
func TestAnnounce(t *testing.T) {
	p := newPair(t)
	var nodeMAC net.HardwareAddr
	in(t, p.nodeNS, func() error {
		ifi, err := net.InterfaceByName(p.nodeIf)
		nodeMAC = ifi.HardwareAddr
		return err
	})
	for _, tc := range []struct {
		addr    string
		proto   int
		dst     string
		version string
	}{
		{"10.55.0.10/24", unix.ETH_P_ARP, "ff:ff:ff:ff:ff:ff", "IPv4"},
		{"fd00:55::10/64", unix.ETH_P_IPV6, "33:33:00:00:00:01", "IPv6"},
	} {
		t.Run(tc.version, func(t *testing.T) {
			pf := netip.MustParsePrefix(tc.addr)
			// The client believes the address lives at another MAC (the
			// old primary's).
			const oldMAC = "02:00:00:00:00:99"
			if err := ipCmd("-n", p.clientNS, "neigh", "replace", pf.Addr().String(), "lladdr", oldMAC, "dev", p.clientIf, "nud", "stale"); err != nil {
				t.Fatal(err)
			}
			c := capture(t, p.clientNS, p.clientIf, tc.proto)
			in(t, p.nodeNS, func() error {
				if _, err := Add(p.nodeIf, pf); err != nil {
					return err
				}
				return Announce(p.nodeIf, pf.Addr())
			})
			a := nextAnnouncement(t, c, pf.Addr())
			if a.mac.String() != nodeMAC.String() || a.dst.String() != tc.dst {
				t.Errorf("announcement from %s to %s, want from the node's %s to %s", a.mac, a.dst, nodeMAC, tc.dst)
			}
			if tc.version == "IPv6" && !a.override {
				t.Error("the neighbour advertisement has no override flag")
			}
			testutil.WaitFor(t, 5*time.Second, "the client's neighbour entry to move to the node", func() bool {
				return neighbour(p, pf.Addr()) == nodeMAC.String()
			})
		})
	}
}

// TestTransparent: a transparent listener binds to an address the node
// does not hold yet; once it holds it, a client connects; after the
// address is removed, the answer to a request in flight still reaches the
// client, and so does the end of the connection (what NBD connections
// withdrawn after the address need). Without IP_TRANSPARENT the IPv4
// answer would be dropped.
func TestTransparent(t *testing.T) {
	p := newPair(t)
	for _, tc := range []struct{ addr, listen string }{
		{"10.55.0.10/24", "10.55.0.10:10809"},
		{"fd00:55::10/64", "[fd00:55::10]:10809"},
		{"10.55.0.11/24", "0.0.0.0:10810"}, // Go listens on [::] (dual stack)
		{"fd00:55::11/64", "[::]:10811"},
	} {
		pf := netip.MustParsePrefix(tc.addr)
		ap, _ := netip.ParseAddrPort(tc.listen)
		addr := netip.AddrPortFrom(pf.Addr(), ap.Port()).String()
		var ln net.Listener
		in(t, p.nodeNS, func() error {
			var err error
			lc := net.ListenConfig{Control: Transparent}
			ln, err = lc.Listen(context.Background(), "tcp", tc.listen)
			return err
		})
		defer ln.Close()
		in(t, p.nodeNS, func() error { _, err := Add(p.nodeIf, pf); return err })
		var cc net.Conn
		in(t, p.clientNS, func() error {
			var err error
			cc, err = net.DialTimeout("tcp", addr, 5*time.Second)
			return err
		})
		defer cc.Close()
		sc, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cc.Write([]byte("request")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(sc, make([]byte, 7)); err != nil {
			t.Fatal(err)
		}
		in(t, p.nodeNS, func() error { _, err := Remove(p.nodeIf, pf.Addr()); return err })
		answer := bytes.Repeat([]byte("answer "), 2000) // 14 KB: more than one segment
		if _, err := sc.Write(answer); err != nil {
			t.Fatal(err)
		}
		sc.Close()
		cc.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(cc)
		if err != nil || !bytes.Equal(got, answer) {
			t.Fatalf("%s, listening on %s: the client read %d bytes (%v), want the %d-byte answer and the end of the connection", pf, tc.listen, len(got), err, len(answer))
		}
	}
}
