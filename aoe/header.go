package aoe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
)

// Sizes and constants of the wire format. They are part of the protocol and
// must not change.
const (
	EtherType      = 0x88A2 // AoE EtherType
	Version        = 1      // AoE protocol version spoken and answered
	EthernetLen    = 14     // destination, source, EtherType
	HeaderLen      = 24     // Ethernet header plus AoE header
	ATAArgLen      = 12     // ATA argument after the header
	ConfigArgLen   = 8      // Query Config argument before the string
	MaskArgLen     = 4      // Mac Mask List argument before the directives
	DirectiveLen   = 8      // one Mac Mask directive
	ReserveArgLen  = 2      // Reserve/Release argument before the MACs
	MaxConfigLen   = 1024   // longest config string
	SectorSize     = 512    // bytes per ATA sector
	MinFrameLen    = 60     // shortest Ethernet frame (without FCS); replies are padded to it
	BroadcastShelf = 0xffff // shelf (major) that addresses every shelf
	BroadcastSlot  = 0xff   // slot (minor) that addresses every slot
	ATAFrameLen    = HeaderLen + ATAArgLen
)

// SectorsPerFrame returns how many 512-byte sectors fit one ATA frame on an
// interface with the given MTU: (MTU - 36) / 512, at most 255 (2 at 1500,
// 17 at 9000). Like vblade it subtracts all 36 header bytes (Ethernet, AoE,
// ATA) although the MTU excludes the 14-byte Ethernet header, so both answer
// alike; the result is the same as (MTU - 22) / 512 at 1500 and 9000.
func SectorsPerFrame(mtu int) int {
	n := (mtu - ATAFrameLen) / SectorSize
	switch {
	case n < 0:
		return 0
	case n > 255:
		return 255
	}
	return n
}

// MAC is an Ethernet address.
type MAC [6]byte

// BroadcastMAC is the Ethernet broadcast address.
var BroadcastMAC = MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// String formats m as aa:bb:cc:dd:ee:ff.
func (m MAC) String() string { return net.HardwareAddr(m[:]).String() }

// MACFrom converts a net.HardwareAddr; it fails unless a is 6 bytes long.
func MACFrom(a net.HardwareAddr) (MAC, error) {
	var m MAC
	if len(a) != len(m) {
		return m, fmt.Errorf("MAC address %q is not 6 bytes long; give it as aa:bb:cc:dd:ee:ff", a.String())
	}
	copy(m[:], a)
	return m, nil
}

// Flags are the R and E bits of the AoE header.
type Flags uint8

// Header flags.
const (
	FlagResponse Flags = 1 << 3 // R: the frame is a response
	FlagError    Flags = 1 << 2 // E: Error holds an AoE error code
)

// Command is the AoE command of a frame; it selects the argument type.
type Command uint8

// AoE commands.
const (
	CmdATA     Command = 0
	CmdConfig  Command = 1
	CmdMask    Command = 2
	CmdReserve Command = 3
)

// String names the command.
func (c Command) String() string {
	switch c {
	case CmdATA:
		return "ATA"
	case CmdConfig:
		return "QueryConfig"
	case CmdMask:
		return "MacMaskList"
	case CmdReserve:
		return "ReserveRelease"
	}
	return fmt.Sprintf("Command(%d)", uint8(c))
}

// ErrNotAoE is returned by Header.Decode for a frame whose EtherType is not
// 0x88A2.
var ErrNotAoE = errors.New("not an AoE frame (EtherType is not 0x88A2)")

// Header is the Ethernet and AoE header of a frame.
type Header struct {
	Dst, Src MAC
	Version  uint8 // 4 bits
	Flags    Flags // 4 bits
	Error    Error
	Shelf    uint16 // major
	Slot     uint8  // minor
	Command  Command
	Tag      uint32
}

// Decode parses the first HeaderLen bytes of frame into h. It returns
// io.ErrUnexpectedEOF for a short frame and ErrNotAoE for another EtherType.
// It does not allocate.
func (h *Header) Decode(frame []byte) error {
	if len(frame) < HeaderLen {
		return io.ErrUnexpectedEOF
	}
	if binary.BigEndian.Uint16(frame[12:14]) != EtherType {
		return ErrNotAoE
	}
	copy(h.Dst[:], frame[0:6])
	copy(h.Src[:], frame[6:12])
	h.Version = frame[14] >> 4
	h.Flags = Flags(frame[14] & 0x0f)
	h.Error = Error(frame[15])
	h.Shelf = binary.BigEndian.Uint16(frame[16:18])
	h.Slot = frame[18]
	h.Command = Command(frame[19])
	h.Tag = binary.BigEndian.Uint32(frame[20:24])
	return nil
}

// Put writes h into the first HeaderLen bytes of b, which must be long enough.
func (h *Header) Put(b []byte) {
	_ = b[HeaderLen-1]
	copy(b[0:6], h.Dst[:])
	copy(b[6:12], h.Src[:])
	binary.BigEndian.PutUint16(b[12:14], EtherType)
	b[14] = h.Version<<4 | uint8(h.Flags&0x0f)
	b[15] = uint8(h.Error)
	binary.BigEndian.PutUint16(b[16:18], h.Shelf)
	b[18] = h.Slot
	b[19] = uint8(h.Command)
	binary.BigEndian.PutUint32(b[20:24], h.Tag)
}

// AppendBinary appends the HeaderLen bytes of h to b. Version and Flags are
// truncated to their 4 bits.
func (h *Header) AppendBinary(b []byte) ([]byte, error) {
	n := len(b)
	b = append(b, make([]byte, HeaderLen)...)
	h.Put(b[n:])
	return b, nil
}

// MarshalBinary is AppendBinary(nil).
func (h *Header) MarshalBinary() ([]byte, error) { return h.AppendBinary(nil) }
