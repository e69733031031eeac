package appliance

import (
	"fmt"
	"time"

	"github.com/tharsis/tharsis/replicate"
)

// ViewSchemaVersion is the version of the View JSON (`tharsis view --json`,
// written down in docs/view-json.md). It changes when a field is renamed or
// removed or changes its meaning; fields may be added without a change.
const ViewSchemaVersion = 1

// DefaultStaleAfter is the age beyond which a peer's status is marked stale
// (peers are polled every second).
const DefaultStaleAfter = 10 * time.Second

// Disk states of a node's copy of a resource (NodeView.DiskState).
const (
	DiskConsistent   = "consistent"   // consistent and holds the primary's log as far as known
	DiskOutdated     = "outdated"     // consistent, but behind the primary's log end
	DiskInconsistent = "inconsistent" // needs a full sync (or its sync has not caught up)
	DiskSyncing      = "syncing"      // a full sync is running (inconsistent until it ends)
	DiskSplitBrain   = "split-brain"  // its log forks from the current history
	DiskUnknown      = "unknown"      // the node never reported the resource
)

// View is the whole-cluster status `tharsis view` renders and prints as JSON:
// every field is always present (null or [] when empty), keys are
// snake_case. See docs/view-json.md.
type View struct {
	SchemaVersion int       `json:"schema_version"`
	Node          string    `json:"node"`       // the node that answered
	TakenAt       time.Time `json:"taken_at"`   // its clock when the status was taken
	StartedAt     time.Time `json:"started_at"` // when its daemon started
	// StaleAfterSeconds is the age beyond which a peer's status counts as
	// stale.
	StaleAfterSeconds float64 `json:"stale_after_seconds"`
	// SyncRateLimit and FetchRateLimit are the node's [limits] in bytes per
	// second (0: none).
	SyncRateLimit  int64 `json:"sync_rate_limit_bytes_per_second"`
	FetchRateLimit int64 `json:"fetch_rate_limit_bytes_per_second"`
	// DeletedResources are resources delete-resource removed on this node
	// that the config still names.
	DeletedResources []string       `json:"deleted_resources"`
	Resources        []ResourceView `json:"resources"`
}

// ResourceView is one resource across the cluster, as the answering node
// sees it.
type ResourceView struct {
	Name string `json:"name"`
	// Role is the answering node's phase (ResourceStatus.Role).
	Role       string `json:"role"`
	Disk       string `json:"disk"`
	SizeBytes  int64  `json:"size_bytes"`
	Replicated bool   `json:"replicated"`
	// DesignatedPrimary and Generation are the designation the answering
	// node knows ("" and 0 for an unreplicated resource, "" when no node
	// is designated).
	DesignatedPrimary string `json:"designated_primary"`
	Generation        uint64 `json:"generation"`
	// PrimaryLogEnd is the furthest log end known of the current history
	// (normally the primary's own report; null when unknown) and
	// PrimaryLogEndAgeSeconds the age of the report it comes from.
	PrimaryLogEnd           *replicate.Position `json:"primary_log_end"`
	PrimaryLogEndAgeSeconds float64             `json:"primary_log_end_age_seconds"`
	// PrimaryReachable: the designated primary's status is current.
	PrimaryReachable bool           `json:"primary_reachable"`
	Exports          []ExportStatus `json:"exports"`
	ExportError      string         `json:"export_error"`
	// Log is the transaction log on the answering node when it is the
	// primary (null elsewhere).
	Log         *LogView         `json:"log"`
	Nodes       []NodeView       `json:"nodes"`
	SplitBrains []SplitBrainView `json:"split_brains"`
	// Emergency: the primary writes without the log (emergency mode).
	Emergency bool `json:"emergency"`
	// AckFallback: the primary fell back to asynchronous acknowledgement
	// (fewer than ack_secondaries secondaries acknowledged within
	// ack_timeout).
	AckFallback bool `json:"ack_fallback"`
	// Work is what is running, Todo what needs the operator, Hints what
	// could be done; one sentence each.
	Work  []string `json:"work"`
	Todo  []string `json:"todo"`
	Hints []string `json:"hints"`
}

// LogView sums up the primary's transaction log.
type LogView struct {
	CurrentSegment     string `json:"current_segment"`
	Segments           int    `json:"segments"`
	Bytes              int64  `json:"bytes"`
	PendingReplayBytes int64  `json:"pending_replay_bytes"` // what a restart would replay
	// UnappliedRecords and UnappliedBytes: writes acknowledged (in the log)
	// and not yet applied to the disk, and the memory they hold.
	UnappliedRecords int    `json:"unapplied_records"`
	UnappliedBytes   int64  `json:"unapplied_bytes"`
	Error            string `json:"error"`
}

// NodeView is one node's copy of a resource.
type NodeView struct {
	Node     string `json:"node"`
	ThisNode bool   `json:"this_node"` // the answering node
	// Reachable: the last poll of the node answered (always true for the
	// answering node). StatusAgeSeconds is how old the figures below are;
	// Stale says they are older than StaleAfterSeconds or the node does
	// not answer; StatusError is the error of the last poll.
	Reachable        bool    `json:"reachable"`
	StatusAgeSeconds float64 `json:"status_age_seconds"`
	Stale            bool    `json:"stale"`
	StatusError      string  `json:"status_error"`
	// Role is the node's phase ("unknown" when it never reported).
	Role       string `json:"role"`
	Generation uint64 `json:"generation"`
	// DiskState is one of the Disk* constants; ReplicationState one of
	// primary, replicating, syncing, sync-needed, paused, stopped-at-mark,
	// disconnected, split-brain, unverified, detached, starting,
	// handing-over, promoting, left, stale, unreachable.
	DiskState        string `json:"disk_state"`
	ReplicationState string `json:"replication_state"`
	Source           string `json:"source"` // the peer it fetches from ("": none)
	// LogEnd is the durable end of its log (fetched, on a secondary) and
	// Applied what its disk holds.
	LogEnd  replicate.Position `json:"log_end"`
	Applied replicate.Position `json:"applied"`
	// BehindBytes, BehindRecords and BehindSeconds are how far Applied is
	// from PrimaryLogEnd; UnfetchedBytes how far LogEnd is. BehindExact is
	// false when a segment in between is unknown (the bytes are a lower
	// bound). BehindSeconds is the node's own lag when its status was
	// taken plus the status's age when it is behind: an upper bound.
	BehindBytes    int64   `json:"behind_bytes"`
	BehindRecords  uint64  `json:"behind_records"`
	BehindSeconds  float64 `json:"behind_seconds"`
	BehindExact    bool    `json:"behind_exact"`
	UnfetchedBytes int64   `json:"unfetched_bytes"`
	// FetchRate and ReplayRate are log bytes per second over the last 10 s.
	FetchRate  float64 `json:"fetch_bytes_per_second"`
	ReplayRate float64 `json:"replay_bytes_per_second"`
	// FetchLogBytes and FetchWireBytes are the log fetched since the node's
	// daemon opened the resource and its bytes on the network (fewer when
	// the source compresses); FetchCompression is the current stream's
	// compression ("zstd", or "": none).
	FetchLogBytes    int64  `json:"fetch_log_bytes"`
	FetchWireBytes   int64  `json:"fetch_wire_bytes"`
	FetchCompression string `json:"fetch_compression"`
	FetchPaused      bool   `json:"fetch_paused"`
	ReplayPaused     bool   `json:"replay_paused"`
	SyncPaused       bool   `json:"sync_paused"`
	// Sync is a full sync running or needed (null: none); LastSync the
	// last one finished since its daemon started.
	Sync     *replicate.SyncProgress `json:"sync"`
	LastSync *replicate.SyncProgress `json:"last_sync"`
	// Verify is the running or last online verify (null: none).
	Verify *replicate.VerifyReport `json:"verify"`
	// Handover names the other node of a handover under way.
	Handover string `json:"handover"`
	// Detached: its disk is detached (`tharsis detach`): no replay, no
	// exports.
	Detached  bool                      `json:"detached"`
	Emergency *replicate.EmergencyState `json:"emergency"`
	// Ack is the primary's synchronous acknowledgement (null: off, or not
	// the primary).
	Ack           *replicate.AckStatus `json:"ack"`
	StoppedAtMark *replicate.Position  `json:"stopped_at_mark"`
	Released      []replicate.Release  `json:"released"`
	Damage        []replicate.Damage   `json:"damage"`
	DiskCapacity  int64                `json:"disk_capacity_bytes"`
	Error         string               `json:"error"`
}

// SplitBrainView is a fork between two nodes' logs.
type SplitBrainView struct {
	Nodes []string `json:"nodes"` // the two nodes, sorted
	// Loser is the node not on the current history.
	Loser string `json:"loser"`
	// ForkSegment is the first segment that differs; Fork describes it.
	ForkSegment uint64 `json:"fork_segment"`
	Fork        string `json:"fork"`
}

// NewView builds the cluster view from a node's status: each node's
// position relative to the primary's log end, the ages of the peers'
// statuses (stale beyond staleAfter; 0: DefaultStaleAfter), and the WORK,
// TODO and HINT lines.
func NewView(st *Status, staleAfter time.Duration) *View {
	if staleAfter <= 0 {
		staleAfter = DefaultStaleAfter
	}
	v := &View{SchemaVersion: ViewSchemaVersion, Node: st.Node, TakenAt: st.Time, StartedAt: st.Started,
		StaleAfterSeconds: staleAfter.Seconds(), SyncRateLimit: st.SyncRate, FetchRateLimit: st.FetchRate,
		DeletedResources: append([]string{}, st.Deleted...), Resources: []ResourceView{}}
	for _, r := range st.Resources {
		v.Resources = append(v.Resources, newResourceView(st, r, staleAfter))
	}
	return v
}

// nodeInput is what is known of one node's copy of a resource.
type nodeInput struct {
	name, addr string
	rs         *replicate.ResourceStatus
	this       bool
	heard      bool          // its status was ever received
	age        time.Duration // of its status
	err        string        // of the last poll
}

func newResourceView(st *Status, r ResourceStatus, staleAfter time.Duration) ResourceView {
	rv := ResourceView{Name: r.Name, Role: r.Role, Disk: r.Disk, SizeBytes: r.Size, Replicated: r.Replicated,
		Exports: r.Exports, ExportError: r.ExportError, Nodes: []NodeView{}, SplitBrains: []SplitBrainView{},
		Work: []string{}, Todo: []string{}, Hints: []string{}}
	if rv.Exports == nil {
		rv.Exports = []ExportStatus{}
	}
	if l := r.Log; l != nil {
		lv := &LogView{CurrentSegment: l.Current, Segments: len(l.Segments), PendingReplayBytes: l.PendingReplay,
			UnappliedRecords: l.UnappliedRecords, UnappliedBytes: l.UnappliedBytes, Error: l.Err}
		for _, s := range l.Segments {
			lv.Bytes += s.Size
		}
		rv.Log = lv
	}
	if r.Replication == nil {
		return rv
	}
	d := r.Replication.Designation
	rv.DesignatedPrimary, rv.Generation = d.Primary, d.Generation

	// One input per node that holds the resource: this one, then peers.
	ins := []nodeInput{{name: st.Node, rs: r.Replication, this: true, heard: true}}
	for _, p := range st.Peers {
		in := nodeInput{name: p.Peer.Name, addr: p.Peer.Addr, heard: !p.Updated.IsZero(), err: p.Err}
		if in.heard {
			in.age = max(0, st.Time.Sub(p.Updated))
		}
		if rs, ok := p.Status.Resource(r.Name); ok && in.heard {
			in.rs = &rs
		} else if p.Err == "" {
			continue // it answers and does not hold the resource
		}
		ins = append(ins, in)
	}

	// The primary's log end: the furthest end any node on the current
	// history reports (none can be ahead of the primary).
	var segs []replicate.SegmentSummary
	var end *replicate.Position
	var endAge time.Duration
	note := func(p replicate.Position, age time.Duration) {
		if end == nil || p.Seq > end.Seq || (p.Seq == end.Seq && age < endAge) {
			pp := p
			end, endAge = &pp, age
		}
	}
	for _, in := range ins {
		if in.rs == nil || in.rs.Diverged {
			continue
		}
		segs = append(segs, in.rs.Segments...)
		note(in.rs.End, in.age)
		if d.Primary != "" && in.rs.Source == d.Primary {
			note(in.rs.SourceEnd, in.age)
		}
		if in.name == d.Primary {
			rv.PrimaryReachable = in.err == "" && in.age <= staleAfter
		}
	}
	if d.Primary == "" && d.End.Seq > 0 {
		note(d.End, 0)
	}
	rv.PrimaryLogEnd, rv.PrimaryLogEndAgeSeconds = end, endAge.Seconds()

	for _, in := range ins {
		rv.Nodes = append(rv.Nodes, newNodeView(in, end, segs, staleAfter))
	}
	for _, n := range rv.Nodes {
		if n.Emergency != nil && n.Emergency.Active {
			rv.Emergency = true
		}
		if n.Ack != nil && n.Ack.State == replicate.AckFallback && n.Node == rv.DesignatedPrimary {
			rv.AckFallback = true
		}
	}
	rv.SplitBrains = splitBrains(ins)
	rv.Work, rv.Todo, rv.Hints = append(rv.Work, work(rv)...), append(rv.Todo, todo(rv, ins)...), append(rv.Hints, hints(rv)...)
	return rv
}

func newNodeView(in nodeInput, end *replicate.Position, segs []replicate.SegmentSummary, staleAfter time.Duration) NodeView {
	n := NodeView{Node: in.name, ThisNode: in.this, Reachable: in.this || (in.heard && in.err == ""),
		StatusAgeSeconds: in.age.Seconds(), StatusError: in.err, Role: "unknown",
		DiskState: DiskUnknown, ReplicationState: "unreachable", BehindExact: true,
		Released: []replicate.Release{}, Damage: []replicate.Damage{}}
	n.Stale = !in.this && (!n.Reachable || in.age > staleAfter)
	rs := in.rs
	if rs == nil {
		n.BehindExact = false
		return n
	}
	n.Role, n.Generation = rs.Phase.String(), rs.Designation.Generation
	n.Source, n.LogEnd, n.Applied = rs.Source, rs.End, rs.Applied
	n.FetchRate, n.ReplayRate = rs.FetchRate, rs.ReplayRate
	n.FetchLogBytes, n.FetchWireBytes, n.FetchCompression = rs.FetchLogBytes, rs.FetchWireBytes, rs.FetchCompression
	n.FetchPaused, n.ReplayPaused, n.SyncPaused = rs.FetchPaused, rs.ReplayPaused, rs.SyncPaused
	n.Sync, n.LastSync, n.Verify, n.Handover, n.Detached = rs.Sync, rs.LastSync, rs.Verify, rs.Handover, rs.Detached
	n.Emergency, n.StoppedAtMark, n.DiskCapacity, n.Error = rs.Emergency, rs.StoppedAtMark, rs.DiskCapacity, rs.Err
	n.Ack = rs.Ack
	n.Released = append(n.Released, rs.Released...)
	n.Damage = append(n.Damage, rs.Damage...)
	if end != nil && !rs.Diverged {
		if end.Seq > rs.Applied.Seq {
			n.BehindRecords = end.Seq - rs.Applied.Seq
		}
		n.BehindBytes, n.BehindExact = replicate.LogBytes(rs.Applied, *end, segs)
		n.UnfetchedBytes, _ = replicate.LogBytes(rs.End, *end, segs)
		if n.BehindRecords > 0 {
			n.BehindSeconds = rs.LagSeconds + in.age.Seconds()
		}
	}
	syncing := rs.Sync != nil && (rs.Sync.State == replicate.SyncRunning || rs.Sync.State == replicate.SyncCatchingUp)
	switch {
	case rs.Diverged:
		n.DiskState = DiskSplitBrain
	case syncing:
		n.DiskState = DiskSyncing
	case !rs.Consistent:
		n.DiskState = DiskInconsistent
	case n.BehindRecords > 0 || rs.StoppedAtMark != nil:
		n.DiskState = DiskOutdated
	default:
		n.DiskState = DiskConsistent
	}
	switch {
	case !n.Reachable:
		n.ReplicationState = "unreachable"
	case n.Stale:
		n.ReplicationState = "stale"
	case rs.Detached:
		n.ReplicationState = "detached"
	case rs.Phase != replicate.PhaseSecondary:
		n.ReplicationState = rs.Phase.String()
	case rs.Diverged:
		n.ReplicationState = "split-brain"
	case rs.Unverified:
		n.ReplicationState = "unverified"
	case syncing:
		n.ReplicationState = "syncing"
	case rs.Sync != nil && rs.Sync.State == replicate.SyncNeeded:
		n.ReplicationState = "sync-needed"
	case rs.FetchPaused || rs.ReplayPaused:
		n.ReplicationState = "paused"
	case rs.StoppedAtMark != nil:
		n.ReplicationState = "stopped-at-mark"
	case rs.Source == "":
		n.ReplicationState = "disconnected"
	default:
		n.ReplicationState = "replicating"
	}
	return n
}

// splitBrains lists every fork any node reports, once per pair.
func splitBrains(ins []nodeInput) []SplitBrainView {
	out := []SplitBrainView{}
	seen := map[string]bool{}
	for _, in := range ins {
		if in.rs == nil {
			continue
		}
		for _, f := range in.rs.Forks {
			a, b := in.name, f.Peer
			if a > b {
				a, b = b, a
			}
			if seen[a+"|"+b] {
				continue
			}
			seen[a+"|"+b] = true
			out = append(out, SplitBrainView{Nodes: []string{a, b}, Loser: f.Loser, ForkSegment: f.Segment, Fork: f.Fork.String()})
		}
	}
	return out
}

// work says what is running.
func work(rv ResourceView) []string {
	var out []string
	for _, n := range rv.Nodes {
		if n.Stale {
			continue
		}
		if s := n.Sync; s != nil && (s.State == replicate.SyncRunning || s.State == replicate.SyncCatchingUp) {
			line := fmt.Sprintf("%s: full sync %s from %s, %.1f%% compared", n.Node, s.State, orNone(s.Source), percent(s.Compared, s.Total))
			if s.ETASeconds > 0 {
				line += fmt.Sprintf(", ETA %s", (time.Duration(s.ETASeconds) * time.Second).String())
			}
			out = append(out, line)
		} else if n.ReplicationState == "replicating" && n.BehindRecords > 0 {
			out = append(out, fmt.Sprintf("%s catches up from %s: %s behind", n.Node, n.Source, behindText(n)))
		}
		if v := n.Verify; v != nil && v.State == replicate.VerifyRunning {
			out = append(out, fmt.Sprintf("%s: verify against %s, %.1f%% compared", n.Node, orNone(v.Source), percent(v.Compared, v.Total)))
		}
		if n.Handover != "" && n.ThisNode {
			out = append(out, fmt.Sprintf("handover between %s and %s", n.Node, n.Handover))
		}
	}
	return out
}

// todo says what needs the operator, and how.
func todo(rv ResourceView, ins []nodeInput) []string {
	res := rv.Name
	var out []string
	if rv.DesignatedPrimary == "" {
		out = append(out, fmt.Sprintf("no node is designated primary: run `tharsis primary %s` on the node that should serve", res))
	}
	for _, sb := range rv.SplitBrains {
		out = append(out, fmt.Sprintf("SPLIT BRAIN between %s and %s (%s): %s is not on the current history; run `tharsis invalidate %s` there (discards what it wrote after the fork, then a fast full sync), or `tharsis leave-resource %s` to keep its disk for inspection",
			sb.Nodes[0], sb.Nodes[1], sb.Fork, sb.Loser, res, res))
	}
	for i, n := range rv.Nodes {
		if !n.Reachable {
			where := ""
			if a := ins[i].addr; a != "" {
				where = " at " + a
			}
			out = append(out, fmt.Sprintf("%s does not answer%s (%s): check that its daemon runs and the replication address is reachable; its figures are %s", n.Node, where, n.StatusError, ageText(n)))
		} else if n.Stale {
			out = append(out, fmt.Sprintf("the status of %s is %s: it answers slowly; check its load and the network", n.Node, ageText(n)))
		}
		if em := n.Emergency; em != nil && em.Active {
			out = append(out, fmt.Sprintf("EMERGENCY on %s since %s: the log filesystem is full and writes go to the disk without the log (%d chunk%s so far); free space in the log directory (`tharsis log-delete-all %s`, a larger filesystem): the log resumes by itself; then run `tharsis invalidate %s` on each secondary",
				n.Node, em.Since.Format("15:04:05"), em.Chunks, plural(em.Chunks), res, res))
		} else if em != nil && len(em.Marks) > 0 {
			out = append(out, fmt.Sprintf("emergency on %s is over (mark at #%d): %d chunk%s written without the log; secondaries stopped at the mark need `tharsis invalidate %s` (copies only those chunks)",
				n.Node, em.Marks[len(em.Marks)-1].Seq, em.Chunks, pluralVerb(em.Chunks), res))
		}
		if a := n.Ack; a != nil && a.State == replicate.AckFallback {
			out = append(out, fmt.Sprintf("ASYNCHRONOUS on %s since %s: fewer than %d secondar%s acknowledged a write within ack_timeout = %s, so writes are acknowledged without them (a forced failover may lose them); check the secondaries' replication (fetching, reachable): it is synchronous again once %d of them hold every acknowledged write",
				n.Node, a.Since.Format("15:04:05"), a.Secondaries, map[bool]string{true: "y", false: "ies"}[a.Secondaries == 1], a.Timeout, a.Secondaries))
		}
		if n.Detached {
			out = append(out, fmt.Sprintf("%s: disk detached; run `tharsis attach %s` there to use it again", n.Node, res))
		}
		if p := n.StoppedAtMark; p != nil {
			out = append(out, fmt.Sprintf("%s STOPPED at the primary's emergency mark (#%d): consistent but outdated; run `tharsis invalidate %s` there (copies only the chunks written without the log)", n.Node, p.Seq+1, res))
		}
		for _, sw := range []struct {
			on   bool
			what string
		}{{n.FetchPaused, "fetch"}, {n.ReplayPaused, "replay"}, {n.SyncPaused, "sync"}} {
			if sw.on {
				out = append(out, fmt.Sprintf("%s: %s paused; run `tharsis resume-%s %s` there to go on", n.Node, sw.what, sw.what, res))
			}
		}
		if n.DiskState == DiskInconsistent && n.Sync != nil && n.Sync.State == replicate.SyncNeeded && !n.SyncPaused && n.Reachable {
			out = append(out, fmt.Sprintf("%s is inconsistent and waits for a full sync source: make the primary reachable from it", n.Node))
		}
		for _, d := range n.Damage {
			if !d.Restored {
				out = append(out, fmt.Sprintf("%s: damaged log %s at offset %d: %s; %s", n.Node, d.Segment, d.Offset, d.Reason, d.Action))
			}
		}
	}
	return out
}

// hints says what could be done.
func hints(rv ResourceView) []string {
	smallest := int64(-1)
	for _, n := range rv.Nodes {
		if n.DiskCapacity == 0 {
			return nil
		}
		if smallest < 0 || n.DiskCapacity < smallest {
			smallest = n.DiskCapacity
		}
	}
	if smallest-smallest%512 > rv.SizeBytes {
		return []string{fmt.Sprintf("every disk is larger than the resource (the smallest has %s): `tharsis resize %s` on the primary grows it online", HumanBytes(smallest), rv.Name)}
	}
	return nil
}

// behindText says how far a node is behind the primary's log end.
func behindText(n NodeView) string {
	b := HumanBytes(n.BehindBytes)
	if !n.BehindExact {
		b = "≥ " + b
	}
	return fmt.Sprintf("%s, %d record%s, %s", b, n.BehindRecords, plural(int(n.BehindRecords)), AgeText(n.BehindSeconds))
}

// ageText says how old a node's figures are.
func ageText(n NodeView) string {
	if n.ThisNode {
		return "current"
	}
	if n.Role == "unknown" {
		return "unknown (never heard from it)"
	}
	return fmt.Sprintf("as of %s ago", AgeText(n.StatusAgeSeconds))
}

func percent(done, total int64) float64 {
	if total <= 0 {
		return 0
	}
	return 100 * float64(done) / float64(total)
}

func orNone(s string) string {
	if s == "" {
		return "no source yet"
	}
	return s
}

// pluralVerb is "s was" or "s were" after a count of n chunks.
func pluralVerb(n int) string {
	if n == 1 {
		return " was"
	}
	return "s were"
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// HumanBytes formats n with one decimal in binary units ("1.5 MiB").
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}

// AgeText formats an age in seconds for operators ("3s", "2m5s").
func AgeText(seconds float64) string {
	return time.Duration(seconds * float64(time.Second)).Round(time.Second).String()
}
