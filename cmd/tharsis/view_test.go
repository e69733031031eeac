package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tharsis/tharsis/appliance"
	"github.com/tharsis/tharsis/replicate"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/ (review the diff)")

// The states below are built as a daemon reports them: node alpha is the
// primary of resource demo (log segment 1 of 8 MiB + 4 KiB, sealed, then
// segment 2), beta its secondary. Times are fixed so the output is.
var (
	t0   = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	seg1 = replicate.SegmentSummary{Name: "log-000000001-alpha", Size: 8<<20 + 4096, Sealed: true}
	// endA is the primary's log end: 8 MiB after endB.
	endA = replicate.Position{Segment: 2, Offset: 8192, Seq: 2050}
	endB = replicate.Position{Segment: 1, Offset: 12288, Seq: 3}
)

// primaryRS is alpha's replication status at endA.
func primaryRS() *replicate.ResourceStatus {
	return &replicate.ResourceStatus{Resource: "demo", Role: replicate.RolePrimary, Phase: replicate.PhasePrimary,
		Designation: replicate.Designation{Primary: "alpha", Generation: 1}, End: endA, Logged: endA, Applied: endA,
		Consistent: true, SourceEnd: endA, DiskCapacity: 64 << 20,
		Segments: []replicate.SegmentSummary{seg1, {Name: "log-000000002-alpha", Size: 8192}}}
}

// secondaryRS is beta's replication status, fetching from alpha and caught
// up at end.
func secondaryRS(end replicate.Position) replicate.ResourceStatus {
	segs := []replicate.SegmentSummary{seg1}
	if end.Segment == 2 {
		segs = append(segs, replicate.SegmentSummary{Name: "log-000000002-alpha", Size: end.Offset})
	} else {
		segs[0].Size, segs[0].Sealed = end.Offset, false
	}
	return replicate.ResourceStatus{Resource: "demo", Role: replicate.RoleSecondary, Phase: replicate.PhaseSecondary,
		Designation: replicate.Designation{Primary: "alpha", Generation: 1}, End: end, Logged: end, Applied: end,
		Consistent: true, Source: "alpha", SourceEnd: end, DiskCapacity: 64 << 20, Segments: segs}
}

// clusterStatus is alpha's status with beta's last polled status, received
// age ago (err: the last poll failed).
func clusterStatus(alpha *replicate.ResourceStatus, beta replicate.ResourceStatus, age time.Duration, err string) *appliance.Status {
	return &appliance.Status{Node: "alpha", Started: t0.Add(-time.Hour), Time: t0,
		Resources: []appliance.ResourceStatus{{Name: "demo", Role: alpha.Phase.String(), Disk: "/dev/vg0/demo", Size: 64 << 20, Replicated: true,
			Exports:     []appliance.ExportStatus{{Kind: "nbd", Name: "demo", Where: "0.0.0.0:10809"}},
			Log:         &replicate.Status{Current: "log-000000002-alpha", Written: endA, Logged: endA, Applied: endA, Persisted: endA, Segments: []replicate.SegmentStatus{{Name: seg1.Name, Size: seg1.Size, Sealed: true}, {Name: "log-000000002-alpha", Size: 8192}}},
			Replication: alpha}},
		Peers: []replicate.PeerState{{Peer: replicate.Peer{Name: "beta", Addr: "10.0.0.2:7777"},
			Status:  replicate.NodeStatus{Node: "beta", Time: t0.Add(-age), Resources: []replicate.ResourceStatus{beta}},
			Updated: t0.Add(-age), Err: err}},
	}
}

// viewStates are the states the goldens and the check tests cover.
func viewStates() map[string]*appliance.Status {
	states := map[string]*appliance.Status{}

	states["consistent"] = clusterStatus(primaryRS(), secondaryRS(endA), time.Second, "")

	syncing := secondaryRS(endA)
	syncing.Consistent, syncing.Applied = false, replicate.Position{Segment: 2, Offset: 0, Seq: 2040}
	syncing.Sync = &replicate.SyncProgress{State: replicate.SyncRunning, Source: "alpha", Compared: 16 << 20, Total: 64 << 20,
		Transferred: 4 << 20, Started: t0.Add(-10 * time.Second), ETASeconds: 30}
	syncing.FetchRate, syncing.ReplayRate = 2<<20, 0
	states["syncing"] = clusterStatus(primaryRS(), syncing, time.Second, "")

	paused := secondaryRS(endB)
	paused.FetchPaused, paused.ReplayPaused, paused.Source = true, true, ""
	states["paused"] = clusterStatus(primaryRS(), paused, time.Second, "")

	// beta was polled last 45 s ago, at endB, then its link went down
	// while alpha wrote 8 MiB: it is 8 MiB behind, not 0 B.
	states["disconnected"] = clusterStatus(primaryRS(), secondaryRS(endB), 45*time.Second,
		"dial tcp 10.0.0.2:7777: connect: no route to host")

	// beta answers, but its last status is 25 s old (slow polls).
	catching := secondaryRS(replicate.Position{Segment: 2, Offset: 4096, Seq: 2049})
	catching.FetchRate, catching.ReplayRate, catching.LagSeconds = 1.5*(1<<20), 1<<20, 0.4
	states["stale"] = clusterStatus(primaryRS(), catching, 25*time.Second, "")

	split := secondaryRS(endB)
	split.Diverged, split.Consistent, split.Source = true, false, ""
	split.Forks = []replicate.PeerFork{{Peer: "alpha", Loser: "beta", Fork: replicate.Fork{Segment: 2, Mine: "log-000000002-beta", Theirs: "log-000000002-alpha", MineAfter: 4096, TheirsAfter: 8192}}}
	alphaSplit := primaryRS()
	alphaSplit.Forks = []replicate.PeerFork{{Peer: "beta", Loser: "beta", Fork: replicate.Fork{Segment: 2, Mine: "log-000000002-alpha", Theirs: "log-000000002-beta", MineAfter: 8192, TheirsAfter: 4096}}}
	states["split-brain"] = clusterStatus(alphaSplit, split, time.Second, "")

	alphaEm := primaryRS()
	alphaEm.Emergency = &replicate.EmergencyState{Active: true, Since: t0.Add(-5 * time.Minute), At: endB, Chunks: 42}
	stopped := secondaryRS(endB)
	states["emergency"] = clusterStatus(alphaEm, stopped, time.Second, "")

	// Seen from beta: alpha, the primary, stopped answering 40 s ago.
	fromBeta := secondaryRS(endB)
	fromBeta.Source, fromBeta.LagSeconds = "", 40
	alphaOld := *primaryRS()
	alphaOld.End, alphaOld.Logged, alphaOld.Applied = replicate.Position{Segment: 1, Offset: 1 << 20, Seq: 256}, replicate.Position{Segment: 1, Offset: 1 << 20, Seq: 256}, replicate.Position{Segment: 1, Offset: 1 << 20, Seq: 256}
	alphaOld.Segments = []replicate.SegmentSummary{{Name: seg1.Name, Size: 1 << 20}}
	states["primary-unreachable"] = &appliance.Status{Node: "beta", Started: t0.Add(-time.Hour), Time: t0,
		Resources: []appliance.ResourceStatus{{Name: "demo", Role: "secondary", Disk: "/dev/vg0/demo", Size: 64 << 20, Replicated: true, Replication: &fromBeta}},
		Peers: []replicate.PeerState{{Peer: replicate.Peer{Name: "alpha", Addr: "10.0.0.1:7777"},
			Status:  replicate.NodeStatus{Node: "alpha", Time: t0.Add(-40 * time.Second), Resources: []replicate.ResourceStatus{alphaOld}},
			Updated: t0.Add(-40 * time.Second), Err: "status request to alpha (10.0.0.1:7777): i/o timeout"}},
	}
	return states
}

func TestViewGolden(t *testing.T) {
	for name, st := range viewStates() {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			renderView(&buf, appliance.NewView(st, appliance.DefaultStaleAfter))
			golden(t, filepath.Join("testdata", "view", name+".txt"), buf.Bytes())
		})
	}
}

// golden compares got with the file at path (or rewrites it with -update).
func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run `go test ./cmd/tharsis -run %s -update` and review the new file)", err, t.Name())
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s (rewrite with -update and review the diff)\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

// TestViewLagIsToThePrimarysEnd: a secondary whose link is down shows how
// far it is from the primary's log end, and how old that figure is.
func TestViewLagIsToThePrimarysEnd(t *testing.T) {
	v := appliance.NewView(viewStates()["disconnected"], appliance.DefaultStaleAfter)
	beta := v.Resources[0].Nodes[1]
	if beta.Node != "beta" || beta.BehindBytes != 8<<20 || !beta.BehindExact || beta.BehindRecords != endA.Seq-endB.Seq {
		t.Errorf("beta: %s behind (exact %v), %d records; want 8 MiB exactly, %d records", humanBytes(beta.BehindBytes), beta.BehindExact, beta.BehindRecords, endA.Seq-endB.Seq)
	}
	if !beta.Stale || beta.Reachable || beta.StatusAgeSeconds != 45 || beta.ReplicationState != "unreachable" || beta.DiskState != appliance.DiskOutdated {
		t.Errorf("beta: stale %v, reachable %v, age %v s, replication %s, disk %s; want stale, unreachable, 45 s, outdated",
			beta.Stale, beta.Reachable, beta.StatusAgeSeconds, beta.ReplicationState, beta.DiskState)
	}
	var buf bytes.Buffer
	renderView(&buf, v)
	for _, want := range []string{"8.0 MiB, 2047 rec", "as of 45s ago, STALE"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("view lacks %q:\n%s", want, buf.String())
		}
	}
}

// TestViewUnverified: a former primary that learned of a newer generation
// and has not compared its log with the new primary's yet says so.
func TestViewUnverified(t *testing.T) {
	beta := secondaryRS(endA)
	beta.Unverified = true
	v := appliance.NewView(clusterStatus(primaryRS(), beta, time.Second, ""), appliance.DefaultStaleAfter)
	if n := v.Resources[0].Nodes[1]; n.Node != "beta" || n.ReplicationState != "unverified" {
		t.Errorf("node %s: replication %q, want beta unverified", n.Node, n.ReplicationState)
	}
}
