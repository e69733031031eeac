package appliance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/tharsis/tharsis/blockdev"
	"github.com/tharsis/tharsis/config"
	"github.com/tharsis/tharsis/nbd"
	"github.com/tharsis/tharsis/replicate"
)

// Options configure a Daemon.
type Options struct {
	Config *config.Config // the validated cluster config
	Node   string         // which node of Config this daemon is
	Logger *slog.Logger   // nil means slog.Default()
}

// Daemon is one running tharsis node.
type Daemon struct {
	cfg  *config.Config
	node *config.Node
	log  *slog.Logger

	mu        sync.Mutex
	resources map[string]*resource
	nbd       []*nbdListener
	aoe       []*aoeServer
	control   *controlServer
	started   time.Time

	ctx     context.Context // lives as long as Run
	secret  []byte
	ship    *replicate.ShipServer // nil when no resource here has peers
	shipLn  net.Listener
	cluster *replicate.Cluster
	stopBg  context.CancelFunc // stops the cluster poller
}

// resource is one resource this node holds a disk of.
type resource struct {
	name    string
	cfg     *config.Resource
	disk    *blockdev.File
	dev     blockdev.Device      // what the exports see
	primary bool                 // this node is the resource's primary
	prim    *replicate.Primary   // the log, on the primary of a replicated resource
	sec     *replicate.Secondary // fetch and replay, on a secondary
	src     replicate.Source     // what peers fetch of this node's log
	secStop context.CancelFunc   // stops sec.Run
	secDone chan struct{}        // closed when sec.Run returned
}

// repl returns what the log verbs act on, or nil for an unreplicated
// resource.
func (r *resource) repl() logHolder {
	switch {
	case r.prim != nil:
		return r.prim
	case r.sec != nil:
		return r.sec
	}
	return nil
}

type nbdListener struct {
	addr   string
	ln     net.Listener
	srv    *nbd.Server
	names  []string
	served chan error
}

// New validates that node exists in cfg and returns a Daemon for it.
func New(opts Options) (*Daemon, error) {
	n, ok := opts.Config.Nodes[opts.Node]
	if !ok {
		return nil, fmt.Errorf("node %q is not in %s (it has %v): pass --node with one of them", opts.Node, opts.Config.File, opts.Config.NodeNames())
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Daemon{cfg: opts.Config, node: n, log: log.With("node", n.Name), resources: map[string]*resource{}}, nil
}

// Run opens the node's resources, serves their exports and the control
// socket, and blocks until ctx is done. It then drains in-flight requests,
// flushes every device and returns nil; an error means the node could not
// start or could not shut down cleanly.
func (d *Daemon) Run(ctx context.Context, ready func(*Daemon)) (err error) {
	d.started = time.Now()
	if err := os.MkdirAll(d.node.StateDir, 0o700); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	d.ctx = ctx
	defer func() {
		if cerr := d.shutdown(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if err := d.setupReplication(); err != nil {
		return err
	}
	for _, name := range d.cfg.ResourceNames() {
		if err := d.openResource(d.cfg.Resources[name]); err != nil {
			return err
		}
	}
	if err := d.startShip(); err != nil {
		return err
	}
	// Automatic retention; stopped before shutdown closes the logs.
	rctx, stopRetain := context.WithCancel(ctx)
	retained := make(chan struct{})
	go func() { defer close(retained); d.retain(rctx) }()
	defer func() { stopRetain(); <-retained }()
	if err := d.startControl(); err != nil {
		return err
	}
	if err := d.startNBD(); err != nil {
		return err
	}
	if err := d.startAoE(ctx); err != nil {
		return err
	}
	d.log.Info("tharsis node running", "resources", len(d.resources), "control", d.node.Control)
	if ready != nil {
		ready(d)
	}
	select {
	case <-ctx.Done():
		d.log.Info("shutting down: draining in-flight requests")
		return nil
	case err := <-d.failed():
		return err
	}
}

// failed returns a channel that yields the first fatal serving error.
func (d *Daemon) failed() <-chan error {
	ch := make(chan error, 1)
	for _, l := range d.nbd {
		go func() {
			if err := <-l.served; err != nil && !errors.Is(err, nbd.ErrServerClosed) {
				select {
				case ch <- fmt.Errorf("nbd listener %s: %w", l.addr, err):
				default:
				}
			}
		}()
	}
	return ch
}

func (d *Daemon) openResource(rc *config.Resource) error {
	path, ok := rc.Disks[d.node.Name]
	if !ok {
		return nil // not held here
	}
	log := d.log.With("resource", rc.Name)
	disk, err := blockdev.OpenFile(path, false)
	if err != nil {
		return fmt.Errorf("resource %s: %w", rc.Name, err)
	}
	if rc.Size > 0 {
		if err := disk.Limit(rc.Size); err != nil {
			disk.Close()
			return fmt.Errorf("resource %s: %w", rc.Name, err)
		}
	}
	r := &resource{name: rc.Name, cfg: rc, disk: disk, dev: disk, primary: rc.Primary == d.node.Name}
	if rc.Replicated {
		// The log owns the disk from here on.
		if err := d.openLog(r, log); err != nil {
			disk.Close()
			return fmt.Errorf("resource %s: %w", rc.Name, err)
		}
	}
	d.mu.Lock()
	d.resources[rc.Name] = r
	d.mu.Unlock()
	role := "secondary"
	if r.primary {
		role = "primary"
	}
	log.Info("resource open", "disk", path, "size", disk.Size(), "role", role, "replicated", rc.Replicated)
	return nil
}

// exportDevice returns the device an export of res serves, or nil when this
// node does not serve res's exports (it holds no disk or is not primary).
func (d *Daemon) exportDevice(res string) blockdev.Device {
	r := d.resources[res]
	if r == nil || !r.primary {
		return nil
	}
	return r.dev
}

func (d *Daemon) startNBD() error {
	byAddr := map[string][]nbd.Export{}
	for _, e := range d.cfg.NBD {
		dev := d.exportDevice(e.Resource)
		if dev == nil {
			continue
		}
		byAddr[e.Listen] = append(byAddr[e.Listen], nbd.Export{Name: e.Name, Description: e.Description, Device: dev, ReadOnly: e.ReadOnly})
	}
	addrs := make([]string, 0, len(byAddr))
	for a := range byAddr {
		addrs = append(addrs, a)
	}
	sort.Strings(addrs)
	for _, addr := range addrs {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("nbd export: listen on %s: %w (is another server using the port? change `listen` in the config)", addr, err)
		}
		srv := &nbd.Server{Logger: d.log.With("nbd", addr)}
		srv.SetExports(byAddr[addr])
		l := &nbdListener{addr: ln.Addr().String(), ln: ln, srv: srv, served: make(chan error, 1)}
		for _, e := range byAddr[addr] {
			l.names = append(l.names, e.Name)
		}
		go func() { l.served <- srv.Serve(ln) }()
		d.nbd = append(d.nbd, l)
		d.log.Info("nbd exports serving", "listen", l.addr, "exports", l.names)
	}
	return nil
}

// shutdown drains the exports, then flushes and closes every resource.
func (d *Daemon) shutdown() error {
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, l := range d.nbd {
		if err := l.srv.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("drain nbd %s: %w", l.addr, err))
		}
	}
	d.stopAoE()
	d.stopShip(ctx)
	d.stopControl()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, name := range sortedKeys(d.resources) {
		r := d.resources[name]
		if r.prim != nil || r.sec != nil {
			// Close flushes the disk, persists the log positions and
			// closes the disk.
			if err := d.closeLog(r); err != nil {
				errs = append(errs, fmt.Errorf("close the log of resource %s: %w", name, err))
			}
			continue
		}
		if err := r.disk.Flush(); err != nil {
			errs = append(errs, fmt.Errorf("flush the disk of resource %s: %w", name, err))
		}
		r.disk.Close()
	}
	d.resources = map[string]*resource{}
	if len(errs) == 0 {
		d.log.Info("stopped cleanly")
	}
	return errors.Join(errs...)
}

// NBDAddrs returns the addresses the NBD listeners are bound to.
func (d *Daemon) NBDAddrs() []string {
	var out []string
	for _, l := range d.nbd {
		out = append(out, l.addr)
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
