package replicate

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
)

// The role core: the per-resource state of this node's role (designated
// primary and its generation, phase, what it knows of its own log and of its
// peers' logs) as a value that only Step changes. Step does no I/O, starts
// no goroutine and reads no clock (time is counted in ticks); what the node
// must do comes out of Ready (persist this, switch the data path, seal the
// log, serve or stop the exports, fetch from these peers, send these
// messages, answer the operator, log this), which the caller carries out
// before it calls Advance and feeds the outcomes back as events. The
// appliance drives it (appliance/role.go); replicate/testdata/*.txt script
// it (role_test.go).
//
// The transitions:
//
//	starting ──peers heard or StartTicks──▶ primary | secondary | left
//	secondary ──primary (planned)──▶ promoting ──old primary sealed at E,
//	    fetched exactly to E──▶ primary            (timeout/refusal ▶ secondary)
//	primary ──handover request──▶ handing-over ──done──▶ secondary
//	                                           ──abort──▶ primary
//	primary ──secondary──▶ handing-over (resign) ──sealed──▶ secondary
//	secondary ──primary --force──▶ primary (generation + 1)
//	primary ──a newer designation learned──▶ secondary (the old side of a split)
//	secondary ──leave──▶ left ──join──▶ secondary (full sync)

// RoleConfig is the static part of a role core.
type RoleConfig struct {
	Node     string
	Resource string
	// ConfigPrimary is the config's `primary`: it seeds the designation at
	// generation 0 on a node that never persisted one.
	ConfigPrimary string
	// Members are the other nodes that hold a disk of the resource.
	Members []string
	// Connect is this node's explicit connect list (nil: none, fetch from
	// the designated primary).
	Connect []string
	// StartTicks bounds the wait for the peers' designations at start.
	StartTicks int
	// FreshTicks: a peer not heard from for longer is unreachable.
	FreshTicks int
	// AckSecondaries and AckForever are the resource's ack_secondaries
	// and ack_timeout = "forever" (synchronous acknowledgement): with
	// both, primary --force can prove that no acknowledged write is lost
	// (ackProof).
	AckSecondaries int
	AckForever     bool
}

// LocalFacts is what the data path reports of this node's copy.
type LocalFacts struct {
	Role       Role             // what the data path runs (RoleNone: closed)
	Segments   []SegmentSummary // the local log, oldest first
	End        Position         // durable end of the local log
	Applied    Position         // applied (primary) or replayed (secondary)
	Consistent bool             // the data device equals its log's state after a prefix
	Sync       SyncState
	// Secondary only: the source's log end seen last, the log bytes between
	// End and it, and the lag in seconds.
	SourceEnd  Position
	Unfetched  int64
	LagSeconds float64
}

// PeerFacts is what a status poll of a peer gave.
type PeerFacts struct {
	Reachable bool
	Err       string
	// Status is the peer's status of the resource (nil: it reports none).
	Status *ResourceStatus
}

// CmdKind is an operator command the core carries out.
type CmdKind uint8

// Commands.
const (
	CmdPrimary   CmdKind = iota + 1 // `tharsis primary [--force] RES`
	CmdSecondary                    // `tharsis secondary RES`
	CmdLeave                        // `tharsis leave-resource RES`
	CmdJoin                         // `tharsis join-resource RES` after a leave
	CmdDetach                       // `tharsis detach RES`
	CmdAttach                       // `tharsis attach RES`
)

var cmdNames = [...]string{"", "primary", "secondary", "leave-resource", "join-resource", "detach", "attach"}

func (k CmdKind) String() string { return enumName(cmdNames[:], "cmd", k) }

// Command is an operator command.
type Command struct {
	Kind       CmdKind
	Force      bool // primary --force
	IgnoreSync bool // primary --ignore-sync
	// TimeoutTicks bounds a planned handover (0: 600 ticks).
	TimeoutTicks int
}

// MsgKind is the kind of a message between the role cores of two nodes.
type MsgKind uint8

// Messages of a planned handover.
const (
	MsgHandoverRequest MsgKind = iota + 1 // new → old primary: give me the role
	MsgHandoverSealed                     // old → new: exports stopped, log sealed at End
	MsgHandoverRefused                    // old → new: no (Reason)
	MsgHandoverAbort                      // new → old: the handover is off, serve again
	MsgHandoverDone                       // new → old: I serve, here is the new Designation
)

var msgNames = [...]string{"", "handover-request", "handover-sealed", "handover-refused", "handover-abort", "handover-done"}

// String returns the kind's name.
func (k MsgKind) String() string { return enumName(msgNames[:], "msg", k) }

// MarshalText implements encoding.TextMarshaler.
func (k MsgKind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (k *MsgKind) UnmarshalText(b []byte) error {
	v, err := parseEnum[MsgKind](msgNames[:], "role message", 1, b)
	*k = v
	return err
}

// RoleMessage travels between the role cores of two nodes (over the
// authenticated replication link, wire.Role).
type RoleMessage struct {
	Kind     MsgKind `json:"kind"`
	Resource string  `json:"resource"`
	From     string  `json:"from"`
	To       string  `json:"to"`
	// ID names one handover attempt.
	ID          string      `json:"id"`
	Designation Designation `json:"designation"`
	End         Position    `json:"end,omitzero"`
	Reason      string      `json:"reason,omitempty"`
	// Exports is the old primary's export state of the resource as it
	// was when its exports stopped (handover-sealed only): opaque to
	// replicate, see EvSwitched.Exports and Ready.Exports.
	Exports json.RawMessage `json:"exports,omitempty"`
}

// Events fed to Step.
type (
	// Event is one input of the role core.
	Event interface{ isEvent() }
	// EvStart starts the core with what the node persisted (ok false:
	// nothing yet) and its local facts.
	EvStart struct {
		State     RoleState
		Persisted bool
		Local     LocalFacts
	}
	// EvTick moves time on by one tick.
	EvTick struct{}
	// EvLocal refreshes the local facts.
	EvLocal struct{ Local LocalFacts }
	// EvPeer is the outcome of a status poll of a peer.
	EvPeer struct {
		Node  string
		Facts PeerFacts
	}
	// EvCommand is an operator command; its outcome comes back in
	// Ready.Results under ID.
	EvCommand struct {
		ID  uint64
		Cmd Command
	}
	// EvMessage is a message from a peer's role core.
	EvMessage struct{ Msg RoleMessage }
	// EvSendFailed reports that a message could not be delivered.
	EvSendFailed struct {
		Msg RoleMessage
		Err string
	}
	// EvConfig carries a reloaded config's part of the resource: the other
	// nodes holding a disk of it, this node's connect list (nil: none) and
	// the config's primary.
	EvConfig struct {
		Members        []string
		Connect        []string
		ConfigPrimary  string
		AckSecondaries int
		AckForever     bool
	}
	// EvSwitched reports that the data path now runs Role (after a switch
	// asked for by Ready.Role); End is where the log was sealed when Seal
	// was asked; Err is set when the switch failed (the data path then
	// runs what it ran before).
	//
	// Exports, when the switch left the primary role, is the state the
	// resource's exports had when they stopped (e.g. AoE reservations and
	// Mac Mask lists): the core hands it to the node taking over with
	// where the log was sealed, and that node gets it in Ready.Exports.
	EvSwitched struct {
		Role    Role
		End     Position
		Err     string
		Exports json.RawMessage
	}
	// EvDesignation is a peer's designation learned outside a status poll:
	// a fetch request carries the fetcher's (see RoleStatus.RefuseShip).
	// A newer one is adopted at once, as from a status.
	EvDesignation struct {
		From        string
		Designation Designation
	}
)

func (EvStart) isEvent()       {}
func (EvTick) isEvent()        {}
func (EvLocal) isEvent()       {}
func (EvPeer) isEvent()        {}
func (EvCommand) isEvent()     {}
func (EvMessage) isEvent()     {}
func (EvSendFailed) isEvent()  {}
func (EvSwitched) isEvent()    {}
func (EvConfig) isEvent()      {}
func (EvDesignation) isEvent() {}

// Result is progress (Done false) or the outcome of an operator command.
type Result struct {
	ID   uint64
	Done bool
	Err  string // Done and failed
	Text string
}

// Note is something to log.
type Note struct {
	Level slog.Level
	Msg   string
}

// Ready is what the core wants done: the wanted state (Phase, Role, Serve,
// FetchFrom, Consistent, Diverged; the caller reconciles towards it) and the
// one-shot work collected since the last Advance (Persist first, then the
// rest, as raft's Ready: persist before you send).
type Ready struct {
	Persist *RoleState
	Phase   Phase
	// Role is the data-path role wanted. When it leaves RolePrimary with
	// Seal set, the log's current segment is sealed after the exports
	// stopped and in-flight requests were answered; EvSwitched.End reports
	// where.
	Role Role
	Seal bool
	// Serve: the resource's exports are served (only with RolePrimary; start
	// them after the switch, stop them before).
	Serve bool
	// Detached: the data device is not to be used (`tharsis detach`). A
	// detached primary runs no data path (Role is RoleNone; the log is
	// closed, not sealed) and serves nothing; a detached secondary fetches
	// but neither replays nor syncs.
	Detached bool
	// FetchFrom is the peers to fetch from, most preferred first.
	FetchFrom []string
	// Consistent is what the node may claim: its data device equals a
	// prefix of the current history. Diverged: its log forks from the
	// current history (split brain, losing side); it must not ship its log.
	Consistent bool
	Diverged   bool
	// Unverified: this node was the primary of an older designation and
	// learned of a newer one, and has not yet compared its log with the
	// current history: what it wrote meanwhile may be the losing side of a
	// fork, so it must not ship its log (RoleStatus.RefuseShip).
	Unverified bool
	// Invalidate: discard the local log and run a full sync (join after a
	// leave).
	Invalidate bool
	// Exports, set while the node takes over from a primary that handed
	// the resource over, is the export state that primary had when its
	// exports stopped: apply it before serving.
	Exports  json.RawMessage
	Messages []RoleMessage
	Results  []Result
	Notes    []Note
}

// handover is a planned handover (or resignation) under way.
type handover struct {
	peer     string // the other node ("" when resigning, or promoting without a primary)
	id       string
	end      Position        // where the old primary sealed its log
	sealed   bool            // end is known
	exports  json.RawMessage // the old primary's export state at the seal
	deadline uint64          // tick (promoting only)
	lastSent uint64          // tick the sealed message was last sent (handing over)
	lastProg uint64          // tick of the last progress report
}

// pendingCmd is the operator command being carried out.
type pendingCmd struct {
	id   uint64
	cmd  Command
	text string // what to say when done
}

type peerView struct {
	facts PeerFacts
	heard bool   // answered (or failed) at least once
	seen  uint64 // tick of the last good status
	fork  *Fork
}

// RoleCore is the role state machine of one resource on one node. It is not
// safe for concurrent use.
type RoleCore struct {
	cfg      RoleConfig
	tick     uint64
	st       RoleState
	phase    Phase
	local    LocalFacts
	peers    map[string]*peerView
	diverged bool
	ho       *handover
	// stale is the designation under which this node was primary until it
	// adopted a newer one, while its log is not yet compared with the
	// current history's (nil: nothing to check). finalFacts: the local
	// facts were read with the data path not writing as primary (they
	// hold everything this node wrote).
	stale      *Designation
	finalFacts bool
	cmd        *pendingCmd
	ready      Ready // one-shot parts
	started    bool
	attempts   uint64 // numbers handover ids
}

// NewRoleCore returns a core in PhaseStarting; feed it EvStart first.
func NewRoleCore(cfg RoleConfig) *RoleCore {
	if cfg.StartTicks <= 0 {
		cfg.StartTicks = 50
	}
	if cfg.FreshTicks <= 0 {
		cfg.FreshTicks = 100
	}
	c := &RoleCore{cfg: cfg, peers: map[string]*peerView{}}
	for _, m := range cfg.Members {
		c.peers[m] = &peerView{}
	}
	return c
}

// Phase is the current phase.
func (c *RoleCore) Phase() Phase { return c.phase }

// Designation is the designation this node knows.
func (c *RoleCore) Designation() Designation { return c.st.Designation }

// Step applies one event.
func (c *RoleCore) Step(ev Event) {
	switch ev := ev.(type) {
	case EvStart:
		c.started = true
		c.local = ev.Local
		c.finalFacts = ev.Local.Role != RolePrimary
		if ev.Persisted {
			c.st = ev.State
		} else {
			c.st = RoleState{Designation: Designation{Primary: c.cfg.ConfigPrimary}}
		}
		if c.st.Designation.Primary != c.cfg.ConfigPrimary && ev.Persisted {
			c.note(slog.LevelInfo, fmt.Sprintf("the config names %s as primary of %s, but the cluster designates %s: following the cluster (the config's primary only names the first one)",
				orNone(c.cfg.ConfigPrimary), c.cfg.Resource, c.st.Designation))
		}
		c.recompute()
		c.maybeFinishStart()
	case EvTick:
		c.tick++
		c.maybeFinishStart()
		c.checkPromotion()
		c.resendSealed()
	case EvLocal:
		c.local = ev.Local
		c.finalFacts = ev.Local.Role != RolePrimary
		c.recompute()
		c.checkPromotion()
	case EvPeer:
		c.stepPeer(ev)
	case EvCommand:
		c.stepCommand(ev.ID, ev.Cmd)
	case EvMessage:
		c.stepMessage(ev.Msg)
	case EvSendFailed:
		c.stepSendFailed(ev)
	case EvSwitched:
		c.stepSwitched(ev)
	case EvDesignation:
		c.adopt(ev.Designation, ev.From)
		c.recompute()
	case EvConfig:
		c.cfg.Members, c.cfg.Connect, c.cfg.ConfigPrimary = ev.Members, ev.Connect, ev.ConfigPrimary
		c.cfg.AckSecondaries, c.cfg.AckForever = ev.AckSecondaries, ev.AckForever
		for _, m := range ev.Members {
			if c.peers[m] == nil {
				c.peers[m] = &peerView{}
			}
		}
		c.recompute()
	}
}

// Ready returns what the caller must do now.
func (c *RoleCore) Ready() Ready {
	rd := c.ready
	rd.Phase = c.phase
	rd.Role = c.phase.Role()
	rd.Serve = c.phase == PhasePrimary
	rd.FetchFrom = c.fetchFrom()
	rd.Consistent = c.consistent()
	rd.Diverged = c.diverged
	rd.Unverified = c.unverified()
	if rd.Role != RolePrimary && c.local.Role == RolePrimary {
		rd.Seal = true
	}
	if rd.Detached = c.st.Detached; rd.Detached && rd.Role == RolePrimary {
		// Still the designated primary, but its log is closed as it
		// is (attach reopens it); handovers wait for the attach.
		rd.Role, rd.Serve, rd.Seal = RoleNone, false, false
	}
	if c.phase == PhasePrimary && c.ho != nil && c.ho.sealed {
		rd.Exports = c.ho.exports
	}
	return rd
}

// Advance tells the core that the one-shot work of the last Ready was done.
func (c *RoleCore) Advance() { c.ready = Ready{} }

func (c *RoleCore) note(l slog.Level, msg string) {
	c.ready.Notes = append(c.ready.Notes, Note{Level: l, Msg: msg})
}

func (c *RoleCore) send(m RoleMessage) {
	m.Resource, m.From = c.cfg.Resource, c.cfg.Node
	if m.Designation == (Designation{}) {
		m.Designation = c.st.Designation
	}
	c.ready.Messages = append(c.ready.Messages, m)
}

func (c *RoleCore) persist() {
	st := c.st
	c.ready.Persist = &st
}

func (c *RoleCore) progress(text string) {
	if c.cmd != nil {
		c.ready.Results = append(c.ready.Results, Result{ID: c.cmd.id, Text: text})
	}
}

// finish ends the pending command with text, or with an error when failed.
func (c *RoleCore) finish(err, text string) {
	if c.cmd == nil {
		return
	}
	c.ready.Results = append(c.ready.Results, Result{ID: c.cmd.id, Done: true, Err: err, Text: text})
	c.cmd = nil
}

func (c *RoleCore) refuse(id uint64, msg string) {
	c.ready.Results = append(c.ready.Results, Result{ID: id, Done: true, Err: msg})
}

func (c *RoleCore) done(id uint64, text string) {
	c.ready.Results = append(c.ready.Results, Result{ID: id, Done: true, Text: text})
}

func orNone(s string) string {
	if s == "" {
		return "no node"
	}
	return s
}

// fresh reports whether peer p answered its last poll recently.
func (c *RoleCore) fresh(p string) (*ResourceStatus, bool) {
	v := c.peers[p]
	if v == nil || !v.facts.Reachable || v.facts.Status == nil || c.tick-v.seen > uint64(c.cfg.FreshTicks) {
		return nil, false
	}
	return v.facts.Status, true
}

func (c *RoleCore) maybeFinishStart() {
	if !c.started || c.phase != PhaseStarting {
		return
	}
	all := true
	for _, v := range c.peers {
		if !v.heard {
			all = false
		}
	}
	if !all && c.tick < uint64(c.cfg.StartTicks) {
		return
	}
	d := c.st.Designation
	switch {
	case c.st.Left:
		c.phase = PhaseLeft
	case d.Primary == c.cfg.Node:
		c.becomePrimary()
	default:
		c.phase = PhaseSecondary
	}
	c.recompute()
}

// becomePrimary enters PhasePrimary; a generation-0 designation (the
// config's) becomes generation 1 when its primary first serves.
func (c *RoleCore) becomePrimary() {
	if c.st.Designation.Generation == 0 {
		c.st.Designation.Generation = 1
		c.persist()
	}
	c.phase = PhasePrimary
}

func (c *RoleCore) stepPeer(ev EvPeer) {
	v := c.peers[ev.Node]
	if v == nil {
		v = &peerView{}
		c.peers[ev.Node] = v
	}
	v.heard = true
	if !ev.Facts.Reachable {
		// Keep what was known of its log; it is only not fresh.
		v.facts.Reachable, v.facts.Err = false, ev.Facts.Err
	} else {
		v.facts = ev.Facts
		v.seen = c.tick
		if s := ev.Facts.Status; s != nil {
			c.adopt(s.Designation, ev.Node)
		}
	}
	c.recompute()
	c.maybeFinishStart()
}

// adopt takes d when it is newer than the designation this node knows.
func (c *RoleCore) adopt(d Designation, from string) {
	old := c.st.Designation
	if !d.Newer(old) {
		return
	}
	c.st.Designation = d
	c.persist()
	// A primary that did not hand over may have written (and
	// acknowledged) records the new primary never got: a fork until its
	// log proves otherwise (verify).
	handedOver := c.phase == PhaseHandingOver && c.ho != nil && c.ho.sealed && c.ho.peer == d.Primary
	suspect := old.Primary == c.cfg.Node && old.Generation > 0 && !handedOver && c.stale == nil
	switch {
	case old.Generation == d.Generation && d.Generation == 0:
		c.note(slog.LevelWarn, fmt.Sprintf("the configs disagree on the primary of %s: %s's names %s, this node's %s; following %s (of two first designations the name that sorts first wins): fix the config",
			c.cfg.Resource, from, orNone(d.Primary), orNone(old.Primary), orNone(d.Primary)))
	case c.phase == PhaseStarting && d.Primary != c.cfg.ConfigPrimary:
		c.note(slog.LevelInfo, fmt.Sprintf("the cluster designates %s for %s (learned from %s); the config's primary = %s names only the first one: following the cluster",
			d, c.cfg.Resource, from, orNone(c.cfg.ConfigPrimary)))
	default:
		c.note(slog.LevelInfo, fmt.Sprintf("%s of %s is now %s (was %s), learned from %s", "designated primary", c.cfg.Resource, d, old, from))
	}
	switch c.phase {
	case PhasePrimary:
		if d.Primary != c.cfg.Node {
			c.phase = PhaseSecondary
			c.note(slog.LevelError, fmt.Sprintf("%s took over %s while this node served it as primary (%s): stopping the exports now; what this node wrote since then is not part of the history (split brain if it wrote anything)",
				orNone(d.Primary), c.cfg.Resource, d))
			c.finish("another node took over", "")
		}
	case PhaseHandingOver:
		if c.ho != nil && c.ho.peer != "" && d.Primary == c.ho.peer {
			c.note(slog.LevelInfo, fmt.Sprintf("handover of %s to %s done", c.cfg.Resource, d.Primary))
		}
		c.ho = nil
		c.phase = PhaseSecondary
	case PhasePromoting:
		if d.Primary != c.cfg.Node {
			c.abortPromotion(fmt.Sprintf("the designation changed meanwhile: %s (learned from %s)", d, from))
		}
	}
	if suspect {
		c.stale = &old
		c.note(slog.LevelWarn, fmt.Sprintf("this node was primary of %s as %s: it ships no log of it (and serves no sync) until its log is compared with the current history's, as what it wrote meanwhile may be the losing side of a fork",
			c.cfg.Resource, old))
	}
}

// recompute updates the forks with every peer and whether this node's log
// forks from the current history.
func (c *RoleCore) recompute() {
	for _, name := range c.peerNames() {
		v := c.peers[name]
		var f *Fork
		if v.facts.Status != nil {
			f = CompareHistory(c.local.Segments, v.facts.Status.Segments)
		}
		if (f == nil) != (v.fork == nil) {
			if f != nil {
				c.note(slog.LevelError, fmt.Sprintf("SPLIT BRAIN on %s: this node's log and %s's fork at %s", c.cfg.Resource, name, f))
			} else {
				c.note(slog.LevelInfo, fmt.Sprintf("the logs of %s here and on %s are one history again", c.cfg.Resource, name))
			}
		}
		v.fork = f
	}
	was := c.diverged
	c.diverged = c.computeDiverged()
	c.verify()
	if c.diverged && !was {
		c.note(slog.LevelError, fmt.Sprintf("this node's log of %s forks from the current history (%s is primary): it serves nothing, fetches nothing and is not consistent; run `tharsis invalidate %s` here to discard what it wrote after the fork and resync, or `tharsis leave-resource %s`",
			c.cfg.Resource, c.st.Designation, c.cfg.Resource, c.cfg.Resource))
	}
}

// unverified reports whether this node must not ship its log because it
// was the primary of an older designation and its log is not yet compared
// with the current history (see Ready.Unverified).
func (c *RoleCore) unverified() bool {
	return c.stale != nil && c.st.Designation.Primary != c.cfg.Node
}

// verify ends the unverified state once this node's complete log (facts
// read after it stopped writing as primary) compares as one history with
// the current history's holder: the designated primary's status under the
// current designation, or (no primary) a peer that follows it and does not
// diverge. A fork keeps it (the node is diverged then as well).
func (c *RoleCore) verify() {
	if c.stale == nil {
		return
	}
	d := c.st.Designation
	if d.Primary == c.cfg.Node {
		c.stale = nil // primary again: its log is the history
		return
	}
	if !c.finalFacts {
		return
	}
	ref := ""
	for _, n := range c.peerNames() {
		s, ok := c.fresh(n)
		if !ok || s.Designation != d || c.peers[n].fork != nil {
			continue
		}
		if n == d.Primary || d.Primary == "" && !s.Diverged && s.Phase != PhaseStarting && s.Phase != PhaseLeft {
			ref = n
			break
		}
	}
	if ref == "" {
		return
	}
	c.stale = nil
	c.note(slog.LevelInfo, fmt.Sprintf("this node's log of %s and %s's are one history (compared under %s): it ships its log again", c.cfg.Resource, ref, d))
}

// ErrStaleDesignation: a node's log may be the losing side of a fork of an
// older designation: it follows an older designation than the peer that
// asks it for its log, or was primary of one and is unverified.
var ErrStaleDesignation = errors.New("its log may be the losing side of a fork")

// RefuseShip says why a node whose role status is st must not ship its log
// (or serve a full sync) to a peer that follows designation fetcher (nil:
// the peer did not say, as nodes of older releases), or nil. It refuses
// while the node's log forks from the current history or is unverified,
// and when the fetcher's designation is newer than the node's (the node
// should adopt it: EvDesignation); the last two wrap ErrStaleDesignation.
// A fetcher
// of an older designation is served: this node's history is the newer
// one, and the fetcher's own fork check (status, record continuity) keeps
// it from taking records of another history. RefuseShip is pure.
func (st RoleStatus) RefuseShip(fetcher *Designation) error {
	switch {
	case fetcher != nil && fetcher.Newer(st.Designation):
		return fmt.Errorf("%w: it follows %s, the fetcher %s", ErrStaleDesignation, st.Designation, *fetcher)
	case st.Diverged:
		return errors.New("its log forks from the current history (split brain)")
	case st.Unverified:
		return fmt.Errorf("%w: it was primary as %s and learned of %s, and has not yet compared its log with the current history's", ErrStaleDesignation, st.StaleDesignation, st.Designation)
	}
	return nil
}

func (c *RoleCore) computeDiverged() bool {
	d := c.st.Designation
	if d.Primary == c.cfg.Node && (c.phase == PhasePrimary || c.phase == PhaseHandingOver || c.phase == PhaseStarting) {
		return false
	}
	if v := c.peers[d.Primary]; v != nil && v.facts.Status != nil {
		return v.fork != nil
	}
	// The primary's log is unknown: trust a peer that follows the same
	// designation and does not itself diverge.
	for _, v := range c.peers {
		s := v.facts.Status
		if v.fork != nil && s != nil && s.Designation == d && !s.Diverged && s.Phase != PhaseStarting && s.Phase != PhaseLeft {
			return true
		}
	}
	return false
}

func (c *RoleCore) consistent() bool {
	switch c.phase {
	case PhasePrimary:
		return !c.diverged
	case PhaseStarting, PhaseLeft:
		return false // not known yet; left: not kept up
	}
	return c.local.Consistent && !c.local.Sync.Syncing() && !c.diverged && c.phase != PhaseLeft
}

// fetchFrom is the fetch order: the explicit connect list, else the
// designated primary (or every member while there is none); the old primary
// first while promoting. Peers whose log forks from ours are left out, and
// a diverged node fetches from nobody.
func (c *RoleCore) fetchFrom() []string {
	switch c.phase {
	case PhaseSecondary, PhaseHandingOver, PhasePromoting:
	default:
		return nil
	}
	if c.diverged {
		return nil
	}
	var list []string
	d := c.st.Designation
	switch {
	case c.cfg.Connect != nil:
		list = c.cfg.Connect
	case d.Primary != "" && d.Primary != c.cfg.Node:
		list = []string{d.Primary}
	default:
		list = c.cfg.Members
	}
	if c.phase == PhasePromoting && c.ho != nil && c.ho.peer != "" {
		list = append([]string{c.ho.peer}, list...)
	}
	var out []string
	for _, p := range list {
		if p == c.cfg.Node || slices.Contains(out, p) {
			continue
		}
		if v := c.peers[p]; v != nil && (v.fork != nil || v.facts.Status != nil && v.facts.Status.Diverged) {
			continue
		}
		out = append(out, p)
	}
	return out
}

// peerNames returns the peers' names, sorted (deterministic output).
func (c *RoleCore) peerNames() []string {
	names := make([]string, 0, len(c.peers))
	for n := range c.peers {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// maxGeneration is the highest generation this node has seen anywhere.
func (c *RoleCore) maxGeneration() uint64 {
	g := c.st.Designation.Generation
	for _, v := range c.peers {
		if s := v.facts.Status; s != nil {
			g = max(g, s.Designation.Generation)
		}
	}
	return g
}

func (c *RoleCore) stepCommand(id uint64, cmd Command) {
	res := c.cfg.Resource
	if c.cmd != nil {
		c.refuse(id, fmt.Sprintf("a `%s` of %s is still under way on %s; wait for it", c.cmd.cmd.Kind, res, c.cfg.Node))
		return
	}
	switch c.phase {
	case PhaseStarting:
		c.refuse(id, fmt.Sprintf("node %s is still starting (waiting for its peers' view of %s); try again in a few seconds", c.cfg.Node, res))
		return
	case PhaseLeft:
		if cmd.Kind == CmdJoin {
			c.st.Left = false
			c.persist()
			c.phase = PhaseSecondary
			c.ready.Invalidate = true
			c.done(id, fmt.Sprintf("%s: joined again; a fast full sync runs (see `tharsis view`)", res))
			return
		}
		c.refuse(id, fmt.Sprintf("node %s left %s: run `tharsis join-resource %s` first", c.cfg.Node, res, res))
		return
	}
	switch cmd.Kind {
	case CmdDetach, CmdAttach:
		c.stepAttach(id, cmd.Kind == CmdAttach)
		return
	}
	if c.st.Detached && cmd.Kind != CmdLeave && cmd.Kind != CmdJoin {
		c.refuse(id, fmt.Sprintf("the data device of %s is detached on %s: run `tharsis attach %s` first", res, c.cfg.Node, res))
		return
	}
	switch cmd.Kind {
	case CmdPrimary:
		if cmd.Force {
			c.forcePrimary(id, cmd)
		} else {
			c.plannedPrimary(id, cmd)
		}
	case CmdSecondary:
		c.resign(id)
	case CmdLeave:
		switch c.phase {
		case PhasePrimary, PhaseHandingOver:
			c.refuse(id, fmt.Sprintf("node %s is the primary of %s: hand it over first (`tharsis primary %s` on another node, or `tharsis secondary %s` here)", c.cfg.Node, res, res, res))
			return
		case PhasePromoting:
			c.refuse(id, fmt.Sprintf("a handover of %s to this node is under way; wait for it", res))
			return
		}
		c.st.Left = true
		c.persist()
		c.phase = PhaseLeft
		c.done(id, fmt.Sprintf("%s: left; this node no longer fetches, replays or holds back retention; its disk is left as it is (`tharsis join-resource %s` joins again with a full sync)", res, res))
	case CmdJoin:
		c.done(id, fmt.Sprintf("%s: already joined", res))
	}
}

// stepAttach carries out detach (attach false) and attach.
func (c *RoleCore) stepAttach(id uint64, attach bool) {
	res := c.cfg.Resource
	switch {
	case c.st.Detached != attach:
		if attach {
			c.done(id, fmt.Sprintf("%s: attached already", res))
		} else {
			c.done(id, fmt.Sprintf("%s: detached already", res))
		}
		return
	case c.phase == PhaseHandingOver || c.phase == PhasePromoting:
		c.refuse(id, fmt.Sprintf("a handover of %s is under way; wait for it", res))
		return
	}
	c.st.Detached = !attach
	c.persist()
	switch {
	case attach && c.phase == PhasePrimary:
		c.done(id, fmt.Sprintf("%s: attached; the log is replayed onto the disk and the exports serve again", res))
	case attach:
		c.done(id, fmt.Sprintf("%s: attached; replaying what was fetched meanwhile", res))
	case c.phase == PhasePrimary:
		c.done(id, fmt.Sprintf("%s: detached; the exports stopped and the disk is closed; this node is still the designated primary (`tharsis attach %s` serves again; another node can take over only with --force)", res, res))
	default:
		c.done(id, fmt.Sprintf("%s: detached; the disk is closed, the log is still fetched and is replayed on `tharsis attach %s`", res, res))
	}
}

func (c *RoleCore) checkCanLead(id uint64, force bool) bool {
	res := c.cfg.Resource
	switch {
	case c.diverged:
		c.refuse(id, fmt.Sprintf("this node's log of %s forks from the current history (split brain): it cannot become primary; run `tharsis invalidate %s` first", res, res))
		return false
	case c.local.Sync.Syncing() || c.local.Sync == SyncCatchingUp || !c.local.Consistent:
		why := "it never finished a full sync"
		switch {
		case c.local.Sync == SyncRunning:
			why = "a full sync runs to it"
		case c.local.Sync == SyncCatchingUp:
			why = "its full sync is done but the log written meanwhile is not replayed yet"
		}
		msg := fmt.Sprintf("node %s is not consistent for %s (%s): it cannot become primary until the sync finishes (see `tharsis view`)", c.cfg.Node, res, why)
		if force {
			msg += fmt.Sprintf("; `tharsis fake-sync %s` marks it consistent without copying, but only if you know its disk equals the primary's", res)
		}
		c.refuse(id, msg)
		return false
	}
	return true
}

func (c *RoleCore) plannedPrimary(id uint64, cmd Command) {
	res := c.cfg.Resource
	d := c.st.Designation
	switch c.phase {
	case PhasePrimary:
		c.done(id, fmt.Sprintf("%s: node %s is primary already (%s)", res, c.cfg.Node, d))
		return
	case PhasePromoting:
		c.refuse(id, fmt.Sprintf("a handover of %s to this node is under way already", res))
		return
	case PhaseHandingOver:
		c.resumeHandingOver(id)
		return
	}
	if !c.checkCanLead(id, false) {
		return
	}
	if !cmd.IgnoreSync {
		for _, name := range c.cfg.Members {
			if s, ok := c.fresh(name); ok && s.Sync != nil && (s.Sync.State == SyncRunning || s.Sync.State == SyncNeeded) {
				c.refuse(id, fmt.Sprintf("a full sync of %s to %s is under way (%s, %d of %d bytes compared): a handover restarts it from the new primary; wait for it, or pass --ignore-sync",
					res, name, s.Sync.State, s.Sync.Compared, s.Sync.Total))
				return
			}
		}
	}
	ticks := cmd.TimeoutTicks
	if ticks <= 0 {
		ticks = 600
	}
	c.cmd = &pendingCmd{id: id, cmd: cmd}
	c.attempts++
	ho := &handover{id: fmt.Sprintf("%s@%d.%d", c.cfg.Node, d.Generation, c.attempts), deadline: c.tick + uint64(ticks), lastProg: c.tick}
	if d.Primary == "" {
		// Nobody is primary: the last one sealed its log at d.End.
		ho.end, ho.sealed = d.End, true
		c.ho, c.phase = ho, PhasePromoting
		c.progress(fmt.Sprintf("%s has no primary; its last primary sealed the log at record %d: fetching and replaying to it", res, d.End.Seq))
		c.checkPromotion()
		return
	}
	s, ok := c.fresh(d.Primary)
	if !ok {
		c.cmd = nil
		c.refuse(id, fmt.Sprintf("the current primary of %s, %s, is unreachable (%s): a planned handover needs it to seal its log. If it is dead, `tharsis primary --force %s` takes over without it; %s",
			res, d.Primary, c.peerErr(d.Primary), res, c.lossText()))
		return
	}
	if s.Phase != PhasePrimary {
		c.cmd = nil
		c.refuse(id, fmt.Sprintf("%s is designated primary of %s but is %s, not serving: try again when it serves (see `tharsis view`)", d.Primary, res, s.Phase))
		return
	}
	ho.peer = d.Primary
	c.ho, c.phase = ho, PhasePromoting
	c.send(RoleMessage{Kind: MsgHandoverRequest, To: d.Primary, ID: ho.id})
	c.progress(fmt.Sprintf("asking %s to hand %s over to %s (%s)", d.Primary, res, c.cfg.Node, d))
}

// resumeHandingOver serves again after a handover that did not finish:
// only when the node it was handing over to is known not to take over.
func (c *RoleCore) resumeHandingOver(id uint64) {
	res := c.cfg.Resource
	if c.ho != nil && c.ho.peer != "" {
		s, ok := c.fresh(c.ho.peer)
		if !ok || s.Phase == PhasePromoting || s.Phase == PhasePrimary {
			c.refuse(id, fmt.Sprintf("%s is handing %s over to %s, which is %s: it may still take over. Wait for it, or `tharsis primary --force %s` here (a split brain if %s takes over too)",
				c.cfg.Node, res, c.ho.peer, c.peerState(c.ho.peer), res, c.ho.peer))
			return
		}
		c.send(RoleMessage{Kind: MsgHandoverAbort, To: c.ho.peer, ID: c.ho.id})
	}
	c.ho = nil
	c.phase = PhasePrimary
	c.done(id, fmt.Sprintf("%s: the handover is off; node %s serves again (%s)", res, c.cfg.Node, c.st.Designation))
}

func (c *RoleCore) peerErr(p string) string {
	v := c.peers[p]
	switch {
	case v == nil || !v.heard:
		return "never heard from"
	case v.facts.Err != "":
		return v.facts.Err
	case v.facts.Status == nil:
		return "it reports no such resource"
	}
	return fmt.Sprintf("last heard %d ticks ago", c.tick-v.seen)
}

func (c *RoleCore) peerState(p string) string {
	if s, ok := c.fresh(p); ok {
		return s.Phase.String()
	}
	return "unreachable (" + c.peerErr(p) + ")"
}

// lossText says what a takeover without the primary may lose.
func (c *RoleCore) lossText() string {
	proof, why := c.ackProof()
	if proof {
		return why
	}
	if why != "" {
		why = "; " + why
	}
	return c.asyncLossText() + why
}

// ackProof decides whether synchronous acknowledgement proves that this
// node holds every write the designated primary acknowledged (it is assumed
// dead: that is what --force says). The primary acknowledged a write only
// once k of the other members held it durably (counting direct fetchers
// among the members only) — as long as it could not fall back to
// asynchronous, which ack_timeout = "forever" rules out. A write beyond
// this node's log end was then held by k members other than this node, so
// if fewer than k of them may hold more than this node, none exists. A
// member counts as holding no more when its fresh status shows a log end
// not past ours and that it no longer fetches from the old primary (its
// end is final). Without proof, why says what stands in the way ("" when
// synchronous acknowledgement is off).
func (c *RoleCore) ackProof() (bool, string) {
	old := c.st.Designation.Primary
	k, forever, state := c.cfg.AckSecondaries, c.cfg.AckForever, AckSynchronous
	if v := c.peers[old]; v != nil && v.facts.Status != nil && v.facts.Status.Ack != nil {
		// What the primary said last (the config may have been reloaded
		// on one side only): the weaker promise wins.
		a := v.facts.Status.Ack
		k, forever, state = min(k, a.Secondaries), forever && a.Timeout == "forever", a.State
	}
	switch {
	case k == 0 || old == "" || old == c.cfg.Node:
		return false, ""
	case state == AckFallback:
		return false, fmt.Sprintf("%s had fallen back to asynchronous acknowledgement when last heard from: writes it acknowledged since need not be on any secondary", old)
	case !forever:
		return false, fmt.Sprintf("%s acknowledged a write only once %d secondar%s held it, unless it fell back to asynchronous after ack_timeout (ack_timeout = \"forever\" rules that out)", old, k, ies(k))
	}
	var maybe []string
	for _, m := range c.cfg.Members {
		if m == old || m == c.cfg.Node {
			continue
		}
		s, ok := c.fresh(m)
		switch {
		case !ok:
			maybe = append(maybe, m+" (no current status: "+c.peerErr(m)+")")
		case s.Diverged:
		case s.End.Seq > c.local.End.Seq:
			maybe = append(maybe, fmt.Sprintf("%s (holds the log up to record %d)", m, s.End.Seq))
		case s.Source == old:
			maybe = append(maybe, fmt.Sprintf("%s (still fetches from %s)", m, old))
		}
	}
	if len(maybe) >= k {
		return false, fmt.Sprintf("%s acknowledged a write only once %d secondar%s held it, but %s may hold acknowledged writes beyond this node's log end (record %d): wait for their status, or force the node that holds the most",
			old, k, ies(k), strings.Join(maybe, ", "), c.local.End.Seq)
	}
	return true, fmt.Sprintf("no acknowledged write is lost: %s acknowledged a write only once %d secondar%s held it (ack_timeout = \"forever\"), and fewer than %d other node(s) can hold more of the log than this node, so its log (to record %d) holds every write %s acknowledged",
		old, k, ies(k), k, c.local.End.Seq, old)
}

func ies(n int) string {
	if n == 1 {
		return "y"
	}
	return "ies"
}

// asyncLossText says what a takeover may lose when nothing proves otherwise.
func (c *RoleCore) asyncLossText() string {
	l := c.local
	if l.SourceEnd.Seq <= l.End.Seq && l.LagSeconds == 0 {
		return fmt.Sprintf("this node has fetched the log up to record %d, all that it last knew of; writes the old primary acknowledged but did not ship are lost", l.End.Seq)
	}
	return fmt.Sprintf("this node has fetched the log up to record %d; the last known end was record %d: %d records, %d bytes and %.1f s of writes may be lost, plus whatever the old primary acknowledged later",
		l.End.Seq, max(l.SourceEnd.Seq, l.End.Seq), max(0, int64(l.SourceEnd.Seq)-int64(l.End.Seq)), l.Unfetched, l.LagSeconds)
}

func (c *RoleCore) forcePrimary(id uint64, cmd Command) {
	res := c.cfg.Resource
	switch c.phase {
	case PhasePrimary:
		c.done(id, fmt.Sprintf("%s: node %s is primary already (%s)", res, c.cfg.Node, c.st.Designation))
		return
	case PhasePromoting:
		c.abortPromotion("superseded by primary --force")
	}
	if c.phase != PhaseHandingOver && !c.checkCanLead(id, true) {
		return
	}
	loss := c.lossText()
	if c.phase == PhaseHandingOver && c.ho != nil && c.ho.peer != "" {
		c.send(RoleMessage{Kind: MsgHandoverAbort, To: c.ho.peer, ID: c.ho.id})
		loss = "resumed during a handover to " + c.ho.peer
	}
	c.ho = nil
	old := c.st.Designation
	c.st.Designation = Designation{Primary: c.cfg.Node, Generation: c.maxGeneration() + 1}
	c.persist()
	c.phase = PhasePrimary
	c.cmd = &pendingCmd{id: id, cmd: cmd, text: fmt.Sprintf("%s: node %s took over by force (%s, was %s); %s", res, c.cfg.Node, c.st.Designation, old, loss)}
	c.note(slog.LevelWarn, c.cmd.text)
	c.progress(fmt.Sprintf("taking over %s without %s: %s", res, orNone(old.Primary), loss))
}

func (c *RoleCore) resign(id uint64) {
	res := c.cfg.Resource
	switch c.phase {
	case PhaseSecondary:
		c.done(id, fmt.Sprintf("%s: node %s is secondary already (primary: %s)", res, c.cfg.Node, c.st.Designation))
		return
	case PhasePromoting:
		c.abortPromotion("cancelled by `secondary`")
		c.done(id, fmt.Sprintf("%s: the handover to this node is off; it stays secondary", res))
		return
	case PhaseHandingOver:
		c.refuse(id, fmt.Sprintf("%s is being handed over already; wait for it", res))
		return
	}
	c.cmd = &pendingCmd{id: id, cmd: Command{Kind: CmdSecondary}}
	c.attempts++
	c.ho = &handover{id: fmt.Sprintf("%s@%d.%d", c.cfg.Node, c.st.Designation.Generation, c.attempts)}
	c.phase = PhaseHandingOver
	c.progress(fmt.Sprintf("%s: stopping the exports, answering the requests in flight and sealing the log", res))
}

func (c *RoleCore) abortPromotion(why string) {
	if c.phase != PhasePromoting || c.ho == nil {
		return
	}
	ho := c.ho
	c.ho = nil
	c.phase = PhaseSecondary
	msg := fmt.Sprintf("handover of %s to %s given up: %s", c.cfg.Resource, c.cfg.Node, why)
	if ho.peer != "" {
		c.send(RoleMessage{Kind: MsgHandoverAbort, To: ho.peer, ID: ho.id})
		msg += fmt.Sprintf("; %s stays primary", ho.peer)
	}
	c.note(slog.LevelWarn, msg)
	c.finish(msg, "")
}

// checkPromotion takes over once the local log ends exactly where the old
// primary sealed it, or gives up at the deadline.
func (c *RoleCore) checkPromotion() {
	if c.phase != PhasePromoting || c.ho == nil {
		return
	}
	ho := c.ho
	if c.tick > ho.deadline {
		why := "timed out"
		if ho.sealed {
			why = fmt.Sprintf("timed out with the log fetched to record %d of %d", c.local.End.Seq, ho.end.Seq)
		} else if ho.peer != "" {
			why = fmt.Sprintf("timed out waiting for %s to seal its log", ho.peer)
		}
		c.abortPromotion(why)
		return
	}
	if !ho.sealed {
		return
	}
	end := c.local.End
	switch {
	case end.Seq < ho.end.Seq:
		if c.tick-ho.lastProg >= 10 {
			ho.lastProg = c.tick
			c.progress(fmt.Sprintf("fetched to record %d of %d", end.Seq, ho.end.Seq))
		}
		return
	case end != ho.end:
		c.abortPromotion(fmt.Sprintf("this node's log ends at %v, not where the old primary sealed it (%v): the logs differ", end, ho.end))
		return
	case c.local.Role != RoleSecondary:
		return
	}
	old := c.st.Designation
	c.st.Designation = Designation{Primary: c.cfg.Node, Generation: max(old.Generation, c.maxGeneration()) + 1}
	c.persist()
	c.phase = PhasePrimary
	c.progress(fmt.Sprintf("log fetched exactly to record %d (segment %d); opening it as primary", ho.end.Seq, ho.end.Segment))
}

func (c *RoleCore) stepMessage(m RoleMessage) {
	res := c.cfg.Resource
	switch m.Kind {
	case MsgHandoverRequest:
		d := c.st.Designation
		refuse := func(why string) {
			c.send(RoleMessage{Kind: MsgHandoverRefused, To: m.From, ID: m.ID, Reason: why})
			c.note(slog.LevelWarn, fmt.Sprintf("refused to hand %s over to %s: %s", res, m.From, why))
		}
		switch {
		case c.phase != PhasePrimary || d.Primary != c.cfg.Node:
			refuse(fmt.Sprintf("%s is not serving %s as primary (it is %s; %s)", c.cfg.Node, res, c.phase, d))
		case m.Designation != d:
			refuse(fmt.Sprintf("%s asks with designation %s, but it is %s", m.From, m.Designation, d))
		case c.cmd != nil:
			refuse(fmt.Sprintf("a `%s` runs on %s", c.cmd.cmd.Kind, c.cfg.Node))
		case c.st.Detached:
			refuse(fmt.Sprintf("the data device of %s is detached on %s: run `tharsis attach %s` there first (or take over with --force)", res, c.cfg.Node, res))
		default:
			c.ho = &handover{peer: m.From, id: m.ID}
			c.phase = PhaseHandingOver
			c.note(slog.LevelInfo, fmt.Sprintf("handing %s over to %s: stopping the exports, answering the requests in flight, sealing the log", res, m.From))
		}
	case MsgHandoverSealed:
		if c.phase != PhasePromoting || c.ho == nil || c.ho.id != m.ID {
			return
		}
		if !c.ho.sealed {
			c.ho.end, c.ho.sealed, c.ho.exports = m.End, true, m.Exports
			c.progress(fmt.Sprintf("%s stopped its exports and sealed its log at record %d (segment %d); fetching and replaying exactly to it", m.From, m.End.Seq, m.End.Segment))
		}
		c.checkPromotion()
	case MsgHandoverRefused:
		if c.phase == PhasePromoting && c.ho != nil && c.ho.id == m.ID {
			c.ho = nil
			c.phase = PhaseSecondary
			c.finish(fmt.Sprintf("%s refused the handover of %s: %s", m.From, res, m.Reason), "")
		}
	case MsgHandoverAbort:
		if c.phase == PhaseHandingOver && c.ho != nil && c.ho.id == m.ID && c.st.Designation.Primary == c.cfg.Node {
			c.ho = nil
			c.phase = PhasePrimary
			c.note(slog.LevelWarn, fmt.Sprintf("%s gave up taking over %s: serving it again", m.From, res))
		}
	case MsgHandoverDone:
		c.adopt(m.Designation, m.From)
	}
}

func (c *RoleCore) stepSendFailed(ev EvSendFailed) {
	m := ev.Msg
	switch m.Kind {
	case MsgHandoverRequest:
		if c.phase == PhasePromoting && c.ho != nil && c.ho.id == m.ID {
			c.ho = nil
			c.phase = PhaseSecondary
			c.finish(fmt.Sprintf("cannot reach %s to ask for the handover of %s (%s): a planned handover needs it; if it is dead, `tharsis primary --force %s` takes over without it; %s",
				m.To, c.cfg.Resource, ev.Err, c.cfg.Resource, c.lossText()), "")
		}
	case MsgHandoverAbort:
		c.note(slog.LevelError, fmt.Sprintf("could not tell %s that the handover of %s is off (%s): run `tharsis primary %s` on %s to serve again", m.To, c.cfg.Resource, ev.Err, c.cfg.Resource, m.To))
	case MsgHandoverSealed:
		c.note(slog.LevelWarn, fmt.Sprintf("could not tell %s where the log of %s was sealed (%s); retrying", m.To, c.cfg.Resource, ev.Err))
	}
}

// resendSealed repeats the sealed message while a handover waits (the
// new primary may have missed it).
func (c *RoleCore) resendSealed() {
	ho := c.ho
	if c.phase != PhaseHandingOver || ho == nil || ho.peer == "" || !ho.sealed || c.tick-ho.lastSent < 20 {
		return
	}
	ho.lastSent = c.tick
	c.send(RoleMessage{Kind: MsgHandoverSealed, To: ho.peer, ID: ho.id, End: ho.end, Exports: ho.exports})
}

func (c *RoleCore) stepSwitched(ev EvSwitched) {
	res := c.cfg.Resource
	if ev.Err != "" {
		c.note(slog.LevelError, fmt.Sprintf("switching %s to %s failed: %s", res, c.phase.Role(), ev.Err))
		switch c.phase {
		case PhaseHandingOver:
			// Still primary: the log could not be sealed.
			if c.ho != nil && c.ho.peer != "" {
				c.send(RoleMessage{Kind: MsgHandoverRefused, To: c.ho.peer, ID: c.ho.id, Reason: "sealing the log failed: " + ev.Err})
			}
			c.ho = nil
			c.phase = PhasePrimary
			c.finish("sealing the log failed: "+ev.Err, "")
		case PhasePrimary:
			c.phase = PhaseSecondary
			c.finish(fmt.Sprintf("opening the log of %s as primary failed: %s; %s is designated primary but serves nothing: fix the cause and run `tharsis primary %s` again", res, ev.Err, c.cfg.Node, res), "")
		default:
			c.finish(ev.Err, "")
		}
		return
	}
	if c.local.Role == RolePrimary && ev.Role != RolePrimary {
		c.finalFacts = false // the facts are from before the log was closed
	}
	c.local.Role = ev.Role
	switch {
	case c.phase == PhaseHandingOver && ev.Role == RoleSecondary && c.ho != nil:
		c.ho.end, c.ho.sealed, c.ho.exports = ev.End, true, ev.Exports
		if c.ho.peer != "" {
			c.ho.lastSent = c.tick
			c.send(RoleMessage{Kind: MsgHandoverSealed, To: c.ho.peer, ID: c.ho.id, End: ev.End, Exports: ev.Exports})
			return
		}
		// Resigned: nobody is primary until someone runs primary.
		c.st.Designation = Designation{Generation: c.maxGeneration() + 1, End: ev.End}
		c.persist()
		c.ho = nil
		c.phase = PhaseSecondary
		c.finish("", fmt.Sprintf("%s: node %s is secondary; the log is sealed at record %d; the resource has no primary until `tharsis primary %s` runs on a node", res, c.cfg.Node, ev.End.Seq, res))
	case c.phase == PhasePrimary && ev.Role == RolePrimary:
		ho := c.ho
		c.ho = nil
		if ho != nil && ho.peer != "" {
			c.send(RoleMessage{Kind: MsgHandoverDone, To: ho.peer, ID: ho.id})
		}
		text := ""
		switch {
		case c.cmd != nil && c.cmd.text != "":
			text = c.cmd.text
		case ho != nil:
			from := "its last primary"
			if ho.peer != "" {
				from = ho.peer
			}
			text = fmt.Sprintf("%s: node %s is primary (%s); it replayed the log exactly to where %s sealed it (record %d) and serves the exports", res, c.cfg.Node, c.st.Designation, from, ho.end.Seq)
		}
		c.finish("", text)
	}
}

// RoleStatus is the role part of a node's status of a resource.
type RoleStatus struct {
	Phase       Phase
	Designation Designation
	Diverged    bool
	Consistent  bool
	Forks       []PeerFork
	// Handover is the peer of a handover under way ("" when resigning).
	Handover string
	// Detached: the data device is detached (`tharsis detach`).
	Detached bool
	// Unverified (see Ready.Unverified); StaleDesignation is the
	// designation under which this node was primary.
	Unverified       bool
	StaleDesignation Designation
}

// PeerFork is a fork between this node's log and a peer's.
type PeerFork struct {
	Peer string `json:"peer"`
	Fork
	// Loser is the node whose log is not the current history.
	Loser string `json:"loser"`
}

// Status returns the role part of the node's status.
func (c *RoleCore) Status() RoleStatus {
	st := RoleStatus{Phase: c.phase, Designation: c.st.Designation, Diverged: c.diverged, Consistent: c.consistent(), Detached: c.st.Detached}
	if c.ho != nil {
		st.Handover = c.ho.peer
	}
	if st.Unverified = c.unverified(); st.Unverified {
		st.StaleDesignation = *c.stale
	}
	for _, n := range c.peerNames() {
		v := c.peers[n]
		if v.fork == nil {
			continue
		}
		loser := n
		if c.diverged {
			loser = c.cfg.Node
		}
		st.Forks = append(st.Forks, PeerFork{Peer: n, Fork: *v.fork, Loser: loser})
	}
	return st
}
