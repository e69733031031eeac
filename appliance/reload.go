package appliance

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/tharsis/tharsis/aoe"
	"github.com/tharsis/tharsis/config"
	"github.com/tharsis/tharsis/replicate"
	"golang.org/x/time/rate"
)

// Live reload (`tharsis reload`, SIGHUP): the daemon re-reads its config
// file and applies what changed (config.Diff) without a restart. A reload
// is all or nothing: when any change cannot be applied live, nothing is
// applied and the reasons are returned. What applies live:
//
//   - NBD and AoE exports added, removed or changed: only the clients of
//     those exports are affected (an NBD export's connections end, an AoE
//     target stops answering); every other export goes on undisturbed.
//   - resources added (this node holds a disk of them: opened, and served
//     or replicated as at start) and removed (closed; refused while this
//     node is the primary of a replicated one: hand it over first);
//   - a resource's connect lists, other nodes' disks (members), primary
//     (of an unreplicated resource: its exports move), retain_max and
//     retain_max_age, service_address and service_interface (the
//     resource's exports restart), verify_interval (from the next time
//     the secondary's data path opens), compress (from the next fetch
//     connection: streams running go on as they started), ack_secondaries
//     and ack_timeout (a primary's writes wait with the new values from
//     the next one on);
//   - other nodes added, removed or moved (replication address);
//   - [limits] sync_rate and fetch_rate.
//
// What does not (refused, with the reason): this node's own replication,
// control or state_dir; secret_file; tls_dir; a held resource's disk path, size (use
// `tharsis resize`), log_dir, replicated, segment_size, sync or apply_window; the other
// [limits] (they size listeners and buffers made at start).

// ErrReloadRefused wraps the reasons a reload was refused.
var ErrReloadRefused = errors.New("the new config cannot be applied while the daemon runs (nothing was changed)")

// liveResourceFields are the resource keys a reload applies live.
var liveResourceFields = []string{"connect", "primary", "retain_max", "retain_max_age", "service_address", "service_interface", "verify_interval", "compress", "ack_secondaries", "ack_timeout"}

// liveLimitFields are the [limits] keys a reload applies live.
var liveLimitFields = []string{"sync_rate", "fetch_rate"}

// ReloadFile loads the config file the daemon runs with and applies it
// (Reload). Load errors come with file:line.
func (d *Daemon) ReloadFile() ([]string, error) {
	cfg, err := config.Load(d.config().File)
	if err != nil {
		return nil, err
	}
	return d.Reload(cfg)
}

// Reload applies cfg, a loaded and validated config, to the running
// daemon. It returns what it changed, one line each; with an error wrapping
// ErrReloadRefused nothing was changed.
func (d *Daemon) Reload(cfg *config.Config) ([]string, error) {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	if !d.running.Load() {
		return nil, fmt.Errorf("%w: the daemon is starting or stopping; reload once it runs", ErrReloadRefused)
	}
	old := d.config()
	changes := config.Diff(old, cfg)
	if refusals := d.refusals(old, cfg, changes); len(refusals) > 0 {
		return nil, fmt.Errorf("%w:\n  %s", ErrReloadRefused, strings.Join(refusals, "\n  "))
	}
	if len(changes) == 0 {
		return []string{"no changes"}, nil
	}
	var done []string
	var errs []error
	say := func(format string, a ...any) { done = append(done, fmt.Sprintf(format, a...)) }
	me := d.node.Name

	// Withdraw what goes away or changes, under the old config.
	var restart []*resource // exports stopped for a new service address
	for _, c := range changes {
		switch {
		case c.What == config.WhatNBD && c.Kind != config.Added:
			e := findNBD(old, c.Name)
			if r := d.serving(e.Resource); r != nil {
				d.withdrawNBD(e)
				say("nbd export %s on %s withdrawn", e.Name, e.Listen)
			}
		case c.What == config.WhatAoE && c.Kind != config.Added:
			e := findAoE(old, c.Name)
			if r := d.serving(e.Resource); r != nil {
				d.withdrawAoE(r, e)
				say("aoe target %s withdrawn", aoeName(e.Shelf, e.Slot))
			}
		case c.What == config.WhatResource && c.Kind == config.Modified && slices.ContainsFunc(c.Fields, isServiceField):
			if r := d.serving(c.Name); r != nil {
				d.stopExports(r) // they restart below with the new address
				restart = append(restart, r)
			}
		}
	}
	for _, c := range changes {
		if c.What != config.WhatResource || !holds(old, c.Name, me) || holds(cfg, c.Name, me) {
			continue
		}
		if err := d.closeResource(c.Name); err != nil {
			errs = append(errs, err)
			continue
		}
		say("resource %s closed on this node (its disk and log directory are left as they are)", c.Name)
	}

	d.conf.Store(cfg)

	if !d.hasPeersIn(old) && d.hasPeers() {
		if err := d.setupReplication(); err != nil {
			errs = append(errs, err)
		} else if err := d.startShip(); err != nil {
			errs = append(errs, err)
		} else {
			say("replication serving on %s", d.node.Replication)
		}
	}
	for _, c := range changes {
		if c.What != config.WhatResource || !holds(cfg, c.Name, me) {
			continue
		}
		rc := cfg.Resources[c.Name]
		if !holds(old, c.Name, me) {
			if err := d.addResource(rc); err != nil {
				errs = append(errs, err)
				continue
			}
			say("resource %s opened on this node", c.Name)
			continue
		}
		d.mu.Lock()
		r := d.resources[c.Name]
		d.mu.Unlock()
		if r == nil {
			continue
		}
		r.conf.Store(rc)
		if prim, _, _ := r.paths(); prim != nil {
			prim.SetAck(d.ackOptions(rc))
		}
		if r.role != nil {
			members, connect := d.roleMembers(rc)
			r.role.send(d.ctx, replicate.EvConfig{Members: members, Connect: connect, ConfigPrimary: rc.Primary,
				AckSecondaries: rc.AckSecondaries, AckForever: rc.AckTimeout == config.AckForever})
		} else if wasPrimary, isPrimary := old.Resources[c.Name].Primary == me, rc.Primary == me; wasPrimary != isPrimary {
			if isPrimary && !r.isDetached() {
				d.serveExports(r)
				say("resource %s: this node is its primary now: serving", c.Name)
			} else if !isPrimary {
				d.stopExports(r)
				say("resource %s: this node is no longer its primary: exports stopped", c.Name)
			}
		}
		if slices.Contains(restart, r) && (r.role != nil || rc.Primary == me) {
			d.serveExports(r) // the new primary of an unreplicated one serves above
		}
		if c.Kind == config.Modified && len(c.Fields) > 0 {
			note := ""
			if slices.Contains(c.Fields, "verify_interval") {
				note = " (verify_interval applies from the next time the secondary's data path opens)"
			}
			if slices.Contains(c.Fields, "compress") {
				note += " (compress applies to the fetch connections opened from now on)"
			}
			say("resource %s: %s applied%s", c.Name, strings.Join(c.Fields, ", "), note)
		}
	}
	// Serve what was added or changed, under the new config.
	for _, c := range changes {
		switch {
		case c.What == config.WhatNBD && c.Kind != config.Removed:
			e := findNBD(cfg, c.Name)
			if r := d.serving(e.Resource); r != nil {
				if err := d.addNBD(r, e); err != nil {
					errs = append(errs, err)
					continue
				}
				say("nbd export %s on %s serving", e.Name, e.Listen)
			}
		case c.What == config.WhatAoE && c.Kind != config.Removed:
			e := findAoE(cfg, c.Name)
			if r := d.serving(e.Resource); r != nil {
				d.expMu.Lock()
				err := d.addAoE(r, func(x *config.AoEExport) bool { return x.Shelf == e.Shelf && x.Slot == e.Slot })
				d.expMu.Unlock()
				if err != nil {
					errs = append(errs, err)
					continue
				}
				say("aoe target %s serving", aoeName(e.Shelf, e.Slot))
			}
		case c.What == config.WhatLimits:
			lim := cfg.Limits.WithDefaults()
			setRate(d.rates.sync, lim.SyncRate)
			setRate(d.rates.fetch, lim.FetchRate)
			say("limits: %s applied", strings.Join(c.Fields, ", "))
		case c.What == config.WhatNode && c.Name != me:
			say("node %s %s", c.Name, c.Kind)
		}
	}
	if err := errors.Join(errs...); err != nil {
		d.log.Error("reload applied with errors", "changes", len(done), "err", err)
		return done, fmt.Errorf("the new config is in force, but some of it failed: %w", err)
	}
	d.log.Info("config reloaded", "file", cfg.File, "changes", strings.Join(done, "; "))
	return done, nil
}

// refusals lists why cfg cannot be applied live (none: it can).
func (d *Daemon) refusals(old, cfg *config.Config, changes []config.Change) []string {
	me := d.node.Name
	var out []string
	if _, ok := cfg.Nodes[me]; !ok {
		return []string{fmt.Sprintf("node %s is not in %s any more: stop its daemon instead", me, cfg.File)}
	}
	for _, c := range changes {
		switch c.What {
		case config.WhatSecret:
			out = append(out, "secret_file changed: the secret is read at start; restart every node with the new secret")
		case config.WhatTLS:
			out = append(out, "tls_dir changed: TLS is set up at start; restart every node (a cluster switches to or from TLS all at once)")
		case config.WhatNode:
			if c.Name == me {
				out = append(out, fmt.Sprintf("node %s (this node): %s cannot change while the daemon runs; restart it", me, strings.Join(c.Fields, ", ")))
			}
		case config.WhatLimits:
			if fixed := without(c.Fields, liveLimitFields); len(fixed) > 0 {
				out = append(out, fmt.Sprintf("[limits] %s: applied at start only (they size listeners and buffers); restart the daemon to change them", strings.Join(fixed, ", ")))
			}
		case config.WhatResource:
			out = append(out, d.resourceRefusals(old, cfg, c)...)
		}
	}
	return out
}

func (d *Daemon) resourceRefusals(old, cfg *config.Config, c config.Change) []string {
	me := d.node.Name
	name := c.Name
	switch {
	case holds(old, name, me) && !holds(cfg, name, me):
		// Removed here (the resource or this node's disk of it).
		d.mu.Lock()
		r := d.resources[name]
		d.mu.Unlock()
		if r != nil && r.role != nil {
			switch r.role.snapshot().Phase {
			case replicate.PhasePrimary, replicate.PhaseHandingOver, replicate.PhasePromoting:
				return []string{fmt.Sprintf("resource %s: this node is its primary; hand it over (`tharsis primary %s` on another node) or give it up (`tharsis secondary %s`) before removing it here", name, name, name)}
			}
		}
		return nil
	case c.Kind != config.Modified || !holds(old, name, me):
		return nil
	}
	var out []string
	o, n := old.Resources[name], cfg.Resources[name]
	for _, f := range c.Fields {
		switch {
		case slices.Contains(liveResourceFields, f):
		case f == "disk":
			if o.Disks[me] != n.Disks[me] {
				out = append(out, fmt.Sprintf("resource %s: the disk of this node changed (%s → %s): remove the resource here first (or restart the daemon)", name, o.Disks[me], n.Disks[me]))
			}
		case f == "size":
			out = append(out, fmt.Sprintf("resource %s: size changes with `tharsis resize %s SIZE` on its primary (online, every node), not by reload", name, name))
		default:
			out = append(out, fmt.Sprintf("resource %s: %s is applied at start only; restart the daemon to change it", name, f))
		}
	}
	return out
}

func isServiceField(f string) bool { return f == "service_address" || f == "service_interface" }

// without returns the elements of a not in b.
func without(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

// holds reports whether node has a disk of resource name in cfg.
func holds(cfg *config.Config, name, node string) bool {
	rc := cfg.Resources[name]
	if rc == nil {
		return false
	}
	_, ok := rc.Disks[node]
	return ok
}

// hasPeersIn is hasPeers for cfg.
func (d *Daemon) hasPeersIn(cfg *config.Config) bool {
	for _, rc := range cfg.Resources {
		if _, ok := rc.Disks[d.node.Name]; ok && rc.Replicated && len(rc.Disks) > 1 {
			return true
		}
	}
	return false
}

func findNBD(cfg *config.Config, key string) *config.NBDExport {
	for _, e := range cfg.NBD {
		if e.Listen+"/"+e.Name == key {
			return e
		}
	}
	panic("reload: no nbd export " + key) // Diff named it
}

func findAoE(cfg *config.Config, key string) *config.AoEExport {
	for _, e := range cfg.AoE {
		if fmt.Sprintf("%d.%d", e.Shelf, e.Slot) == key {
			return e
		}
	}
	panic("reload: no aoe export " + key) // Diff named it
}

// serving returns the resource called name when its exports are served
// here, else nil.
func (d *Daemon) serving(name string) *resource {
	d.mu.Lock()
	r := d.resources[name]
	d.mu.Unlock()
	if r == nil {
		return nil
	}
	d.expMu.Lock()
	defer d.expMu.Unlock()
	if !r.serving {
		return nil
	}
	return r
}

// addNBD serves one NBD export of r.
func (d *Daemon) addNBD(r *resource, e *config.NBDExport) error {
	d.expMu.Lock()
	defer d.expMu.Unlock()
	return d.addNBDLocked(r, e)
}

// withdrawNBD stops one NBD export: its connections answer what they read
// and close; a listener left without exports closes.
func (d *Daemon) withdrawNBD(e *config.NBDExport) {
	d.expMu.Lock()
	defer d.expMu.Unlock()
	l := d.nbd[e.Listen]
	if l == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), exportDrain)
	defer cancel()
	if err := l.srv.Withdraw(ctx, e.Name); err != nil {
		d.log.Warn("nbd export: in-flight requests not answered in time; connections closed", "export", e.Name, "err", err)
	}
	l.names = slices.DeleteFunc(l.names, func(n string) bool { return n == e.Name })
	if len(l.names) == 0 {
		if err := l.srv.Shutdown(ctx); err != nil {
			d.log.Warn("nbd listener closed with connections left", "listen", l.addr, "err", err)
		}
		delete(d.nbd, e.Listen)
		d.log.Info("nbd listener closed: no export left on it", "listen", l.addr)
	}
}

// withdrawAoE stops one AoE target of r (on every interface).
func (d *Daemon) withdrawAoE(r *resource, e *config.AoEExport) {
	d.expMu.Lock()
	defer d.expMu.Unlock()
	d.removeAoETargets(r, func(tc aoe.TargetConfig) bool { return tc.Shelf == e.Shelf && tc.Slot == e.Slot })
}

// addResource opens a resource added by a reload and starts it as at start.
func (d *Daemon) addResource(rc *config.Resource) error {
	if err := d.openResource(rc); err != nil {
		return err
	}
	d.mu.Lock()
	r := d.resources[rc.Name]
	d.mu.Unlock()
	if r.role == nil {
		if rc.Primary == d.node.Name && !r.isDetached() {
			d.serveExports(r)
		}
		return nil
	}
	d.startRole(r)
	return nil
}

// closeResource stops a resource a reload removed from this node: exports,
// role loop, data path, disk.
func (d *Daemon) closeResource(name string) error {
	d.mu.Lock()
	r := d.resources[name]
	d.mu.Unlock()
	if r == nil {
		return nil
	}
	d.stopExports(r)
	if r.role != nil {
		r.role.stop()
	}
	if d.ship != nil {
		d.ship.RemoveResource(name)
	}
	var errs []error
	if err := d.closeLog(r); err != nil {
		errs = append(errs, fmt.Errorf("close the log of resource %s: %w", name, err))
	}
	if !r.disk.Detached() {
		if err := r.disk.Flush(); err != nil {
			errs = append(errs, fmt.Errorf("flush the disk of resource %s: %w", name, err))
		}
	}
	r.disk.Close()
	d.mu.Lock()
	delete(d.resources, name)
	d.mu.Unlock()
	os.Remove(d.detachedMarker(name))
	return errors.Join(errs...)
}

// setRate changes a byte limiter's rate (0: unlimited).
func setRate(l *rate.Limiter, bytesPerSec int64) {
	if bytesPerSec <= 0 {
		l.SetLimit(rate.Inf)
		return
	}
	fresh := replicate.NewByteLimiter(bytesPerSec)
	l.SetBurst(fresh.Burst())
	l.SetLimit(fresh.Limit())
}
