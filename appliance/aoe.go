package appliance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/tharsis/tharsis/aoe"
	"github.com/tharsis/tharsis/config"
)

// AoE exports follow the primary. Each interface has one aoe.Server while
// any resource served here has a target on it; serveExports adds a
// resource's targets to the servers of their interfaces (starting a server
// if needed) and stopExports removes them, so other resources' targets on
// the same interface are not disturbed. A removed target answers nothing
// new; the requests it had received are answered before the removal
// returns, which is before a handover seals the log. A target starting to
// be served is announced (unsolicited Query Config responses, see
// aoe.DefaultAnnounceAt) so that initiators move to this node at once.
//
// What initiators set on a target (config string, Mac Mask list,
// reservations) travels with the resource: the primary publishes it in its
// replication status (replicate.ResourceStatus.Exports), which every peer
// polls each second and persists (STATE_DIR/aoe-eS.S.json) while it is a
// secondary of that primary; a planned handover carries the final state,
// taken after the targets were removed, in the handover-sealed message,
// and the new primary persists it before it adds its targets.

// aoeServer is one raw-socket AoE server: the targets of one interface.
type aoeServer struct {
	iface  string
	srv    *aoe.Server
	cancel context.CancelFunc
	done   chan error
}

// aoeBinding is one target being served: for the status, which reads its
// state without taking Daemon.expMu.
type aoeBinding struct {
	name  string
	iface string
	shelf uint16
	slot  uint8
	srv   *aoe.Server
	// first: iface is the target's first interface in the config; its
	// state is the one published and handed over (a target served on
	// several interfaces has one state per interface, sharing one file).
	first bool
}

// exportState is the state of a resource's exports that travels with the
// resource (replicate.ResourceStatus.Exports, RoleMessage.Exports).
type exportState struct {
	// AoE holds each AoE target's state by name (e1.1).
	AoE map[string]aoe.State `json:"aoe,omitempty"`
}

// aoeTargets returns the AoE targets of resource r by interface (only
// those keep accepts; nil: all).
func (d *Daemon) aoeTargets(r *resource, keep func(*config.AoEExport) bool) map[string][]aoe.TargetConfig {
	out := map[string][]aoe.TargetConfig{}
	for _, e := range d.config().AoE {
		if e.Resource != r.name || keep != nil && !keep(e) {
			continue
		}
		name := aoeName(e.Shelf, e.Slot)
		tc := aoe.TargetConfig{
			Shelf: e.Shelf, Slot: e.Slot, Device: r.dev,
			ReadOnly: e.ReadOnly, WriteCache: e.WriteCache,
			AllowMACs: e.AllowMACs, BufCnt: e.BufCnt,
			StateDir: d.node.StateDir,
			Model:    "tharsis " + e.Resource,
			Serial:   "tharsis-" + name + "-" + d.node.Name,
			Stats:    d.counters.get("aoe", name, e.Resource),
		}
		for _, iface := range e.Interfaces {
			out[iface] = append(out[iface], tc)
		}
		mode := "writes acknowledged when durable"
		if e.WriteCache {
			mode = "write cache ON: writes acknowledged before they are durable"
		}
		d.log.Info("aoe target", "target", name, "resource", e.Resource, "interfaces", e.Interfaces, "read_only", e.ReadOnly, "mode", mode)
	}
	return out
}

// addAoE serves r's AoE targets (those keep accepts; nil: all): each is
// added to the server of its interface, which starts if none runs. Targets
// that could not be added are reported in the error; the others serve.
// Call with d.expMu held.
func (d *Daemon) addAoE(r *resource, keep func(*config.AoEExport) bool) error {
	targets := d.aoeTargets(r, keep)
	if len(targets) == 0 {
		return nil
	}
	served := d.aoeRes[r.name]
	if served == nil {
		served = map[string][]aoe.TargetConfig{}
	}
	var errs []string
	for _, iface := range sortedKeys(targets) {
		tcs := targets[iface]
		if s := d.aoe[iface]; s != nil {
			for _, tc := range tcs {
				if err := s.srv.AddTarget(tc); err != nil {
					errs = append(errs, fmt.Sprintf("aoe export %s on %s: %v", tc.Name(), iface, err))
					continue
				}
				served[iface] = append(served[iface], tc)
			}
			continue
		}
		srv, err := aoe.NewServer(iface, tcs, d.log.With("aoe", iface))
		if err != nil {
			errs = append(errs, fmt.Sprintf("aoe export on %s: %v", iface, err))
			continue
		}
		sctx, cancel := context.WithCancel(d.ctx)
		s := &aoeServer{iface: iface, srv: srv, cancel: cancel, done: make(chan error, 1)}
		go func() {
			err := srv.Serve(sctx)
			if err != nil && sctx.Err() == nil {
				go d.aoeFailed(s, err)
			}
			s.done <- err
		}()
		d.aoe[iface] = s
		served[iface] = append(served[iface], tcs...)
	}
	if len(served) > 0 {
		d.aoeRes[r.name] = served
		if r.role != nil {
			r.role.setAoE(d.aoeBindings(r, served))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// aoeBindings lists what r serves (served: targets by interface) for the
// status.
func (d *Daemon) aoeBindings(r *resource, served map[string][]aoe.TargetConfig) []aoeBinding {
	var out []aoeBinding
	seen := map[string]bool{}
	for _, e := range d.config().AoE {
		if e.Resource != r.name {
			continue
		}
		for _, iface := range e.Interfaces {
			for _, tc := range served[iface] {
				if tc.Shelf == e.Shelf && tc.Slot == e.Slot && d.aoe[iface] != nil {
					name := tc.Name()
					out = append(out, aoeBinding{name: name, iface: iface, shelf: tc.Shelf, slot: tc.Slot, srv: d.aoe[iface].srv, first: !seen[name]})
					seen[name] = true
				}
			}
		}
	}
	return out
}

// removeAoE withdraws r's AoE targets: each stops answering at once; what
// it had received is answered first (at most exportDrain). A server left
// without targets stops. It returns the targets' final state (of each
// target's first interface in the config), or nil. Call with d.expMu held.
func (d *Daemon) removeAoE(r *resource) json.RawMessage {
	return d.removeAoETargets(r, nil)
}

// removeAoETargets is removeAoE for the targets drop accepts (nil: all).
func (d *Daemon) removeAoETargets(r *resource, drop func(aoe.TargetConfig) bool) json.RawMessage {
	served := d.aoeRes[r.name]
	if served == nil {
		return nil
	}
	kept, gone := map[string][]aoe.TargetConfig{}, map[string][]aoe.TargetConfig{}
	for iface, tcs := range served {
		for _, tc := range tcs {
			if drop == nil || drop(tc) {
				gone[iface] = append(gone[iface], tc)
			} else {
				kept[iface] = append(kept[iface], tc)
			}
		}
	}
	first := map[string]bool{}
	for _, b := range d.aoeBindings(r, served) {
		if b.first {
			first[b.iface+"/"+b.name] = true
		}
	}
	if len(kept) == 0 {
		delete(d.aoeRes, r.name)
		if r.role != nil {
			r.role.setAoE(nil)
		}
	} else {
		d.aoeRes[r.name] = kept
		if r.role != nil {
			r.role.setAoE(d.aoeBindings(r, kept))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), exportDrain)
	defer cancel()
	final := exportState{AoE: map[string]aoe.State{}}
	for _, iface := range sortedKeys(gone) {
		s := d.aoe[iface]
		if s == nil {
			continue // its server failed and is gone
		}
		for _, tc := range gone[iface] {
			st, err := s.srv.RemoveTarget(ctx, tc.Shelf, tc.Slot)
			if err != nil {
				d.log.Warn("aoe target withdrawn; requests in flight not answered in time", "target", tc.Name(), "iface", iface, "err", err)
			}
			if first[iface+"/"+tc.Name()] && (err == nil || errors.Is(err, context.DeadlineExceeded)) {
				final.AoE[tc.Name()] = st
			}
		}
		if len(s.srv.Targets()) == 0 {
			s.cancel()
			<-s.done
			s.srv.Close()
			delete(d.aoe, iface)
		}
	}
	if len(final.AoE) == 0 {
		return nil
	}
	b, _ := json.Marshal(final)
	return b
}

// aoeFailed reports an AoE server whose socket failed: its targets answer
// nothing; `view` and the log say so, and the next serveExports starts it
// afresh.
func (d *Daemon) aoeFailed(s *aoeServer, err error) {
	d.expMu.Lock()
	if d.aoe[s.iface] != s {
		d.expMu.Unlock()
		return
	}
	delete(d.aoe, s.iface)
	var names []string
	for _, name := range sortedKeys(d.aoeRes) {
		if _, ok := d.aoeRes[name][s.iface]; ok {
			names = append(names, name)
		}
	}
	d.expMu.Unlock()
	d.log.Error("aoe server failed: its targets answer nothing until the resource's exports restart (check the interface)", "iface", s.iface, "resources", names, "err", err)
	for _, name := range names {
		d.mu.Lock()
		r := d.resources[name]
		d.mu.Unlock()
		if r != nil {
			r.setExportErr(fmt.Errorf("aoe export on %s failed: %v", s.iface, err))
		}
	}
}

// liveAoEState returns the state of the AoE targets in bindings (what a
// primary publishes), or nil.
func liveAoEState(bindings []aoeBinding) json.RawMessage {
	st := exportState{AoE: map[string]aoe.State{}}
	for _, b := range bindings {
		if !b.first {
			continue
		}
		if ts, ok := b.srv.TargetState(b.shelf, b.slot); ok {
			st.AoE[b.name] = ts
		}
	}
	if len(st.AoE) == 0 {
		return nil
	}
	out, _ := json.Marshal(st)
	return out
}

// applyExportState persists the AoE state another node had for r (raw:
// an exportState) as this node's, so that its targets start from it when
// it serves r. from names where it came from, for the log. Call it only
// while this node does not serve r.
func (d *Daemon) applyExportState(r *resource, raw json.RawMessage, from string) {
	var es exportState
	if err := json.Unmarshal(raw, &es); err != nil {
		d.log.Warn("unreadable export state ignored", "resource", r.name, "from", from, "err", err)
		return
	}
	for _, e := range d.config().AoE {
		if e.Resource != r.name {
			continue
		}
		name := aoeName(e.Shelf, e.Slot)
		st, ok := es.AoE[name]
		if !ok {
			continue
		}
		if cur, ok, err := aoe.LoadState(d.node.StateDir, e.Shelf, e.Slot); err == nil && ok && cur.Equal(st) {
			continue
		}
		if err := aoe.SaveState(d.node.StateDir, e.Shelf, e.Slot, st); err != nil {
			d.log.Error("cannot persist the AoE state of a target; serving it from here would not enforce its Mac Mask list and reservations", "target", name, "from", from, "err", err)
			continue
		}
		d.log.Info("aoe target state taken over", "target", name, "from", from, "mac_mask", len(st.Masks), "reserve", len(st.Reserve))
	}
}

// stopAoE stops answering AoE frames; in-flight frames are finished.
func (d *Daemon) stopAoE() {
	d.expMu.Lock()
	defer d.expMu.Unlock()
	for _, s := range d.aoe {
		s.cancel()
		<-s.done
		s.srv.Close()
	}
	d.aoe = map[string]*aoeServer{}
}

func aoeName(shelf uint16, slot uint8) string { return fmt.Sprintf("e%d.%d", shelf, slot) }

func joinComma(s []string) string { return strings.Join(s, ",") }
