// Package crashtest holds the process-level crash tests of the transaction
// log: they build cmd/tharsis, run `tharsis run` as a child, write through
// its NBD export with a small raw NBD client, SIGKILL it at random moments
// and check every acknowledged write after each restart. Test-only.
//
//	go test ./replicate/crashtest/ -run Crash -cycles 100 -v
//	go test ./replicate/crashtest/ -run Crash -cycles 100 -sync -v   # sync = true
//
// The daemon runs with the resource's default `sync = false` (acknowledged
// from the page cache, which a process kill keeps) unless -sync is given.
package crashtest
