package appliance

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/tharsis/tharsis/aoe"
)

// aoeServer is one raw-socket AoE server: every target of one interface.
type aoeServer struct {
	iface  string
	srv    *aoe.Server
	cancel context.CancelFunc
	done   chan error
}

// aoeTargets returns the AoE targets of resource r by interface.
func (d *Daemon) aoeTargets(r *resource) map[string][]aoe.TargetConfig {
	out := map[string][]aoe.TargetConfig{}
	for _, e := range d.cfg.AoE {
		if e.Resource != r.name {
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

// setAoE makes the AoE servers serve the targets of the resources in
// d.aoeRes: the server of each interface whose set of targets changed is
// stopped (in-flight frames finished) and started again with the new set.
// Call with d.expMu held.
func (d *Daemon) setAoE(changed map[string]bool) error {
	byIface := map[string][]aoe.TargetConfig{}
	for _, name := range sortedKeys(d.aoeRes) {
		for iface, tcs := range d.aoeRes[name] {
			byIface[iface] = append(byIface[iface], tcs...)
		}
	}
	ifaces := make([]string, 0, len(changed))
	for i := range changed {
		ifaces = append(ifaces, i)
	}
	sort.Strings(ifaces)
	var errs []string
	for _, iface := range ifaces {
		if s := d.aoe[iface]; s != nil {
			s.cancel()
			<-s.done
			s.srv.Close()
			delete(d.aoe, iface)
		}
		tcs := byIface[iface]
		if len(tcs) == 0 {
			continue
		}
		srv, err := aoe.NewServer(iface, tcs, d.log.With("aoe", iface))
		if err != nil {
			errs = append(errs, fmt.Sprintf("aoe export on %s: %v", iface, err))
			continue
		}
		sctx, cancel := context.WithCancel(d.ctx)
		s := &aoeServer{iface: iface, srv: srv, cancel: cancel, done: make(chan error, 1)}
		go func() { s.done <- srv.Serve(sctx) }()
		d.aoe[iface] = s
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
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
