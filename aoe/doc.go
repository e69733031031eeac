// Package aoe implements ATA over Ethernet (AoE, revision 11 of the Coraid
// specification): a pure codec for the frames, a Server that exports
// blockdev.Devices as shelf.slot targets on raw Ethernet interfaces, and an
// Initiator that discovers targets and reads and writes them.
//
// # Wire format
//
// Every AoE frame starts with the Ethernet header and the AoE header
// (HeaderLen = 24 bytes), big-endian:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+---------------------------------------------------------------+
//	|                 Ethernet destination (6 bytes)                |
//	|               +-----------------------------------------------+
//	|               |            Ethernet source (6 bytes)          |
//	+---------------+---------------+-------------------------------+
//	|        EtherType 0x88A2       | Ver=1 |R|E|0|0|     Error     |
//	+-------------------------------+---------------+---------------+
//	|          Major (shelf)        | Minor (slot)  |    Command    |
//	+-------------------------------+---------------+---------------+
//	|                              Tag                              |
//	+---------------------------------------------------------------+
//
// The argument that follows depends on Command:
//
//	ATA (0), ATAArgLen = 12:
//	| AFlags (E . D . . . A W) | Err/Feature | Sector Count | Cmd/Status |
//	| LBA0 | LBA1 | LBA2 | LBA3 | LBA4 | LBA5 | Reserved (2) | data ...
//
//	Query Config (1), ConfigArgLen = 8:
//	| Buffer Count (2) | Firmware Version (2) | Sector Count | Ver(4)|CCmd(4) |
//	| Config String Length (2) | Config String (0..1024) ...
//
//	Mac Mask List (2), MaskArgLen = 4:
//	| Reserved | MCmd | MError | Dir Count | directives: (Reserved | DCmd | MAC (6)) ...
//
//	Reserve/Release (3), ReserveArgLen = 2:
//	| RCmd | NMacs | MAC (6) ...
//
// LBA bytes are little-endian (LBA0 is the least significant), as in the ATA
// task file; all other multi-byte fields are big-endian.
//
// # Buffers
//
// Decoders fill caller-owned structs and never allocate. Slices in decoded
// values (ATA.Data, Config.String, Mask.Directives, Reserve.MACs) alias the
// frame passed to Decode: copy them to keep them past the frame's reuse.
// Encoders append to a caller buffer (AppendBinary) so a hot path can reuse
// one buffer per frame.
package aoe
