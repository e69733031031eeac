// Package blockdev defines Device, the one seam between the exports (AoE,
// NBD) and what stores the bytes (a local file or block device, an in-memory
// buffer, or the replicated device of package replicate).
//
// Export packages know only this interface; replication knows nothing about
// the exports. The appliance wires them together.
//
// File serves what the page cache holds with raw preadv2/pwritev2 system
// calls flagged RWF_NOWAIT, which the Go scheduler does not see as
// blocking (see nowait.go); everything else takes the ordinary os.File
// path.
package blockdev
