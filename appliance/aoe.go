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

// startAoE serves the AoE exports of the resources this node is primary
// for, one aoe.Server per interface.
func (d *Daemon) startAoE(ctx context.Context) error {
	byIface := map[string][]aoe.TargetConfig{}
	for _, e := range d.cfg.AoE {
		dev := d.exportDevice(e.Resource)
		if dev == nil {
			continue
		}
		name := aoeName(e.Shelf, e.Slot)
		tc := aoe.TargetConfig{
			Shelf: e.Shelf, Slot: e.Slot, Device: dev,
			ReadOnly: e.ReadOnly, WriteCache: e.WriteCache,
			AllowMACs: e.AllowMACs, BufCnt: e.BufCnt,
			StateDir: d.node.StateDir,
			Model:    "tharsis " + e.Resource,
			Serial:   "tharsis-" + name + "-" + d.node.Name,
		}
		for _, iface := range e.Interfaces {
			byIface[iface] = append(byIface[iface], tc)
		}
		mode := "writes acknowledged when durable"
		if e.WriteCache {
			mode = "write cache ON: writes acknowledged before they are durable"
		}
		d.log.Info("aoe target", "target", name, "resource", e.Resource, "interfaces", e.Interfaces, "read_only", e.ReadOnly, "mode", mode)
	}
	ifaces := make([]string, 0, len(byIface))
	for i := range byIface {
		ifaces = append(ifaces, i)
	}
	sort.Strings(ifaces)
	for _, iface := range ifaces {
		srv, err := aoe.NewServer(iface, byIface[iface], d.log.With("aoe", iface))
		if err != nil {
			return fmt.Errorf("aoe export on %s: %w", iface, err)
		}
		sctx, cancel := context.WithCancel(ctx)
		s := &aoeServer{iface: iface, srv: srv, cancel: cancel, done: make(chan error, 1)}
		go func() { s.done <- srv.Serve(sctx) }()
		d.aoe = append(d.aoe, s)
	}
	return nil
}

// stopAoE stops answering AoE frames; in-flight frames are finished.
func (d *Daemon) stopAoE() {
	for _, s := range d.aoe {
		s.cancel()
		<-s.done
		s.srv.Close()
	}
	d.aoe = nil
}

func aoeName(shelf uint16, slot uint8) string { return fmt.Sprintf("e%d.%d", shelf, slot) }

func joinComma(s []string) string { return strings.Join(s, ",") }
