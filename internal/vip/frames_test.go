package vip

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"net"
	"net/netip"
	"testing"
)

var testMAC = net.HardwareAddr{0x02, 0x00, 0x5e, 0x10, 0x20, 0x30}

func TestARPAnnouncement(t *testing.T) {
	f, err := Announcement(testMAC, netip.MustParseAddr("10.0.0.10"))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := hex.DecodeString("ffffffffffff" + "02005e102030" + "0806" +
		"0001" + "0800" + "06" + "04" + "0001" + "02005e102030" + "0a00000a" + "000000000000" + "0a00000a")
	want = append(want, make([]byte, 60-len(want))...)
	if !bytes.Equal(f, want) {
		t.Errorf("frame\n%x, want\n%x", f, want)
	}
	a, err := parseAnnouncement(f)
	if err != nil || a.mac.String() != testMAC.String() || a.addr != netip.MustParseAddr("10.0.0.10") {
		t.Errorf("parsed back: %+v, %v", a, err)
	}
}

func TestUnsolicitedNA(t *testing.T) {
	addr := netip.MustParseAddr("fd00::10")
	f, err := Announcement(testMAC, addr)
	if err != nil {
		t.Fatal(err)
	}
	if len(f) != naFrameLen {
		t.Fatalf("%d bytes, want %d", len(f), naFrameLen)
	}
	// The checksum of the message with the pseudo-header folds to zero.
	src, dst := addr.As16(), allNodes.As16()
	if c := icmpv6Checksum(src, dst, f[54:]); c != 0 {
		t.Errorf("checksum over the message with its checksum is %#04x, want 0", c)
	}
	// The checksum as computed independently (Python, RFC 1071 sum).
	if got := binary.BigEndian.Uint16(f[56:]); got != 0xdc3d {
		t.Errorf("checksum %#04x, want 0xdc3d", got)
	}
	a, err := parseAnnouncement(f)
	if err != nil || a.mac.String() != testMAC.String() || a.addr != addr || !a.override {
		t.Errorf("parsed back: %+v, %v", a, err)
	}
}

func TestAnnouncementErrors(t *testing.T) {
	if _, err := Announcement(net.HardwareAddr{1, 2, 3}, netip.MustParseAddr("10.0.0.1")); err == nil {
		t.Error("a 3-byte MAC was accepted")
	}
	if _, err := Announcement(testMAC, netip.Addr{}); err == nil {
		t.Error("the zero Addr was accepted")
	}
}

// announcement is what a test reads back from a frame.
type announcement struct {
	dst, mac net.HardwareAddr
	addr     netip.Addr
	override bool
}

// parseAnnouncement decodes a frame Announcement builds (tests only).
func parseAnnouncement(f []byte) (announcement, error) {
	var a announcement
	if len(f) < 14 {
		return a, errShort
	}
	a.dst = net.HardwareAddr(f[0:6])
	switch binary.BigEndian.Uint16(f[12:]) {
	case etherTypeARP:
		p := f[14:]
		if len(p) < 28 || binary.BigEndian.Uint16(p[0:]) != 1 || binary.BigEndian.Uint16(p[2:]) != 0x0800 || p[4] != 6 || p[5] != 4 {
			return a, errShort
		}
		sip, _ := netip.AddrFromSlice(p[14:18])
		tip, _ := netip.AddrFromSlice(p[24:28])
		if binary.BigEndian.Uint16(p[6:]) != 1 || sip != tip {
			return a, errNotAnnouncement
		}
		a.mac, a.addr = net.HardwareAddr(p[8:14]), sip
		return a, nil
	case etherTypeIPv6:
		p := f[14:]
		if len(p) < 40+32 || p[6] != protoICMPv6 || p[7] != 255 || p[40] != icmpNA {
			return a, errNotAnnouncement
		}
		src, _ := netip.AddrFromSlice(p[8:24])
		target, _ := netip.AddrFromSlice(p[48:64])
		if src != target || p[64] != optTargetLL || p[65] != 1 {
			return a, errNotAnnouncement
		}
		a.mac, a.addr, a.override = net.HardwareAddr(p[66:72]), target, p[44]&naOverride != 0
		return a, nil
	}
	return a, errNotAnnouncement
}

type testErr string

func (e testErr) Error() string { return string(e) }

const (
	errShort           testErr = "short frame"
	errNotAnnouncement testErr = "not an announcement"
)
