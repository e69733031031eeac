package appliance

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/tharsis/tharsis/internal/vip"
)

// The service address of a resource (service_address) follows its exports:
// serveExports adds it before any export starts and announces it;
// stopExports removes it before anything else, so before NBD connections
// are withdrawn and before a demotion seals the log. A node becoming
// primary serves (and adds the address) only after it replayed the old
// primary's log to its sealed end and opened its own segment, and the old
// primary seals only after it removed the address: two nodes never hold it
// in a planned handover. At start a node removes a leftover address (from a
// crash) before anything serves; at shutdown it removes it before draining.

// announceAt is when the new holder announces the address, from the moment
// it added it: the first announcement goes out before the exports start,
// the others in the background (a frame may be lost; a client's neighbour
// entry may have been in a state that ignored the first).
var announceAt = []time.Duration{0, 500 * time.Millisecond, time.Second}

// serviceAddr is the state of a resource's service address on this node;
// changed under Daemon.expMu.
type serviceAddr struct {
	held    atomic.Bool        // added by this daemon and not removed since (read by Status)
	stop    context.CancelFunc // stops the announcements still to come
	stopped chan struct{}      // closed when they stopped
}

// serviceOf returns r's service address and this node's interface for it;
// ok is false when r has none.
func (d *Daemon) serviceOf(r *resource) (pf netip.Prefix, iface string, ok bool) {
	if !r.config().ServiceAddress.IsValid() {
		return netip.Prefix{}, "", false
	}
	iface = r.config().ServiceInterface[d.node.Name]
	return r.config().ServiceAddress, iface, iface != ""
}

// addServiceAddr adds r's service address to this node's interface and
// announces it: once before it returns, then in the background at
// announceAt. Called by serveExports with d.expMu held, before any export
// starts. It returns nil when r has no service address; an error is
// reported with r's exports (view, log).
func (d *Daemon) addServiceAddr(r *resource) error {
	pf, iface, ok := d.serviceOf(r)
	if !ok {
		return nil
	}
	log := d.log.With("resource", r.name, "service_address", pf.String(), "interface", iface)
	added, err := vip.Add(iface, pf)
	if err != nil {
		return fmt.Errorf("service address %s: %w; NBD clients cannot reach this node at it: fix service_interface or the interface, then run `tharsis secondary %s` and `tharsis primary %s` (or restart the daemon)", pf, err, r.name, r.name)
	}
	r.svc.held.Store(true)
	if added {
		log.Info("service address added")
	} else {
		log.Warn("service address was already on the interface; keeping it (added by hand, or left over?)")
	}
	start := time.Now()
	first := vip.Announce(iface, pf.Addr())
	ctx, stop := context.WithCancel(d.runCtx())
	stopped := make(chan struct{})
	r.svc.stop, r.svc.stopped = stop, stopped
	go func() {
		defer close(stopped)
		for _, at := range announceAt[1:] {
			t := time.NewTimer(time.Until(start.Add(at)))
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			if err := vip.Announce(iface, pf.Addr()); err != nil {
				log.Warn("service address not announced", "err", err)
			}
		}
		log.Debug("service address announced", "times", len(announceAt))
	}()
	if first != nil {
		return fmt.Errorf("service address %s added, but %w; clients whose neighbour (ARP) cache points at the old primary reach this node only once that entry expires", pf, first)
	}
	return nil
}

// dropServiceAddr stops announcing r's service address and removes it from
// this node's interface. Called by stopExports with d.expMu held, before
// anything else is withdrawn. The error (also logged) is kept with r's
// exports for view.
func (d *Daemon) dropServiceAddr(r *resource) error {
	if r.svc.stop != nil {
		r.svc.stop()
		<-r.svc.stopped
		r.svc.stop, r.svc.stopped = nil, nil
	}
	pf, iface, ok := d.serviceOf(r)
	if !ok {
		return nil
	}
	r.svc.held.Store(false)
	log := d.log.With("resource", r.name, "service_address", pf.String(), "interface", iface)
	removed, err := vip.Remove(iface, pf.Addr())
	if err != nil {
		err = fmt.Errorf("service address %s could not be removed from %s: %w; this node may still receive its clients: remove it by hand (ip addr del %s dev %s)", pf, iface, err, pf, iface)
		log.Error("service address not removed", "err", err)
		return err
	}
	if removed {
		log.Info("service address removed")
	}
	return nil
}

// dropLeftoverServiceAddrs removes the service addresses of the resources
// this node holds from its interfaces, before anything serves: an address
// found there was left by a daemon that did not stop cleanly (kill -9, a
// crash), and another node may hold it now.
func (d *Daemon) dropLeftoverServiceAddrs() {
	d.expMu.Lock()
	defer d.expMu.Unlock()
	for _, name := range sortedKeys(d.resources) {
		r := d.resources[name]
		pf, iface, ok := d.serviceOf(r)
		if !ok {
			continue
		}
		held, err := vip.Holds(iface, pf.Addr())
		if err == nil && !held {
			continue
		}
		if err == nil {
			d.log.Warn("service address left over from an earlier run (the daemon did not stop cleanly); removing it", "resource", name, "service_address", pf.String(), "interface", iface)
			err = d.dropServiceAddr(r)
		}
		if err != nil {
			r.setExportErr(err)
			d.log.Error("cannot check for a leftover service address", "resource", name, "err", err)
		}
	}
}

// dropServiceAddrs removes the service addresses of every serving
// resource (shutdown: before the exports drain).
func (d *Daemon) dropServiceAddrs() {
	d.expMu.Lock()
	defer d.expMu.Unlock()
	for _, name := range sortedKeys(d.resources) {
		if r := d.resources[name]; r.serving {
			_ = d.dropServiceAddr(r)
		}
	}
}

// listenNBD listens on the NBD address addr. When an export of a resource
// with a service address is served there, the socket is transparent
// (vip.Transparent): it may bind to the service address itself before the
// node holds it, and a connection withdrawn after its address was removed
// still sends its last answers and its FIN to the client, which then
// reconnects at once instead of waiting for a timeout. Call with d.expMu
// held.
func (d *Daemon) listenNBD(addr string) (net.Listener, error) {
	var lc net.ListenConfig
	for _, e := range d.config().NBD {
		if r := d.config().Resources[e.Resource]; e.Listen == addr && r != nil && r.ServiceAddress.IsValid() {
			lc.Control = vip.Transparent
			break
		}
	}
	return lc.Listen(context.Background(), "tcp", addr)
}

// serviceStatus lists r's service address for view while this node holds
// it.
func (d *Daemon) serviceStatus(r *resource) []ExportStatus {
	pf, iface, ok := d.serviceOf(r)
	if !ok || !r.svc.held.Load() {
		return nil
	}
	return []ExportStatus{{Kind: "ip", Name: pf.String(), Where: iface}}
}

// runCtx is the daemon's run context (Background before Run).
func (d *Daemon) runCtx() context.Context {
	if d.ctx == nil {
		return context.Background()
	}
	return d.ctx
}
