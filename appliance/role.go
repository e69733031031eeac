package appliance

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tharsis/tharsis/config"
	"github.com/tharsis/tharsis/replicate"
)

// The role loop of a replicated resource drives its replicate.RoleCore: it
// feeds it ticks, the local log's facts, the peers' statuses (from the
// cluster poller), operator commands and role messages, and carries out
// each Ready: persist the role state, switch the data path (primary ⇄
// secondary without reopening the disk), start or stop the exports, send
// role messages, answer the operator.

// roleTick is the core's unit of time.
const roleTick = 100 * time.Millisecond

// Core timing, in ticks.
const (
	startTicks = 80  // wait for the peers' designations at start (8 s)
	freshTicks = 100 // a peer not heard from for 10 s is unreachable
	localEvery = 3   // refresh the local facts every 300 ms
)

// roleState is the role machinery of one resource.
type roleState struct {
	core   *replicate.RoleCore
	events chan replicate.Event

	mu       sync.Mutex
	status   replicate.RoleStatus // snapshot for status and sources
	fetch    []string
	diverged bool
	waiters  map[uint64]chan replicate.Result
	nextID   uint64
	// settled is closed once the core left PhaseStarting and the data path
	// and exports match its first decision.
	settled     chan struct{}
	settledOnce sync.Once
	// fatal gets the error of the first data-path switch when it fails
	// (the daemon then does not start, as with any broken resource).
	fatal chan error
	// retryAt: after a failed switch the next try waits until then.
	retryAt time.Time

	// aoe lists the resource's AoE targets while they are served (the
	// status publishes their state from it, without Daemon.expMu).
	aoe atomic.Pointer[[]aoeBinding]
	// final is the export state when the exports last stopped (under mu):
	// what a handover hands to the next primary.
	final json.RawMessage
	// peerExports is the export state last taken from the primary's
	// status (role loop only).
	peerExports json.RawMessage

	// cancel stops the role loop; done is closed when it returned.
	cancel context.CancelFunc
	done   chan struct{}
}

// startRole starts r's role loop.
func (d *Daemon) startRole(r *resource) {
	ctx, cancel := context.WithCancel(d.rolesCtx)
	r.role.cancel, r.role.done = cancel, make(chan struct{})
	d.roleWG.Add(1)
	go func() {
		defer d.roleWG.Done()
		defer close(r.role.done)
		d.roleLoop(ctx, r)
	}()
}

// stop stops the role loop and waits for it.
func (rs *roleState) stop() {
	if rs.cancel != nil {
		rs.cancel()
		<-rs.done
	}
}

// send queues an event for the role loop, waiting while its queue is full
// (unlike post, for events that must not be lost).
func (rs *roleState) send(ctx context.Context, ev replicate.Event) {
	select {
	case rs.events <- ev:
	case <-ctx.Done():
	}
}

// setAoE records the AoE targets being served (nil: none).
func (rs *roleState) setAoE(b []aoeBinding) {
	if b == nil {
		rs.aoe.Store(nil)
		return
	}
	rs.aoe.Store(&b)
}

// exportsNow is the live export state published in the status while the
// exports are served, else nil.
func (rs *roleState) exportsNow() json.RawMessage {
	if b := rs.aoe.Load(); b != nil {
		return liveAoEState(*b)
	}
	return nil
}

// setFinal records the export state at the moment the exports stopped.
func (rs *roleState) setFinal(st json.RawMessage) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.final = st
}

func (rs *roleState) finalExports() json.RawMessage {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.final
}

func (rs *roleState) fetchList() []string {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.fetch
}

func (rs *roleState) snapshot() replicate.RoleStatus {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.status
}

// post queues an event for the role loop without blocking (the poller's
// events are periodic: dropping one when the loop is busy is harmless).
func (rs *roleState) post(ev replicate.Event) bool {
	select {
	case rs.events <- ev:
		return true
	default:
		return false
	}
}

// newRole prepares r's role core (the loop starts in Run).
func (d *Daemon) newRole(r *resource) error {
	members, connect := d.roleMembers(r.config())
	cfg := replicate.RoleConfig{
		Node: d.node.Name, Resource: r.name, ConfigPrimary: r.config().Primary, Members: members,
		Connect: connect, StartTicks: startTicks, FreshTicks: freshTicks,
		AckSecondaries: r.config().AckSecondaries, AckForever: r.config().AckTimeout == config.AckForever,
	}
	if len(members) == 0 {
		cfg.StartTicks = 1
	}
	r.role = &roleState{core: replicate.NewRoleCore(cfg), events: make(chan replicate.Event, 256), waiters: map[uint64]chan replicate.Result{}, settled: make(chan struct{}), fatal: make(chan error, 1)}
	if d.ship != nil {
		d.ship.AddResource(r.name, roleSource{replicate.IdleSource(r.dir, r.name), r})
	}
	return nil
}

// roleMembers returns the other nodes holding a disk of rc and this
// node's connect list of it (nil: none), as the role core takes them.
func (d *Daemon) roleMembers(rc *config.Resource) (members, connect []string) {
	for _, n := range d.config().DiskNodes(rc.Name) {
		if n != d.node.Name {
			members = append(members, n)
		}
	}
	if l, ok := rc.Connect[d.node.Name]; ok {
		connect = append([]string{}, l...)
	}
	return members, connect
}

// roleSource decorates a Source's status with the role core's view, and
// refuses to ship while the node's log may be the losing side of a fork
// (replicate.RoleStatus.RefuseShip).
type roleSource struct {
	replicate.Source
	r *resource
}

func (s roleSource) Status() replicate.ResourceStatus {
	rs := s.Source.Status()
	st := s.r.role.snapshot()
	rs.Phase, rs.Designation, rs.Diverged, rs.Forks, rs.Handover, rs.Detached = st.Phase, st.Designation, st.Diverged, st.Forks, st.Handover, st.Detached
	rs.Unverified = st.Unverified
	rs.Released = s.r.releases()
	rs.DiskCapacity = s.r.disk.Capacity()
	rs.Exports = s.r.role.exportsNow()
	rs.Consistent = rs.Consistent && st.Consistent
	if st.Phase == replicate.PhasePrimary {
		rs.Consistent = st.Consistent
	}
	return rs
}

// ShipCompression is the resource's compress setting in force: the ship
// server asks at the start of every fetch connection, so a reload applies
// from the next connection on.
func (s roleSource) ShipCompression() replicate.Compression {
	if c := s.r.config(); c != nil && c.Compress == config.CompressZstd {
		return replicate.CompressZstd
	}
	return replicate.CompressOff
}

// EmergencyChunks passes an emergency sync's question on to the primary's
// data path (an empty answer anywhere else).
func (s roleSource) EmergencyChunks() (replicate.EmergencyChunks, bool) {
	if es, ok := s.Source.(replicate.EmergencySource); ok {
		return es.EmergencyChunks()
	}
	return replicate.EmergencyChunks{}, false
}

// NoteAck passes a fetching peer's acknowledgement on to the primary's
// data path (synchronous acknowledgement; dropped anywhere else).
func (s roleSource) NoteAck(node string, pos replicate.Position) {
	if as, ok := s.Source.(replicate.AckSink); ok {
		as.NoteAck(node, pos)
	}
}

// NoteDamage passes damage the ship server found on to the data path.
func (s roleSource) NoteDamage(cerr *replicate.CorruptError) {
	if ds, ok := s.Source.(replicate.DamageSink); ok {
		ds.NoteDamage(cerr)
	}
}

func (s roleSource) Refuse() error {
	if err := s.r.role.snapshot().RefuseShip(nil); err != nil {
		return err
	}
	if rf, ok := s.Source.(replicate.Refuser); ok {
		return rf.Refuse()
	}
	return nil
}

// CheckFetch refuses a fetcher that follows a newer designation than this
// node (its log may be the losing side of a fork) and hands that
// designation to the role core, which adopts it at once (a stale primary
// stops serving without waiting for a status poll).
func (s roleSource) CheckFetch(peer string, d replicate.Designation) error {
	st := s.r.role.snapshot()
	if d.Newer(st.Designation) {
		s.r.role.post(replicate.EvDesignation{From: peer, Designation: d})
	}
	return st.RefuseShip(&d)
}

// localFacts reads what the data path reports of r's local copy.
func (d *Daemon) localFacts(r *resource) replicate.LocalFacts {
	prim, sec, src := r.paths()
	switch {
	case prim != nil:
		st := src.Status()
		return replicate.LocalFacts{Role: replicate.RolePrimary, Segments: st.Segments, End: st.End, Applied: st.Applied, Consistent: true}
	case sec != nil:
		st := src.Status()
		lf := replicate.LocalFacts{Role: replicate.RoleSecondary, Segments: st.Segments, End: st.End, Applied: st.Applied,
			Consistent: st.Consistent, SourceEnd: st.SourceEnd, Unfetched: st.UnfetchedBytes, LagSeconds: st.LagSeconds}
		if st.Sync != nil {
			lf.Sync = st.Sync.State
		}
		return lf
	}
	lf := replicate.LocalFacts{Segments: replicate.LogSegments(r.dir)}
	if n := len(lf.Segments); n > 0 {
		lf.Consistent = true
	}
	return lf
}

// roleLoop runs r's role core until ctx is done.
func (d *Daemon) roleLoop(ctx context.Context, r *resource) {
	rs := r.role
	st, ok, err := replicate.ReadRoleState(r.dir)
	if err != nil {
		d.log.Error("cannot read the role state; starting from the config's", "resource", r.name, "err", err)
	}
	rs.core.Step(replicate.EvStart{State: st, Persisted: ok, Local: d.localFacts(r)})
	d.applyReady(r)
	if d.cluster != nil {
		d.cluster.Refresh()
	}
	t := time.NewTicker(roleTick)
	defer t.Stop()
	n := 0
	for {
		select {
		case <-ctx.Done():
			rs.mu.Lock()
			for id, w := range rs.waiters {
				w <- replicate.Result{ID: id, Done: true, Err: "the daemon is shutting down"}
				delete(rs.waiters, id)
			}
			rs.mu.Unlock()
			return
		case <-t.C:
			rs.core.Step(replicate.EvTick{})
			if n++; n%localEvery == 0 {
				rs.core.Step(replicate.EvLocal{Local: d.localFacts(r)})
			}
		case ev := <-rs.events:
			if p, ok := ev.(replicate.EvPeer); ok {
				d.notePeerExports(r, p)
			}
			if _, ok := ev.(replicate.EvCommand); ok {
				// A command decides on the local log (what --force may
				// lose, whether a handover is caught up): read it now,
				// not up to localEvery ticks ago.
				rs.core.Step(replicate.EvLocal{Local: d.localFacts(r)})
			}
			rs.core.Step(ev)
		}
		d.applyReady(r)
	}
}

// applyReady carries out what the core wants, in order: persist, log,
// answer, send; then reconcile the data path and the exports.
func (d *Daemon) applyReady(r *resource) {
	rs := r.role
	log := d.log.With("resource", r.name)
	for range 8 { // each switch yields a new Ready
		rd := rs.core.Ready()
		if rd.Persist != nil {
			if err := replicate.WriteRoleState(r.dir, *rd.Persist); err != nil {
				log.Error("cannot persist the role state", "err", err)
			}
		}
		for _, n := range rd.Notes {
			log.Log(context.Background(), n.Level, n.Msg)
		}
		for _, m := range rd.Messages {
			go d.sendRole(r, m)
		}
		rs.mu.Lock()
		for _, res := range rd.Results {
			if w := rs.waiters[res.ID]; w != nil {
				select {
				case w <- res:
				default:
				}
				if res.Done {
					delete(rs.waiters, res.ID)
				}
			}
		}
		if !slices.Equal(rs.fetch, rd.FetchFrom) {
			rs.fetch = rd.FetchFrom
			if _, sec, _ := r.paths(); sec != nil {
				defer sec.Reconnect()
			}
		}
		rs.diverged = rd.Diverged
		rs.mu.Unlock()
		if rd.Invalidate {
			if _, sec, _ := r.paths(); sec != nil {
				if err := sec.Invalidate(); err != nil {
					log.Error("invalidate after join", "err", err)
				}
			}
		}
		rs.core.Advance()
		// The sources refuse to ship by this snapshot: update it before
		// the data path switches (a primary that adopted a newer
		// designation must not ship meanwhile).
		rs.mu.Lock()
		rs.status = rs.core.Status()
		rs.mu.Unlock()

		switched := d.reconcile(r, rd)
		rs.mu.Lock()
		rs.status = rs.core.Status()
		rs.mu.Unlock()
		if !switched {
			if rd.Phase != replicate.PhaseStarting {
				rs.settledOnce.Do(func() { close(rs.settled) })
			}
			return
		}
	}
}

// reconcile moves the data path and the exports towards rd; it reports
// whether it switched the data path (and stepped the core with the outcome).
func (d *Daemon) reconcile(r *resource, rd replicate.Ready) bool {
	prim, sec, _ := r.paths()
	cur := replicate.RoleNone
	switch {
	case prim != nil:
		cur = replicate.RolePrimary
	case sec != nil:
		cur = replicate.RoleSecondary
	}
	// Attaching or detaching a secondary reopens its data path.
	reattach := r.detached != rd.Detached && cur == replicate.RoleSecondary && rd.Role == cur
	if (cur != rd.Role || reattach) && time.Now().Before(r.role.retryAt) {
		return false
	}
	if cur == rd.Role && !reattach {
		if r.detached != rd.Detached {
			if err := d.setDetached(r, rd.Detached); err != nil {
				d.log.Error("attach or detach failed; retrying in 5 s", "resource", r.name, "err", err)
				r.role.retryAt = time.Now().Add(5 * time.Second)
				return false
			}
			r.markDetached(rd.Detached)
		}
		if rd.Serve && !r.serving {
			d.serveExports(r)
		} else if !rd.Serve && r.serving {
			d.stopExports(r)
		}
		return false
	}
	// Leaving the primary role: the exports go first.
	if r.serving {
		d.stopExports(r)
	}
	if rd.Role == replicate.RolePrimary && rd.Exports != nil {
		// Taking over from a primary that handed over its export state
		// (taken after its exports stopped): serve with it.
		d.applyExportState(r, rd.Exports, "the handover")
	}
	end, err := d.switchRole(r, cur, rd.Role, rd.Seal, rd.Detached)
	ev := replicate.EvSwitched{Role: rd.Role, End: end}
	if cur == replicate.RolePrimary {
		ev.Exports = r.role.finalExports()
	}
	r.role.peerExports = nil // this node's own state may differ now
	if err == nil {
		r.markDetached(rd.Detached)
	}
	if err != nil {
		ev.Err = err.Error()
		r.role.retryAt = time.Now().Add(5 * time.Second)
		if cur == replicate.RoleNone {
			select {
			case r.role.fatal <- fmt.Errorf("resource %s: %w", r.name, err):
			default:
			}
		}
	}
	r.role.core.Step(ev)
	if err == nil && rd.Role == replicate.RolePrimary && rd.Serve {
		d.serveExports(r)
	}
	return true
}

// switchRole changes r's data path from cur to want. On failure it tries to
// restore cur.
func (d *Daemon) switchRole(r *resource, cur, want replicate.Role, seal, detached bool) (replicate.Position, error) {
	log := d.log.With("resource", r.name)
	log.Info("switching the data path", "from", cur.String(), "to", want.String(), "seal", seal, "detached", detached)
	end, err := d.closePath(r, seal && cur == replicate.RolePrimary)
	if err != nil {
		log.Error("closing the data path failed", "err", err)
		if cur == replicate.RolePrimary && seal {
			// The log could not be sealed: stay primary.
			if perr := d.openPrimary(r); perr != nil {
				log.Error("reopening the log as primary failed too", "err", perr)
			}
			return end, err
		}
	}
	if derr := d.setDetached(r, detached); derr != nil {
		// Not attached: nothing may open a data path on the disk.
		if d.ship != nil {
			d.ship.AddResource(r.name, roleSource{replicate.IdleSource(r.dir, r.name), r})
		}
		return end, derr
	}
	switch want {
	case replicate.RolePrimary:
		err = d.openPrimary(r)
		if err != nil {
			if serr := d.openSecondary(r, false); serr != nil {
				log.Error("reopening the log as secondary failed too", "err", serr)
			}
		}
	case replicate.RoleSecondary:
		err = d.openSecondary(r, cur == replicate.RolePrimary)
	default:
		if d.ship != nil {
			d.ship.AddResource(r.name, roleSource{replicate.IdleSource(r.dir, r.name), r})
		}
	}
	return end, err
}

// sendRole delivers a role message and reports a failure to the core.
func (d *Daemon) sendRole(r *resource, m replicate.RoleMessage) {
	var err error
	if d.ship == nil {
		err = errors.New("no replication configured")
	} else {
		ctx, cancel := context.WithTimeout(d.ctx, 10*time.Second)
		err = replicate.SendRole(ctx, d.node.Name, d.auth(), d.peer(m.To), m)
		cancel()
	}
	if err != nil {
		d.log.Debug("role message not delivered", "resource", r.name, "to", m.To, "kind", m.Kind.String(), "err", err)
		r.role.post(replicate.EvSendFailed{Msg: m, Err: err.Error()})
	}
}

// onRole receives a role message from a peer (ShipServer.OnRole).
func (d *Daemon) onRole(from string, m replicate.RoleMessage) error {
	d.mu.Lock()
	r := d.resources[m.Resource]
	d.mu.Unlock()
	if r == nil || r.role == nil {
		return fmt.Errorf("node %s holds no replicated resource %q", d.node.Name, m.Resource)
	}
	if m.To != d.node.Name {
		return fmt.Errorf("role message for %q reached node %s", m.To, d.node.Name)
	}
	if !r.role.post(replicate.EvMessage{Msg: m}) {
		return fmt.Errorf("node %s is busy; try again", d.node.Name)
	}
	return nil
}

// onPoll routes a peer's polled status to the role loops.
func (d *Daemon) onPoll(ps replicate.PeerState) {
	d.mu.Lock()
	var rs []*resource
	for _, n := range sortedKeys(d.resources) {
		if r := d.resources[n]; r.role != nil {
			rs = append(rs, r)
		}
	}
	d.mu.Unlock()
	for _, r := range rs {
		f := replicate.PeerFacts{Reachable: ps.Err == "", Err: ps.Err}
		if f.Reachable {
			if st, ok := ps.Status.Resource(r.name); ok {
				f.Status = &st
			}
		}
		r.role.post(replicate.EvPeer{Node: ps.Peer.Name, Facts: f})
	}
}

// roleCommand runs an operator command through r's core; progress lines go
// to progress as they come. It returns the final text.
func (d *Daemon) roleCommand(ctx context.Context, r *resource, cmd replicate.Command, progress func(string)) (string, error) {
	rs := r.role
	if rs == nil {
		return "", errNotReplicated
	}
	if d.cluster != nil {
		// Decide on what the peers say now, not on a poll up to a
		// second old (or one from before they started): the answers
		// reach the core before the command.
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		d.cluster.Poll(pctx)
		cancel()
	}
	w := make(chan replicate.Result, 64)
	rs.mu.Lock()
	rs.nextID++
	id := rs.nextID
	rs.waiters[id] = w
	rs.mu.Unlock()
	select {
	case rs.events <- replicate.EvCommand{ID: id, Cmd: cmd}:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	for {
		select {
		case res := <-w:
			if !res.Done {
				if progress != nil {
					progress(res.Text)
				}
				continue
			}
			if res.Err != "" {
				return "", errors.New(res.Err)
			}
			return res.Text, nil
		case <-ctx.Done():
			// The command goes on in the core (it has its own deadline).
			return "", fmt.Errorf("stopped waiting: %w; the command goes on, see `tharsis view`", ctx.Err())
		}
	}
}

// notePeerExports keeps the export state the designated primary publishes
// (a secondary persists the latest, so that it enforces the same AoE Mac
// Mask lists and reservations should it take over, even by force). Only
// the designated primary of this node's designation, serving or handing
// over, is heard; a node taking over gets the final state with the
// handover instead, and a primary keeps its own.
func (d *Daemon) notePeerExports(r *resource, ev replicate.EvPeer) {
	st := ev.Facts.Status
	if st == nil || len(st.Exports) == 0 {
		return
	}
	core, rs := r.role.core, r.role
	des := core.Designation()
	if core.Phase() != replicate.PhaseSecondary || ev.Node != des.Primary || st.Designation != des ||
		(st.Phase != replicate.PhasePrimary && st.Phase != replicate.PhaseHandingOver) {
		return
	}
	if bytes.Equal(st.Exports, rs.peerExports) {
		return
	}
	rs.peerExports = bytes.Clone(st.Exports)
	d.applyExportState(r, st.Exports, ev.Node)
}
