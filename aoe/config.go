package aoe

import (
	"encoding/binary"
	"errors"
	"io"
)

// ConfigCommand is the CCmd of a Query Config argument.
type ConfigCommand uint8

// Query Config commands.
const (
	ConfigRead     ConfigCommand = 0 // read the config string
	ConfigTest     ConfigCommand = 1 // reply only if the string equals the request's
	ConfigPrefix   ConfigCommand = 2 // reply only if the request's string is a prefix
	ConfigSet      ConfigCommand = 3 // set if empty (or equal), else error 4
	ConfigForceSet ConfigCommand = 4 // set unconditionally
)

// ErrConfigTooLong is returned by Config.Decode when the config string
// length field exceeds MaxConfigLen.
var ErrConfigTooLong = errors.New("AoE config string longer than 1024 bytes")

// Config is a Query Config argument.
type Config struct {
	BufCnt   uint16 // frames the target can buffer
	Firmware uint16 // firmware version
	Sectors  uint8  // sectors per ATA frame ("scnt")
	Version  uint8  // AoE version (4 bits)
	Command  ConfigCommand
	// String is the config string. It aliases the frame given to Decode.
	String []byte
}

// Decode parses a Query Config argument at the start of b (the frame after
// HeaderLen). It returns io.ErrUnexpectedEOF when b is shorter than
// ConfigArgLen or than the string length says, and ErrConfigTooLong when the
// length exceeds MaxConfigLen; in both cases every field but String is set,
// so a caller can still act on a read. It does not allocate.
func (c *Config) Decode(b []byte) error {
	if len(b) < ConfigArgLen {
		return io.ErrUnexpectedEOF
	}
	c.BufCnt = binary.BigEndian.Uint16(b[0:2])
	c.Firmware = binary.BigEndian.Uint16(b[2:4])
	c.Sectors = b[4]
	c.Version = b[5] >> 4
	c.Command = ConfigCommand(b[5] & 0x0f)
	n := int(binary.BigEndian.Uint16(b[6:8]))
	c.String = nil
	if n > MaxConfigLen {
		return ErrConfigTooLong
	}
	if n > len(b)-ConfigArgLen {
		return io.ErrUnexpectedEOF
	}
	c.String = b[ConfigArgLen : ConfigArgLen+n : ConfigArgLen+n]
	return nil
}

// AppendBinary appends the argument and String to b. It fails with
// ErrConfigTooLong for a string longer than MaxConfigLen; Version and Command
// are truncated to 4 bits.
func (c *Config) AppendBinary(b []byte) ([]byte, error) {
	if len(c.String) > MaxConfigLen {
		return b, ErrConfigTooLong
	}
	b = binary.BigEndian.AppendUint16(b, c.BufCnt)
	b = binary.BigEndian.AppendUint16(b, c.Firmware)
	b = append(b, c.Sectors, c.Version<<4|uint8(c.Command)&0x0f)
	b = binary.BigEndian.AppendUint16(b, uint16(len(c.String)))
	return append(b, c.String...), nil
}

// MarshalBinary is AppendBinary(nil).
func (c *Config) MarshalBinary() ([]byte, error) { return c.AppendBinary(nil) }
