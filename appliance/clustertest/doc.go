// Package clustertest runs tharsis clusters across network namespaces: three
// nodes (alpha, beta, gamma), each `tharsis run` in its own namespace, joined
// by veth pairs to a bridge in another one. The tests write through the
// primary's NBD export, cut links, kill -9 and restart nodes, and check what
// issue 6 promises: every secondary converges to the primary's bytes, catches
// up after a link cut without a full sync, falls back along its connect list
// and returns, fetches in cascade, transfers only differing chunks when it
// joins, refuses a peer with another secret, and always holds the primary's
// state after some prefix of the acknowledged writes.
//
// The package holds only tests (and this file). They need root and ip(8);
// without them they skip, or fail when THARSIS_REQUIRE_PEERS=1 (CI).
//
//	go test ./appliance/clustertest/                 # all, about 2-3 minutes
//	go test ./appliance/clustertest/ -run Prefix -v  # one
//	go test ./appliance/clustertest/ -keep           # leave the temp dir (configs, disks, logs)
package clustertest
