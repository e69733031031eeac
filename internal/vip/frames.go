package vip

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// Frame sizes and EtherTypes.
const (
	arpFrameLen = 60 // the Ethernet minimum (without FCS); the ARP packet is 42
	naFrameLen  = 14 + 40 + 32

	etherTypeARP  = 0x0806
	etherTypeIPv6 = 0x86dd
	protoICMPv6   = 58
	icmpNA        = 136
	naOverride    = 0x20 // the O flag in the first byte of the NA's flags
	optTargetLL   = 2
)

var (
	broadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	allNodesMAC  = net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}
	allNodes     = netip.MustParseAddr("ff02::1")
)

// Announcement returns the frame that announces addr at mac: a gratuitous
// ARP request for IPv4, an unsolicited neighbour advertisement (override
// set) for IPv6. mac must be a 6-byte Ethernet address.
func Announcement(mac net.HardwareAddr, addr netip.Addr) ([]byte, error) {
	if len(mac) != 6 {
		return nil, fmt.Errorf("hardware address %v is not a 6-byte Ethernet address", mac)
	}
	switch {
	case addr.Is4():
		return arpAnnouncement(mac, addr), nil
	case addr.Is6() && !addr.Is4In6():
		return unsolicitedNA(mac, addr), nil
	}
	return nil, fmt.Errorf("%v is not an IPv4 or IPv6 address", addr)
}

func arpAnnouncement(mac net.HardwareAddr, addr netip.Addr) []byte {
	b := make([]byte, 0, arpFrameLen)
	b = append(b, broadcastMAC...)
	b = append(b, mac...)
	b = binary.BigEndian.AppendUint16(b, etherTypeARP)
	b = binary.BigEndian.AppendUint16(b, 1)      // hardware type: Ethernet
	b = binary.BigEndian.AppendUint16(b, 0x0800) // protocol type: IPv4
	b = append(b, 6, 4)                          // address lengths
	b = binary.BigEndian.AppendUint16(b, 1)      // request
	ip := addr.As4()
	b = append(b, mac...)
	b = append(b, ip[:]...)
	b = append(b, 0, 0, 0, 0, 0, 0)
	b = append(b, ip[:]...)
	return b[:arpFrameLen] // zero padding
}

func unsolicitedNA(mac net.HardwareAddr, addr netip.Addr) []byte {
	b := make([]byte, 0, naFrameLen)
	b = append(b, allNodesMAC...)
	b = append(b, mac...)
	b = binary.BigEndian.AppendUint16(b, etherTypeIPv6)
	src, dst := addr.As16(), allNodes.As16()
	b = append(b, 0x60, 0, 0, 0) // version 6, traffic class 0, flow label 0
	b = binary.BigEndian.AppendUint16(b, 32)
	b = append(b, protoICMPv6, 255)
	b = append(b, src[:]...)
	b = append(b, dst[:]...)
	icmp := len(b)
	b = append(b, icmpNA, 0, 0, 0) // type, code, checksum (below)
	b = append(b, naOverride, 0, 0, 0)
	b = append(b, src[:]...)
	b = append(b, optTargetLL, 1)
	b = append(b, mac...)
	binary.BigEndian.PutUint16(b[icmp+2:], icmpv6Checksum(src, dst, b[icmp:]))
	return b
}

// icmpv6Checksum is the Internet checksum of an ICMPv6 message (its
// checksum field zero) with the IPv6 pseudo-header (RFC 8200 8.1).
func icmpv6Checksum(src, dst [16]byte, msg []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(src[:])
	add(dst[:])
	var l [8]byte
	binary.BigEndian.PutUint32(l[:4], uint32(len(msg)))
	l[7] = protoICMPv6
	add(l[:])
	add(msg)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// ErrNoInterface says the named interface does not exist on this node.
var ErrNoInterface = errors.New("no such interface on this node (check service_interface, `ip link`)")
