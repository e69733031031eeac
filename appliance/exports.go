package appliance

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/tharsis/tharsis/config"
	"github.com/tharsis/tharsis/internal/netlimit"
	"github.com/tharsis/tharsis/nbd"
	"github.com/tharsis/tharsis/replicate"
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
		errs = append(errs, d.addNBDLocked(r, e))
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

// addNBDLocked serves NBD export e of r, listening first if needed. An
// export with tls on first (re)loads the node's certificate from tls_dir
// into its listener's server, so a certificate renewed with `tharsis cert
// create-node --force` is served from the next restart of the export on.
// Call with d.expMu held.
func (d *Daemon) addNBDLocked(r *resource, e *config.NBDExport) error {
	var tlsConfig *tls.Config
	if e.TLS != "" {
		var err error
		if tlsConfig, err = d.nbdTLSConfig(); err != nil {
			return fmt.Errorf("nbd export %s on %s (tls = %q): %w", e.Name, e.Listen, e.TLS, err)
		}
	}
	l, err := d.nbdListen(e.Listen)
	if err != nil {
		return err
	}
	if tlsConfig != nil {
		l.srv.SetTLSConfig(tlsConfig)
	}
	l.srv.AddExport(d.nbdExport(r, e))
	if !slices.Contains(l.names, e.Name) {
		l.names = append(l.names, e.Name)
	}
	d.log.Info("nbd export serving", "resource", r.name, "listen", l.addr, "export", e.Name, "tls", e.TLSMode(), "tls_verify_client", e.TLSVerifyClient)
	return nil
}

// nbdTLSConfig is the TLS configuration of NBD exports with tls on: this
// node's certificate and key from tls_dir, and client certificates checked
// against the cluster CA there.
func (d *Daemon) nbdTLSConfig() (*tls.Config, error) {
	dir := d.config().TLSDir
	if dir == "" {
		return nil, errors.New("no tls_dir in the config")
	}
	id, err := replicate.LoadTLS(dir, d.node.Name, nil)
	if err != nil {
		return nil, err
	}
	if left := time.Until(id.Leaf.NotAfter); left < 30*24*time.Hour {
		d.log.Warn("this node's certificate, which NBD over TLS serves, expires soon; make a new one with `tharsis cert create-node --force`", "expires", id.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return nbd.ServerTLSConfig(id.Cert, id.CA), nil
}

// nbdExport is what the NBD server serves of export e of r.
func (d *Daemon) nbdExport(r *resource, e *config.NBDExport) nbd.Export {
	r.mu.Lock()
	dev := r.dev
	r.mu.Unlock()
	x := nbd.Export{Name: e.Name, Description: e.Description, Device: dev, ReadOnly: e.ReadOnly,
		Stats: d.counters.get("nbd", e.Name, r.name), VerifyClient: e.TLSVerifyClient}
	switch e.TLS {
	case config.TLSOn:
		x.TLS = nbd.TLSOn
	case config.TLSRequire:
		x.TLS = nbd.TLSRequire
	}
	return x
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
