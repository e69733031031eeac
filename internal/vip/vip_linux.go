//go:build linux

package vip

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/mdlayher/packet"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// infinite is the address lifetime "forever".
const infinite = 0xffffffff

// Add adds pf (the address with the prefix length of its network) to the
// interface ifname. added is false when the interface already holds the
// address, with whatever prefix length; nothing changes then. It needs
// CAP_NET_ADMIN. A missing interface is ErrNoInterface.
func Add(ifname string, pf netip.Prefix) (added bool, err error) {
	l, err := link(ifname)
	if err != nil {
		return false, err
	}
	a := pf.Addr()
	if held, err := holds(l, a); err != nil || held {
		return false, err
	}
	na := &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(pf.Bits(), a.BitLen())}}
	if a.Is6() {
		// No duplicate address detection (usable at once), and deprecated
		// (preferred lifetime 0, valid forever): it takes connections, but
		// the node's own connections never pick it as their source, so
		// they do not break when it moves.
		na.Flags = unix.IFA_F_NODAD
		na.ValidLft, na.PreferedLft = infinite, 0
	}
	if err := netlink.AddrAdd(l, na); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return false, nil
		}
		return false, fmt.Errorf("add %s to interface %s: %w", pf, ifname, err)
	}
	return true, nil
}

// Remove removes addr (with whatever prefix length) from the interface
// ifname. removed is false when the interface does not hold it, or does
// not exist (its addresses went with it); neither is an error.
func Remove(ifname string, addr netip.Addr) (removed bool, err error) {
	l, err := link(ifname)
	if errors.Is(err, ErrNoInterface) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	list, err := netlink.AddrList(l, family(addr))
	if err != nil {
		return false, fmt.Errorf("list the addresses of interface %s: %w", ifname, err)
	}
	for _, a := range list {
		if ip, ok := netip.AddrFromSlice(a.IP); !ok || ip.Unmap() != addr {
			continue
		}
		if err := netlink.AddrDel(l, &a); err != nil {
			if errors.Is(err, unix.EADDRNOTAVAIL) {
				continue
			}
			return removed, fmt.Errorf("remove %s from interface %s: %w", addr, ifname, err)
		}
		removed = true
	}
	return removed, nil
}

// Holds reports whether the interface ifname has addr. A missing interface
// holds nothing (false, nil).
func Holds(ifname string, addr netip.Addr) (bool, error) {
	l, err := link(ifname)
	if errors.Is(err, ErrNoInterface) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return holds(l, addr)
}

func holds(l netlink.Link, addr netip.Addr) (bool, error) {
	list, err := netlink.AddrList(l, family(addr))
	if err != nil {
		return false, fmt.Errorf("list the addresses of interface %s: %w", l.Attrs().Name, err)
	}
	for _, a := range list {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr {
			return true, nil
		}
	}
	return false, nil
}

func link(ifname string) (netlink.Link, error) {
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || errors.Is(err, unix.ENODEV) {
			return nil, fmt.Errorf("interface %s: %w", ifname, ErrNoInterface)
		}
		return nil, fmt.Errorf("interface %s: %w", ifname, err)
	}
	return l, nil
}

func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// Announce sends one announcement of addr from the interface ifname: a
// gratuitous ARP (IPv4) or an unsolicited neighbour advertisement with the
// override flag (IPv6), from the interface's MAC address. It needs
// CAP_NET_RAW.
func Announce(ifname string, addr netip.Addr) error {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return fmt.Errorf("interface %s: %w", ifname, ErrNoInterface)
	}
	if ifi.Flags&net.FlagUp == 0 {
		return fmt.Errorf("announce %s: interface %s is down", addr, ifname)
	}
	frame, err := Announcement(ifi.HardwareAddr, addr)
	if err != nil {
		return fmt.Errorf("announce %s on interface %s: %w", addr, ifname, err)
	}
	proto, dst := unix.ETH_P_ARP, broadcastMAC
	if addr.Is6() {
		proto, dst = unix.ETH_P_IPV6, allNodesMAC
	}
	// Bound to the protocol only so that the kernel sets it on what we
	// send; the socket lives for one write, so it reads next to nothing.
	c, err := packet.Listen(ifi, packet.Raw, proto, nil)
	if err != nil {
		return fmt.Errorf("announce %s on interface %s: %w", addr, ifname, err)
	}
	defer c.Close()
	if _, err := c.WriteTo(frame, &packet.Addr{HardwareAddr: dst}); err != nil {
		return fmt.Errorf("announce %s on interface %s: %w", addr, ifname, err)
	}
	return nil
}

// Transparent is a net.ListenConfig Control function that sets
// IP_TRANSPARENT (IPV6_TRANSPARENT for an IPv6 socket) on a listening
// socket. Its connections inherit it, with two effects: the listener may
// bind to an address the node does not hold (yet), and an accepted
// connection can still send (answers, FIN) from the service address after
// that address was removed, where Linux would otherwise drop what it sends
// (IPv4 checks that the source is local). It needs CAP_NET_ADMIN. Nothing
// arrives for an address the node does not hold: without TPROXY rules,
// packets to it are not delivered locally.
func Transparent(network, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		switch network {
		case "tcp4", "udp4":
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
		default:
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
		}
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("set IP_TRANSPARENT (for a service address; needs CAP_NET_ADMIN): %w", serr)
	}
	return nil
}
