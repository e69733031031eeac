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
	"sync/atomic"
	"time"

	"github.com/tharsis/tharsis/aoe"
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
	conf atomic.Pointer[config.Config] // the config in force (reload.go swaps it)
	node *config.Node
	log  *slog.Logger

	mu        sync.Mutex
	resources map[string]*resource
	control   *controlServer
	metrics   *metricsServer // nil without metrics_listen (metrics.go)
	counters  exportCounters // the exports' request counters (metrics.go)
	started   time.Time
	rates     rateLimits

	// expMu guards the export servers: NBD listeners by address, AoE
	// servers by interface, and the AoE targets of each serving resource.
	expMu  sync.Mutex
	nbd    map[string]*nbdListener
	aoe    map[string]*aoeServer
	aoeRes map[string]map[string][]aoe.TargetConfig
	roleWG sync.WaitGroup // the role loops
	// rolesCtx is the parent of every role loop's context (Run's).
	rolesCtx context.Context
	reloadMu sync.Mutex      // one reload at a time
	running  atomic.Bool     // started and not shutting down: reloads apply
	deleted  map[string]bool // resources delete-resource removed here (under mu)

	ctx     context.Context // lives as long as Run
	secret  []byte
	tls     *replicate.TLS        // nil: replication without TLS
	ship    *replicate.ShipServer // nil when no resource here has peers
	shipLn  net.Listener
	cluster *replicate.Cluster
	stopBg  context.CancelFunc // stops the cluster poller
}

// resource is one resource this node holds a disk of. The data path
// (prim, sec, src, dev) changes with the role, under mu; only the role loop
// changes it.
type resource struct {
	name string
	conf atomic.Pointer[config.Resource] // its part of the config in force
	disk *blockdev.File
	dir  string // log directory

	mu      sync.Mutex
	dev     blockdev.Device      // what the exports see
	prim    *replicate.Primary   // the log, on the primary of a replicated resource
	sec     *replicate.Secondary // fetch and replay, on a secondary
	src     replicate.Source     // what peers fetch of this node's log
	secStop context.CancelFunc   // stops sec.Run
	secDone chan struct{}        // closed when sec.Run returned
	role    *roleState           // nil for an unreplicated resource

	serving   bool        // exports on (under Daemon.expMu)
	svc       serviceAddr // the service address (service.go), under Daemon.expMu
	exportErr string      // why an export failed to start
	// released names the nodes the retention limits released, and why.
	released map[string]string
	// spaceWarned: the log filesystem was reported as filling up.
	spaceWarned bool
	// detached: the disk is detached (attach.go); changed by the role
	// loop (or, unreplicated, the control handler) with no data path open.
	detached  bool
	attachErr string     // why the last attach or detach failed
	attachMu  sync.Mutex // serialises attach/detach of an unreplicated resource
}

// repl returns what the log verbs act on, or nil for an unreplicated
// resource (or one whose data path is closed).
func (r *resource) repl() logHolder {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.prim != nil:
		return r.prim
	case r.sec != nil:
		return r.sec
	}
	return nil
}

// paths returns the data path's current pieces.
func (r *resource) paths() (*replicate.Primary, *replicate.Secondary, replicate.Source) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.prim, r.sec, r.src
}

func (r *resource) setExportErr(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.exportErr = ""
	if err != nil {
		r.exportErr = err.Error()
	}
}

type nbdListener struct {
	addr   string
	ln     net.Listener
	srv    *nbd.Server
	names  []string // the exports served on it
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
	d := &Daemon{node: n, log: log.With("node", n.Name), resources: map[string]*resource{},
		nbd: map[string]*nbdListener{}, aoe: map[string]*aoeServer{}, aoeRes: map[string]map[string][]aoe.TargetConfig{}}
	d.conf.Store(opts.Config)
	return d, nil
}

// config returns the config in force. It is immutable; a reload replaces it.
func (d *Daemon) config() *config.Config { return d.conf.Load() }

// config returns the resource's part of the config in force.
func (r *resource) config() *config.Resource { return r.conf.Load() }

// Run opens the node's resources, serves their exports and the control
// socket, and blocks until ctx is done. It then drains in-flight requests,
// flushes every device and returns nil; an error means the node could not
// start or could not shut down cleanly.
func (d *Daemon) Run(ctx context.Context, ready func(*Daemon)) (err error) {
	d.started = time.Now()
	lim := d.limits()
	d.rates = rateLimits{sync: newRateLimiter(lim.SyncRate), fetch: newRateLimiter(lim.FetchRate)}
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
	for _, name := range d.config().ResourceNames() {
		if err := d.openResource(d.config().Resources[name]); err != nil {
			return err
		}
	}
	d.dropLeftoverServiceAddrs() // before anything serves: see service.go
	if err := d.startShip(); err != nil {
		return err
	}
	if err := d.startMetrics(); err != nil {
		return err
	}
	// Automatic retention; stopped before shutdown closes the logs.
	rctx, stopRetain := context.WithCancel(ctx)
	retained := make(chan struct{})
	go func() { defer close(retained); d.retain(rctx) }()
	defer func() { stopRetain(); <-retained }()
	// Unreplicated resources are served by the config's primary; the role
	// loops of replicated ones start their exports when they serve.
	for _, name := range sortedKeys(d.resources) {
		r := d.resources[name]
		if r.role == nil && r.config().Primary == d.node.Name && !r.isDetached() {
			d.serveExports(r)
			if r.exportErr != "" {
				return errors.New(r.exportErr)
			}
		}
	}
	rolesCtx, stopRoles := context.WithCancel(ctx)
	d.rolesCtx = rolesCtx
	defer func() { stopRoles(); d.roleWG.Wait() }()
	for _, name := range sortedKeys(d.resources) {
		if r := d.resources[name]; r.role != nil {
			d.startRole(r)
		}
	}
	// Ready once every role settled (the first decision is carried out).
	for _, name := range sortedKeys(d.resources) {
		if r := d.resources[name]; r.role != nil {
			select {
			case <-r.role.settled:
			case err := <-r.role.fatal:
				return err
			case <-ctx.Done():
			}
		}
	}
	if err := d.startControl(); err != nil {
		return err
	}
	d.log.Info("tharsis node running", "resources", len(d.resources), "control", d.node.Control)
	d.running.Store(true)
	defer d.running.Store(false)
	if ready != nil {
		ready(d)
	}
	<-ctx.Done()
	d.log.Info("shutting down: draining in-flight requests")
	return nil
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
	size := rc.Size
	if rc.Replicated {
		// A resize grew it past the config's size (resize.go).
		grown, err := readResourceSize(d.config().LogDir(rc.Name, d.node.Name))
		if err != nil {
			disk.Close()
			return fmt.Errorf("resource %s: %w", rc.Name, err)
		}
		size = max(size, grown)
	}
	if size > 0 {
		if err := disk.Limit(size); err != nil {
			disk.Close()
			return fmt.Errorf("resource %s: %w", rc.Name, err)
		}
	}
	r := &resource{name: rc.Name, disk: disk, dev: disk, dir: d.config().LogDir(rc.Name, d.node.Name)}
	r.conf.Store(rc)
	if rc.Replicated {
		if err := d.newRole(r); err != nil {
			disk.Close()
			return fmt.Errorf("resource %s: %w", rc.Name, err)
		}
	} else if _, err := os.Stat(d.detachedMarker(rc.Name)); err == nil {
		if err := d.setDetached(r, true); err != nil {
			disk.Close()
			return err
		}
		r.markDetached(true)
	}
	d.mu.Lock()
	d.resources[rc.Name] = r
	d.mu.Unlock()
	log.Info("resource open", "disk", path, "size", disk.Size(), "replicated", rc.Replicated)
	return nil
}

// shutdown drains the exports, then flushes and closes every resource.
func (d *Daemon) shutdown() error {
	d.dropServiceAddrs() // before the exports drain: see service.go
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d.expMu.Lock()
	for _, l := range d.nbd {
		if err := l.srv.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("drain nbd %s: %w", l.addr, err))
		}
	}
	d.nbd = map[string]*nbdListener{}
	d.expMu.Unlock()
	d.stopAoE()
	d.stopShip(ctx)
	d.stopMetrics(ctx)
	d.stopControl()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, name := range sortedKeys(d.resources) {
		r := d.resources[name]
		// Closing the log flushes the disk and persists the log positions.
		if err := d.closeLog(r); err != nil {
			errs = append(errs, fmt.Errorf("close the log of resource %s: %w", name, err))
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
	d.expMu.Lock()
	defer d.expMu.Unlock()
	var out []string
	for _, a := range sortedKeys(d.nbd) {
		out = append(out, d.nbd[a].addr)
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
