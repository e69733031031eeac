// Package replicate is tharsis's durable transaction log: on a resource's
// primary every write is appended to a checksummed log and acknowledged,
// and applied to the data device behind (apply.go); it is made durable
// (group-committed fdatasync) by the client's next flush, or before the
// acknowledgement with sync = true. Secondaries fetch the same segments and
// replay them.
//
// # Segments
//
// The log of a resource is a directory of segment files named
//
//	log-<seq:09d>-<node>      e.g. log-000000007-alpha
//
// where seq numbers segments of the resource (globally, across nodes) and node
// names the node that wrote it. Every segment but the newest ends with a
// segment-end marker record; records are only appended, and a segment is
// never reused. While the log is synced often, the primary keeps the newest
// segment written with zeros (and fdatasync'd) ahead of its records, so
// the fdatasync after a record overwrites blocks instead of growing the
// file (Options.ZeroAhead); an all-zero tail of the newest segment is its
// end (SegmentInfo.Zero), and a segment sealed or closed is cut to its end.
// Beside the segments, the file "applied" holds the persisted applied
// position (JSON, replaced atomically by tmp+fsync+rename).
//
// # Records
//
// A segment is a sequence of records, each a 56-byte header followed by its
// payload. Integers are little-endian. The layout is part of the on-disk
// format and must not be changed without bumping the version:
//
//	+0   magic    uint32  0x474c4854 ("THLG" as bytes)
//	+4   crc      uint32  masked CRC32C (Castagnoli) of bytes [8, 56+paylen)
//	+8   version  uint8   1
//	+9   kind     uint8   1 write, 2 trim, 3 write-zeroes, 4 resize, 5 segment end
//	+10  flags    uint16  0 (reserved)
//	+12  paylen   uint32  payload length, at most MaxPayload
//	+16  segment  uint64  sequence number of the segment holding the record
//	+24  seq      uint64  global record sequence number (contiguous, from 1)
//	+32  offset   uint64  byte offset on the device (resize, end: 0)
//	+40  length   uint64  bytes affected (write: paylen; resize: new size)
//	+48  synced   uint64  segment byte offset known durable when the record
//	                      was written (every byte before it had been fdatasync'd)
//	+56  payload  paylen bytes (write only)
//
// The CRC is masked as in LevelDB/pebble (rotate right 15, add 0xa282ead8) so
// that log images stored inside the payload do not carry valid checksums.
//
// # Torn tails and corruption
//
// A crash can leave the end of the newest segment half written: a short
// record, zeroed bytes, or a bad checksum. (An all-zero tail is reported
// as SegmentInfo.Zero rather than Torn: it is usually the zeros written
// ahead; either is cut.) Because writes are batched between
// fdatasyncs, the pages of an unsynced batch may reach the disk in any order,
// so a bad record followed by valid ones is not necessarily corruption. The
// synced field resolves it, as pebble's WAL does: a bad record at offset X in
// the newest segment is corruption only if some later valid record of the
// same segment says that X had already been synced (synced > X); otherwise
// it and everything after it is a torn tail, which recovery cuts (nothing in
// it was ever acknowledged). Any bad record in a sealed segment (one that is
// not the newest), a sealed segment without its end marker, or a gap in the
// record sequence is corruption: recovery stops with a *CorruptError naming
// the file, the byte offset and what to do; errors.Is(err, ErrCorrupt).
//
// # Writing and applying
//
// The log writer works in two stages, as pebble's LogWriter keeps flushing
// and syncing apart. Writing: each appender reserves the place and sequence
// number of its record under a short lock and writes it with its own pwrite,
// in parallel with the others; a record counts as written (and its write
// may be applied and acknowledged) only once every earlier record is
// written too, so a kill of the process never leaves an acknowledged record
// behind a hole. Holes lie only after the contiguously written end, hence
// after every offset a synced field claims: recovery cuts them as a torn
// tail. A failed pwrite fails the later records in flight as well and cuts
// the segment back to it; rotation waits until nothing is in flight. A
// second goroutine calls fdatasync whenever somebody wants records durable,
// once for everything written when it starts (group commit), so the next
// records are written while an fdatasync runs. Primary, a
// blockdev.Device, logs each WriteAt/Trim/WriteZeroes (a copy of the
// payload, owned by the unapplied window), waits until it is written and
// returns; one applier writes the window to the data device behind, in log
// order, and reads lay the window over the data device, so they see every
// acknowledged write (apply.go). The window is bounded (Options.ApplyWindow,
// TOML `apply_window`): writers wait while it is full. What the
// acknowledgement promises depends on Options.Sync (TOML `sync`):
//
//   - sync = false (default): the record is in the log file (page cache): it
//     survives a kill of the process, not a crash of the machine. Flush (NBD
//     FLUSH and FUA, AoE after each write without write_cache) returns once
//     every record written before it is durable: the promise of a plain
//     file device with an fdatasync per FLUSH/FUA.
//   - sync = true: the acknowledgement also waits for the record's
//     fdatasync; Flush then has nothing left to do.
//
// Neither waits for the data device: Checkpoint flushes it before the
// applied position is persisted, and Close and CloseSealed apply the whole
// window first.
//
// A record's synced field only ever claims offsets an fdatasync covered
// when it was encoded; a segment-end marker claims the same, and its own
// fdatasync makes the whole segment durable before the next one is written.
//
// # Invariants
//
// The applied position is persisted in the background (every
// CheckpointInterval, on rotation and on Close), and replay on open starts
// from it. Checkpoint keeps, in this order:
//
//  1. durable log ≥ applied position: the log is fdatasync'd up to the
//     position first. After a machine crash the log may lose its unsynced
//     tail; were the persisted position beyond the durable end, recovery
//     would continue the sequence below it and replay (which skips records
//     by sequence number) would drop the records logged anew. Recovery
//     relies on it too: a bad record before the persisted position in its
//     segment is corruption, never a torn tail.
//  2. data device flushed ≥ applied position: the data device is flushed
//     before the position is written, so nothing before it needs replay.
//
// So persisted ≤ durable end of the log ≤ written end of the log always.
package replicate
