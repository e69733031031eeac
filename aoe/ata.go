package aoe

import "io"

// ATAFlags are the AFlags of an ATA argument.
type ATAFlags uint8

// ATA argument flags.
const (
	ATAExtended ATAFlags = 1 << 6 // E: LBA48 command
	ATADevice   ATAFlags = 1 << 4 // D: device/head register bit
	ATAAsync    ATAFlags = 1 << 1 // A: asynchronous write (no response wanted)
	ATAWrite    ATAFlags = 1 << 0 // W: the frame carries data to write
)

// ATA command codes the target knows.
const (
	ATAReadSectors     = 0x20
	ATAReadSectorsExt  = 0x24
	ATAWriteSectors    = 0x30
	ATAWriteSectorsExt = 0x34
	ATACheckPowerMode  = 0xE5
	ATAFlushCache      = 0xE7
	ATAFlushCacheExt   = 0xEA
	ATAIdentify        = 0xEC
)

// ATA status register bits.
const (
	ATAStatusBSY  = 1 << 7
	ATAStatusDRDY = 1 << 6
	ATAStatusDF   = 1 << 5
	ATAStatusDRQ  = 1 << 3
	ATAStatusERR  = 1 << 0
)

// ATA error register bits.
const (
	ATAErrUNC  = 1 << 6 // uncorrectable data: an I/O error
	ATAErrIDNF = 1 << 4 // ID not found: LBA out of range
	ATAErrABRT = 1 << 2 // command aborted
)

// ATA is the argument of an ATA command or response.
type ATA struct {
	Flags    ATAFlags
	ErrFeat  uint8  // error register in a response, feature in a request
	Sectors  uint8  // sector count
	CmdStat  uint8  // command in a request, status in a response
	LBA      uint64 // 48 bits: LBA0..LBA5
	Reserved [2]byte
	// Data is everything after the argument: sectors to write, read data or
	// Ethernet padding. It aliases the frame given to Decode.
	Data []byte
}

// Decode parses the ATA argument at the start of b (the frame after
// HeaderLen). It returns io.ErrUnexpectedEOF when b is shorter than
// ATAArgLen. Data aliases b. It does not allocate.
func (a *ATA) Decode(b []byte) error {
	if len(b) < ATAArgLen {
		return io.ErrUnexpectedEOF
	}
	a.Flags = ATAFlags(b[0])
	a.ErrFeat = b[1]
	a.Sectors = b[2]
	a.CmdStat = b[3]
	a.LBA = uint64(b[4]) | uint64(b[5])<<8 | uint64(b[6])<<16 | uint64(b[7])<<24 |
		uint64(b[8])<<32 | uint64(b[9])<<40
	a.Reserved = [2]byte{b[10], b[11]}
	a.Data = b[ATAArgLen:]
	return nil
}

// Put writes the ATAArgLen argument bytes (not Data) into b.
func (a *ATA) Put(b []byte) {
	_ = b[ATAArgLen-1]
	b[0] = uint8(a.Flags)
	b[1] = a.ErrFeat
	b[2] = a.Sectors
	b[3] = a.CmdStat
	putLBA(b[4:10], a.LBA)
	b[10], b[11] = a.Reserved[0], a.Reserved[1]
}

func putLBA(b []byte, lba uint64) {
	_ = b[5]
	b[0] = byte(lba)
	b[1] = byte(lba >> 8)
	b[2] = byte(lba >> 16)
	b[3] = byte(lba >> 24)
	b[4] = byte(lba >> 32)
	b[5] = byte(lba >> 40)
}

// AppendBinary appends the argument and Data to b. LBA is truncated to 48
// bits.
func (a *ATA) AppendBinary(b []byte) ([]byte, error) {
	n := len(b)
	b = append(b, make([]byte, ATAArgLen)...)
	a.Put(b[n:])
	return append(b, a.Data...), nil
}

// MarshalBinary is AppendBinary(nil).
func (a *ATA) MarshalBinary() ([]byte, error) { return a.AppendBinary(nil) }
