package replicate

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"
)

// TestRoleScripts runs the role core through the scripts in testdata/role/:
// every line of input is one event (or a change of the facts an event
// carries) and the output is the Ready it produced, as etcd raft's
// interaction tests do. Rewrite the expectations with
//
//	go test ./replicate -run TestRoleScripts -rewrite
//
// and review the diff.
func TestRoleScripts(t *testing.T) {
	datadriven.Walk(t, "testdata/role", func(t *testing.T, path string) {
		h := &roleHarness{peers: map[string]*ResourceStatus{}}
		datadriven.RunTest(t, path, h.handle)
	})
}

type roleHarness struct {
	c     *RoleCore
	local LocalFacts
	peers map[string]*ResourceStatus
}

func (h *roleHarness) handle(t *testing.T, d *datadriven.TestData) string {
	args := map[string]string{}
	var flags []string
	for _, a := range d.CmdArgs {
		if len(a.Vals) == 0 {
			flags = append(flags, a.Key)
			continue
		}
		args[a.Key] = strings.Join(a.Vals, ",")
	}
	has := func(f string) bool {
		for _, x := range flags {
			if x == f {
				return true
			}
		}
		return false
	}
	list := func(k string) []string {
		if args[k] == "" {
			return nil
		}
		return strings.Split(args[k], ",")
	}
	num := func(k string, def int) int {
		if v, ok := args[k]; ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				d.Fatalf(t, "%s=%q: %v", k, v, err)
			}
			return n
		}
		return def
	}
	switch d.Cmd {
	case "new":
		cfg := RoleConfig{Node: args["node"], Resource: "r0", ConfigPrimary: args["primary"], Members: list("members"),
			StartTicks: num("start-ticks", 5), FreshTicks: num("fresh-ticks", 20), AckSecondaries: num("ack", 0), AckForever: args["ack-timeout"] == "forever"}
		if _, ok := args["connect"]; ok {
			cfg.Connect = list("connect")
		}
		h.c = NewRoleCore(cfg)
		h.local = LocalFacts{Consistent: true}
		return "ok"
	case "start":
		ev := EvStart{}
		if v, ok := args["des"]; ok {
			ev.Persisted = true
			ev.State.Designation = parseDes(t, d, v)
		}
		ev.State.Left = has("left")
		h.setLocal(t, d, args, flags)
		ev.Local = h.local
		h.c.Step(ev)
	case "local":
		h.setLocal(t, d, args, flags)
		h.c.Step(EvLocal{Local: h.local})
	case "peer":
		name := d.CmdArgs[0].Key
		if has("unreachable") {
			h.c.Step(EvPeer{Node: name, Facts: PeerFacts{Err: "connection refused"}})
			break
		}
		if has("none") {
			delete(h.peers, name)
			h.c.Step(EvPeer{Node: name, Facts: PeerFacts{Reachable: true}})
			break
		}
		s := h.peers[name]
		if s == nil {
			s = &ResourceStatus{Resource: "r0", Role: RoleSecondary, Phase: PhaseSecondary, Consistent: true}
			h.peers[name] = s
		}
		if v, ok := args["des"]; ok {
			s.Designation = parseDes(t, d, v)
		}
		if v, ok := args["phase"]; ok {
			if err := s.Phase.UnmarshalText([]byte(v)); err != nil {
				d.Fatalf(t, "%v", err)
			}
			s.Role = s.Phase.Role()
		}
		if _, ok := args["segs"]; ok {
			s.Segments = parseSegs(t, d, args["segs"])
		}
		if v, ok := args["sync"]; ok {
			var st SyncState
			if v == "none" {
				v = ""
			}
			if err := st.UnmarshalText([]byte(v)); err != nil {
				d.Fatalf(t, "%v", err)
			}
			s.Sync = nil
			if st != SyncNone {
				s.Sync = &SyncProgress{State: st, Compared: 10 << 20, Total: 64 << 20}
			}
		}
		s.Diverged = has("diverged")
		if v, ok := args["end"]; ok {
			s.End = parsePos(t, d, v)
		}
		if v, ok := args["source"]; ok {
			s.Source = v
		}
		if v, ok := args["ack"]; ok {
			// ack=K/TIMEOUT/STATE, as the primary reports it.
			f := strings.Split(v, "/")
			if len(f) != 3 {
				d.Fatalf(t, "ack=%q: want K/TIMEOUT/STATE", v)
			}
			k, _ := strconv.Atoi(f[0])
			s.Ack = &AckStatus{Secondaries: k, Timeout: f[1], State: AckState(f[2])}
		}
		cp := *s
		h.c.Step(EvPeer{Node: name, Facts: PeerFacts{Reachable: true, Status: &cp}})
	case "tick":
		for range num("n", 1) {
			h.c.Step(EvTick{})
		}
	case "cmd":
		cmd := Command{Force: has("force"), IgnoreSync: has("ignore-sync"), TimeoutTicks: num("timeout", 0)}
		for k := CmdPrimary; k <= CmdAttach; k++ {
			if has(k.String()) {
				cmd.Kind = k
			}
		}
		if cmd.Kind == 0 {
			d.Fatalf(t, "cmd needs primary, secondary, leave-resource, join-resource, detach or attach")
		}
		h.c.Step(EvCommand{ID: uint64(num("id", 1)), Cmd: cmd})
	case "msg", "send-failed":
		var k MsgKind
		if err := k.UnmarshalText([]byte(args["kind"])); err != nil {
			d.Fatalf(t, "%v", err)
		}
		m := RoleMessage{Kind: k, Resource: "r0", From: args["from"], To: args["to"], ID: args["id"], Reason: args["reason"]}
		if m.ID == "" && h.c.ho != nil {
			m.ID = h.c.ho.id
		}
		if v, ok := args["end"]; ok {
			m.End = parsePos(t, d, v)
		}
		if v, ok := args["des"]; ok {
			m.Designation = parseDes(t, d, v)
		}
		if v, ok := args["exports"]; ok {
			m.Exports = json.RawMessage(v)
		}
		if d.Cmd == "msg" {
			h.c.Step(EvMessage{Msg: m})
		} else {
			h.c.Step(EvSendFailed{Msg: m, Err: args["err"]})
		}
	case "switched":
		var r Role
		if err := r.UnmarshalText([]byte(args["role"])); err != nil {
			d.Fatalf(t, "%v", err)
		}
		ev := EvSwitched{Role: r, Err: args["err"]}
		if v, ok := args["end"]; ok {
			ev.End = parsePos(t, d, v)
		}
		if v, ok := args["exports"]; ok {
			ev.Exports = json.RawMessage(v)
		}
		if ev.Err == "" {
			h.local.Role = r
		}
		h.c.Step(ev)
	case "config":
		ev := EvConfig{Members: list("members"), ConfigPrimary: args["primary"], AckSecondaries: num("ack", 0), AckForever: args["ack-timeout"] == "forever"}
		if _, ok := args["connect"]; ok {
			ev.Connect = list("connect")
		}
		h.c.Step(ev)
	case "designation":
		// A fetch request from a peer carried its designation.
		h.c.Step(EvDesignation{From: args["from"], Designation: parseDes(t, d, args["des"])})
	case "ship":
		// Would the node ship its log to a fetcher of designation des
		// (none: a fetcher that does not say)?
		var f *Designation
		if v, ok := args["des"]; ok {
			x := parseDes(t, d, v)
			f = &x
		}
		if err := h.c.Status().RefuseShip(f); err != nil {
			return fmt.Sprintf("refused (stale %v): %v", errors.Is(err, ErrStaleDesignation), err)
		}
		return "shipped"
	case "status":
		return describeRoleStatus(h.c.Status())
	default:
		d.Fatalf(t, "unknown command %q", d.Cmd)
	}
	out := describeReady(h.c.Ready())
	h.c.Advance()
	return out
}

func (h *roleHarness) setLocal(t *testing.T, d *datadriven.TestData, args map[string]string, flags []string) {
	if v, ok := args["role"]; ok {
		if err := h.local.Role.UnmarshalText([]byte(v)); err != nil {
			d.Fatalf(t, "%v", err)
		}
	}
	if _, ok := args["segs"]; ok {
		h.local.Segments = parseSegs(t, d, args["segs"])
	}
	if v, ok := args["end"]; ok {
		h.local.End = parsePos(t, d, v)
	}
	if v, ok := args["source-end"]; ok {
		h.local.SourceEnd = parsePos(t, d, v)
	}
	if v, ok := args["unfetched"]; ok {
		h.local.Unfetched, _ = strconv.ParseInt(v, 10, 64)
	}
	if v, ok := args["lag"]; ok {
		h.local.LagSeconds, _ = strconv.ParseFloat(v, 64)
	}
	if v, ok := args["sync"]; ok {
		if v == "none" {
			v = ""
		}
		if err := h.local.Sync.UnmarshalText([]byte(v)); err != nil {
			d.Fatalf(t, "%v", err)
		}
	}
	for _, f := range flags {
		switch f {
		case "consistent":
			h.local.Consistent = true
		case "inconsistent":
			h.local.Consistent = false
		}
	}
}

// parseDes parses "alpha/3" (or "/3": no primary).
func parseDes(t *testing.T, d *datadriven.TestData, s string) Designation {
	name, gen, ok := strings.Cut(s, "/")
	g, err := strconv.ParseUint(gen, 10, 64)
	if !ok || err != nil {
		d.Fatalf(t, "designation %q: want NAME/GEN", s)
	}
	return Designation{Primary: name, Generation: g}
}

// parsePos parses "SEG/OFF/SEQ".
func parsePos(t *testing.T, d *datadriven.TestData, s string) Position {
	f := strings.Split(s, "/")
	if len(f) != 3 {
		d.Fatalf(t, "position %q: want SEG/OFF/SEQ", s)
	}
	seg, e1 := strconv.ParseUint(f[0], 10, 64)
	off, e2 := strconv.ParseInt(f[1], 10, 64)
	seq, e3 := strconv.ParseUint(f[2], 10, 64)
	if e1 != nil || e2 != nil || e3 != nil {
		d.Fatalf(t, "position %q: want SEG/OFF/SEQ", s)
	}
	return Position{Segment: seg, Offset: off, Seq: seq}
}

// parseSegs parses "1-alpha:1000s,2-alpha:500": segment number, writer,
// size, and s when sealed.
func parseSegs(t *testing.T, d *datadriven.TestData, s string) []SegmentSummary {
	var out []SegmentSummary
	for _, f := range strings.Split(s, ",") {
		if f == "" {
			continue
		}
		name, size, ok := strings.Cut(f, ":")
		seq, node, ok2 := strings.Cut(name, "-")
		sealed := strings.HasSuffix(size, "s")
		n, err := strconv.ParseInt(strings.TrimSuffix(size, "s"), 10, 64)
		q, err2 := strconv.ParseUint(seq, 10, 64)
		if !ok || !ok2 || err != nil || err2 != nil {
			d.Fatalf(t, "segment %q: want SEQ-NODE:SIZE[s]", f)
		}
		out = append(out, SegmentSummary{Name: SegmentName{Seq: q, Node: node}.String(), Size: n, Sealed: sealed})
	}
	return out
}

func fmtPos(p Position) string { return fmt.Sprintf("%d/%d/%d", p.Segment, p.Offset, p.Seq) }

func fmtDes(d Designation) string {
	s := fmt.Sprintf("%s/%d", d.Primary, d.Generation)
	if d.End != (Position{}) {
		s += " end=" + fmtPos(d.End)
	}
	return s
}

func describeReady(rd Ready) string {
	var b strings.Builder
	fmt.Fprintf(&b, "phase=%s role=%s serve=%v fetch=%v consistent=%v", rd.Phase, rd.Role, rd.Serve, rd.FetchFrom, rd.Consistent)
	if rd.Diverged {
		b.WriteString(" DIVERGED")
	}
	if rd.Unverified {
		b.WriteString(" UNVERIFIED")
	}
	if rd.Seal {
		b.WriteString(" seal")
	}
	if rd.Invalidate {
		b.WriteString(" invalidate")
	}
	if rd.Detached {
		b.WriteString(" DETACHED")
	}
	if rd.Exports != nil {
		fmt.Fprintf(&b, " exports=%s", rd.Exports)
	}
	b.WriteString("\n")
	if p := rd.Persist; p != nil {
		fmt.Fprintf(&b, "persist: des=%s", fmtDes(p.Designation))
		if p.Left {
			b.WriteString(" left")
		}
		if p.Detached {
			b.WriteString(" detached")
		}
		b.WriteString("\n")
	}
	for _, m := range rd.Messages {
		fmt.Fprintf(&b, "send %s → %s: id=%s des=%s", m.Kind, m.To, m.ID, fmtDes(m.Designation))
		if m.End != (Position{}) {
			fmt.Fprintf(&b, " end=%s", fmtPos(m.End))
		}
		if m.Reason != "" {
			fmt.Fprintf(&b, " reason=%q", m.Reason)
		}
		if m.Exports != nil {
			fmt.Fprintf(&b, " exports=%s", m.Exports)
		}
		b.WriteString("\n")
	}
	for _, r := range rd.Results {
		switch {
		case !r.Done:
			fmt.Fprintf(&b, "result %d progress: %s\n", r.ID, r.Text)
		case r.Err != "":
			fmt.Fprintf(&b, "result %d REFUSED: %s\n", r.ID, r.Err)
		default:
			fmt.Fprintf(&b, "result %d done: %s\n", r.ID, r.Text)
		}
	}
	for _, n := range rd.Notes {
		fmt.Fprintf(&b, "log %s: %s\n", n.Level, n.Msg)
	}
	return b.String()
}

func describeRoleStatus(st RoleStatus) string {
	var b strings.Builder
	fmt.Fprintf(&b, "phase=%s des=%s consistent=%v diverged=%v", st.Phase, fmtDes(st.Designation), st.Consistent, st.Diverged)
	if st.Handover != "" {
		fmt.Fprintf(&b, " handover=%s", st.Handover)
	}
	if st.Unverified {
		fmt.Fprintf(&b, " unverified (primary as %s)", fmtDes(st.StaleDesignation))
	}
	b.WriteString("\n")
	for _, f := range st.Forks {
		fmt.Fprintf(&b, "fork with %s at %s; loser %s\n", f.Peer, f.Fork.String(), f.Loser)
	}
	return b.String()
}
