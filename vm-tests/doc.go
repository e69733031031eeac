// Package vmtests boots a small QEMU guest running Debian's kernel with the
// real Linux aoe and nbd drivers, aoetools and nbd-client, and drives it
// against tharsis exports (or, for reference, Debian's vblade and
// nbd-server) on a tap device created for the run.
//
// The guest is built from packages already installed on the host: the
// kernel and modules of linux-image-amd64, busybox-static, aoetools (plus
// bash, which aoe-stat needs), nbd-client and e2fsprogs' mke2fs and
// e2fsck, each with the shared libraries ldd names. The base initramfs is
// cached under CacheDir, keyed by a hash of every input, and rebuilt only
// when an input changes. Each boot appends a tiny second cpio archive
// holding the scenario script (/scenario.sh) and any extra programs, so
// scenarios never rebuild the base.
//
// The guest's /init loads the modules, configures eth0 from the kernel
// command line, runs /scenario.sh and powers off. Everything the host needs
// to know comes back on the serial console as marker lines:
//
//	THARSIS-MARK <key> <value...>
//
// A scenario can also block on a host action with `hoststep NAME`, which
// fetches http://<host>/step/NAME from a Control server on the tap's host
// address; the host runs the step (for instance restarting the target) and
// answers when it is done.
//
// Handover scenarios (handover_test.go) put the guest and several tharsis
// nodes on one L2 segment (Segment): a bridge holding the guest's tap and
// one veth pair per node, whose other end is eth0 in the node's network
// namespace, where `tharsis run` runs with its own config, state dir and
// disks (Cluster). The guest runs the write-and-verify load of package
// writeload through the static helper guestio (built from
// vm-tests/guestio and added to each boot), which also times every
// write+fsync so that the guest reports its own I/O stalls.
//
// The scenarios live in *_test.go files behind the build tag vm:
//
//	go test -tags vm ./vm-tests/...
package vmtests
