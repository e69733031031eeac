package appliance

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/tharsis/tharsis/config"
	"github.com/tharsis/tharsis/internal/netlimit"
	"github.com/tharsis/tharsis/nbd"
)

// Exports have a lifecycle per resource: serveExports starts the NBD and
// AoE exports of one resource (on promotion, or at start for the primary of
// an unreplicated resource), stopExports withdraws them (before a demotion
// seals the log), answering what is in flight first. Exports of other
// resources on the same NBD listener or AoE interface are not disturbed
// (AoE targets are added to and removed from their interface's server).

// exportDrain bounds the wait for in-flight requests when exports stop.
const exportDrain = 30 * time.Second

// serveExports starts r's exports. Failures (a listen address not on this
// node, an interface gone) are logged and kept for `view`; the other
// exports still start.
func (d *Daemon) serveExports(r *resource) {
	d.expMu.Lock()
	defer d.expMu.Unlock()
	var errs []error
	errs = append(errs, d.addServiceAddr(r)) // before any export: see service.go
	for _, e := range d.config().NBD {
		if e.Resource != r.name {
			continue
		}
		l, err := d.nbdListen(e.Listen)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		l.srv.AddExport(d.nbdExport(r, e))
		if !slices.Contains(l.names, e.Name) {
			l.names = append(l.names, e.Name)
		}
		d.log.Info("nbd export serving", "resource", r.name, "listen", l.addr, "export", e.Name)
	}
	if err := d.addAoE(r, nil); err != nil {
		errs = append(errs, err)
	}
	err := errors.Join(errs...)
	r.setExportErr(err)
	r.mu.Lock()
	r.serving = true
	r.mu.Unlock()
	if err != nil {
		d.log.Error("exports failed to start", "resource", r.name, "err", err)
	}
}

// nbdExport is what the NBD server serves of export e of r.
func (d *Daemon) nbdExport(r *resource, e *config.NBDExport) nbd.Export {
	r.mu.Lock()
	dev := r.dev
	r.mu.Unlock()
	return nbd.Export{Name: e.Name, Description: e.Description, Device: dev, ReadOnly: e.ReadOnly,
		Stats: d.counters.get("nbd", e.Name, r.name)}
}

// nbdListen returns the NBD listener of addr, listening first if needed.
// Call with d.expMu held.
func (d *Daemon) nbdListen(addr string) (*nbdListener, error) {
	if l := d.nbd[addr]; l != nil {
		return l, nil
	}
	ln, err := d.listenNBD(addr)
	if err != nil {
		return nil, fmt.Errorf("nbd export: listen on %s: %w (is another server using the port, or is the address not on this node? change `listen` in the config)", addr, err)
	}
	lim := d.limits()
	srv := &nbd.Server{
		Logger:           d.log.With("nbd", addr),
		Memory:           d.nbdMemory(),
		MaxConns:         lim.NBDMaxConnections,
		HandshakeTimeout: lim.NBDHandshakeTimeout,
		RequestTimeout:   lim.NBDRequestTimeout,
		IdleTimeout:      lim.NBDIdleTimeout,
	}
	l := &nbdListener{addr: ln.Addr().String(), ln: ln, srv: srv, served: make(chan error, 1)}
	go func() {
		err := srv.Serve(ln)
		if err != nil && !errors.Is(err, nbd.ErrServerClosed) {
			d.log.Error("nbd listener failed", "listen", addr, "err", err)
		}
		l.served <- err
	}()
	d.nbd[addr] = l
	return l, nil
}

// nbdMemory returns the payload budget every NBD listener of the daemon
// shares: the one the first listener got, or a new one of nbd_memory. Call
// with d.expMu held.
func (d *Daemon) nbdMemory() *nbd.MemoryBudget {
	for _, l := range d.nbd {
		return l.srv.Memory
	}
	return nbd.NewMemoryBudget(d.limits().NBDMemory)
}

// limits returns the [limits] of the config.
func (d *Daemon) limits() config.Limits { return d.config().Limits.WithDefaults() }

// limitReplication bounds the replication listener l: at most
// replication_max_connections connections, and replication_auth_timeout
// for a peer to authenticate (the ship server clears the deadline once it
// has; its own bound applies too).
func (d *Daemon) limitReplication(l net.Listener) net.Listener {
	lim := d.limits()
	gate := netlimit.NewGate(lim.ReplicationMaxConnections, d.log, "replication "+d.node.Replication)
	return netlimit.NewListener(l, gate, lim.ReplicationAuthTimeout)
}

// stopExports withdraws r's exports: NBD connections of r's exports stop
// reading, answer what they read and close; r's AoE targets go away.
func (d *Daemon) stopExports(r *resource) {
	d.expMu.Lock()
	defer d.expMu.Unlock()
	if !r.serving {
		return
	}
	svcErr := d.dropServiceAddr(r) // first of all: see service.go
	ctx, cancel := context.WithTimeout(context.Background(), exportDrain)
	defer cancel()
	for _, e := range d.config().NBD {
		if e.Resource != r.name {
			continue
		}
		if l := d.nbd[e.Listen]; l != nil {
			if err := l.srv.Withdraw(ctx, e.Name); err != nil {
				d.log.Warn("nbd export: in-flight requests not answered in time; connections closed", "export", e.Name, "err", err)
			}
			l.names = slices.DeleteFunc(l.names, func(n string) bool { return n == e.Name })
		}
	}
	if final := d.removeAoE(r); final != nil && r.role != nil {
		r.role.setFinal(final) // handed to the next primary
	}
	r.mu.Lock()
	r.serving = false
	r.mu.Unlock()
	r.setExportErr(svcErr)
	d.log.Info("exports stopped", "resource", r.name)
}
