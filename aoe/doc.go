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
//
// # Server concurrency
//
// A Server's receiving workers take batches of frames from a
// PACKET_RX_RING mapped into the process (TPACKET_V2; no system call while
// frames wait; a worker that has just answered a lone frame polls the
// empty ring for up to 50 µs, so that a latency-bound initiator's next request does
// not wake it through the runtime poller), or with recvmmsg where the
// kernel refuses a ring, and answer reads and other quick requests
// themselves (no allocation per frame), sending the batch's responses
// through a PACKET_TX_RING with one sendto (on its own send-only socket),
// or with one sendmmsg where the kernel refuses that ring or it is full.
// With a blockdev.File, a read or write that the page cache serves at once
// is a raw preadv2/pwritev2 with RWF_NOWAIT (see blockdev). A frame whose
// answer waits for the device to sync never holds a worker up: the worker
// exchanges its buffer for a free one of a fixed pool (twice the
// advertised bufcnt, at most 512 frames) and goes on receiving.
//
//   - Durable writes to a device whose WriteAt only copies (blockdev.File,
//     blockdev.Memory) are written by the worker and queued to the
//     target's committer, which flushes the device once for every response
//     queued meanwhile and sends them together (group commit across every
//     frame the initiators keep outstanding).
//   - Writes to any other device (replicate.Primary waits in WriteAt for
//     the log) and FLUSH CACHE go to a pool of writers, one per frame of
//     the pool, so that every outstanding write is in flight at once and
//     shares the device's sync; their responses then go through the
//     committer as well.
//
// Responses leave in any order (initiators match them by tag). When the
// pool is empty a worker handles the frame itself, flushing once per
// batch, so memory stays bounded under any request mix.
//
// # Targets at run time
//
// AddTarget and RemoveTarget change a serving Server's targets without
// touching the others: the set of targets is an immutable value swapped
// atomically, and each frame routed to a target passes its gate (an atomic
// counter) until its response is sent. RemoveTarget swaps the target out,
// closes its gate and waits until the frames inside have been executed and
// answered; frames arriving later are dropped unanswered, which an
// initiator treats like a lost frame and retransmits (the Linux driver
// sends it to another MAC of the shelf.slot once it knows one, see
// DefaultAnnounceAt). The write stage and the receiving workers grow with
// the targets' buffer counts; they never shrink while the Server runs.
// A target starting to be served is announced on the schedule of
// Server.AnnounceAt.
package aoe
