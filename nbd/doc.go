// Package nbd serves blockdev.Device exports over the Network Block Device
// protocol (fixed newstyle handshake, as described in the NetworkBlockDevice
// project's doc/proto.md).
//
// The package has two layers. codec.go is pure: it encodes and decodes the
// fixed-size headers and parses option payloads, never allocating from a
// client-supplied length and never panicking. server.go, handshake.go and
// conn.go hold the I/O: the accept loop, the option haggling and the
// transmission phase.
//
// # Wire format (all integers big-endian)
//
// Handshake, server first:
//
//	S: "NBDMAGIC" (u64) "IHAVEOPT" (u64) handshake flags (u16: FIXED_NEWSTYLE|NO_ZEROES)
//	C: client flags (u32)
//	C: "IHAVEOPT" (u64) option (u32) length (u32) data[length]      (repeated)
//	S: 0x0003e889045565a9 (u64) option (u32) reply type (u32) length (u32) data[length]
//
// Transmission:
//
//	request          0x25609513 (u32) flags (u16) type (u16) handle (u64) offset (u64) length (u32)  [+ length bytes for WRITE]
//	simple reply     0x67446698 (u32) error (u32) handle (u64)                                       [+ data for READ]
//	structured chunk 0x668e33ef (u32) flags (u16) type (u16) handle (u64) length (u32) payload[length]
//	block status     payload of a chunk of type 5: context ID (u32) { length (u32) flags (u32: HOLE 1, ZERO 2) } × n
//
// LIST_META_CONTEXT (9) and SET_META_CONTEXT (10) carry: export name
// length (u32) name, query count (u32) { query length (u32) query } × count;
// each context is answered by NBD_REP_META_CONTEXT: context ID (u32) name.
//
// # What the server does
//
// It speaks fixed newstyle with NO_ZEROES; answers NBD_OPT_EXPORT_NAME, GO,
// INFO (with INFO_EXPORT, NAME, DESCRIPTION, BLOCK_SIZE), LIST, ABORT,
// STRUCTURED_REPLY, LIST_META_CONTEXT and SET_META_CONTEXT, and
// NBD_REP_ERR_UNSUP to everything else. The one metadata context is
// base:allocation, on every export: LIST matches it by "base:allocation" or
// "base:" (or no query), SET only by its name and only after
// STRUCTURED_REPLY; other namespaces are ignored. In transmission it serves
// READ, WRITE (FUA), DISC, FLUSH, TRIM, WRITE_ZEROES and BLOCK_STATUS (from
// blockdev.Extents: a device that is no blockdev.ExtentReporter is all
// data; REQ_ONE gives one extent, otherwise at most 2048); the
// requests of one connection run concurrently, bounded by a per-connection
// budget of in-flight bytes, and their replies are batched into one write
// per burst. Every length a client sends is checked before anything is
// allocated for it.
//
// # What a client can hold
//
// The payload buffers of all connections together stay within a
// MemoryBudget, which several Servers can share: a connection reads a
// WRITE's payload, or runs a READ, only once its share is granted (in
// arrival order), and until then reads nothing more from its client. A
// request that has begun must arrive whole within RequestTimeout, so a
// client that stops half-way through a payload holds its share for that
// long at most. MaxConns caps the connections (the excess is closed at
// once); HandshakeTimeout bounds the handshake; IdleTimeout, off by
// default because a mounted client may send nothing for hours, closes
// connections idle between requests.
//
// The exports can change while the server runs: SetExports replaces the
// whole set, AddExport adds or replaces one, and Withdraw removes some and
// drains and ends the connections that chose them, leaving the others be.
package nbd
