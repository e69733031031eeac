// Package blockdev defines Device, the one seam between the exports (AoE,
// NBD) and what stores the bytes (a local file or block device, an in-memory
// buffer, or the replicated device of package replicate).
//
// Export packages know only this interface; replication knows nothing about
// the exports. The appliance wires them together.
package blockdev
