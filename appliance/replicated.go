package appliance

import (
	"context"
	"errors"
	"fmt"
	"github.com/tharsis/tharsis/blockdev"
	"golang.org/x/time/rate"
	"net"
	"os"
	"slices"
	"time"

	"github.com/tharsis/tharsis/config"
	"github.com/tharsis/tharsis/replicate"
)

// logHolder is what the log verbs need of a primary's or a secondary's log.
type logHolder interface {
	DeleteApplied(all bool) ([]string, error)
}

var (
	_ logHolder = (*replicate.Primary)(nil)
	_ logHolder = (*replicate.Secondary)(nil)
)

// errNotReplicated answers log verbs on a resource without a log.
var errNotReplicated = errors.New("the resource is not replicated (replicated = false in the config): it has no transaction log")

// errNotSecondary answers the secondary-only verbs on the primary.
var errNotSecondary = errors.New("this node is the resource's primary: the verb applies to secondaries")

// hasPeers reports whether this node shares a replicated resource with
// another node, which needs the replication server and the secret or TLS.
func (d *Daemon) hasPeers() bool {
	for _, rc := range d.config().Resources {
		if _, ok := rc.Disks[d.node.Name]; ok && rc.Replicated && len(rc.Disks) > 1 {
			return true
		}
	}
	return false
}

// setupReplication reads the cluster secret and the node's TLS certificate
// (whichever the config has) and prepares the replication server and the
// cluster poller when this node has peers.
func (d *Daemon) setupReplication() error {
	if !d.hasPeers() {
		return nil
	}
	cfg := d.config()
	if cfg.SecretFile == "" && cfg.TLSDir == "" {
		return fmt.Errorf("%s has neither tls_dir nor secret_file, but node %s replicates with other nodes: set tls_dir (encrypted, certificates from `tharsis cert`; see the README) or create a secret (e.g. `head -c 32 /dev/urandom > /etc/tharsis/secret`), copy it to every node and set secret_file", cfg.File, d.node.Name)
	}
	var secret []byte
	if cfg.SecretFile != "" {
		var err error
		if secret, err = os.ReadFile(cfg.SecretFile); err != nil {
			return fmt.Errorf("read the cluster secret: %w", err)
		}
		if len(secret) < 16 {
			return fmt.Errorf("cluster secret %s holds %d bytes; use at least 16 random bytes", cfg.SecretFile, len(secret))
		}
	}
	if cfg.TLSDir != "" {
		id, err := replicate.LoadTLS(cfg.TLSDir, d.node.Name, d.isNode)
		if err != nil {
			return fmt.Errorf("node %s: %w", d.node.Name, err)
		}
		d.tls = id
		left := time.Until(id.Leaf.NotAfter)
		d.log.Info("replication over mutual TLS 1.3", "tls_dir", cfg.TLSDir, "certificate_expires", id.Leaf.NotAfter.UTC().Format(time.RFC3339), "secret_too", secret != nil)
		if left < 30*24*time.Hour {
			d.log.Warn("this node's replication certificate expires soon; make a new one with `tharsis cert create-node --force` and restart", "expires", id.Leaf.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	d.secret = secret
	d.ship = &replicate.ShipServer{Node: d.node.Name, Secret: secret, TLS: d.tls, Logger: d.log.With("component", "ship"), OnRole: d.onRole}
	d.cluster = replicate.NewCluster(replicate.ClusterOptions{
		Node: d.node.Name, Secret: secret, TLS: d.tls, Logger: d.log.With("component", "cluster"),
		Peers: d.otherNodes, OnPoll: d.onPoll, Interval: time.Second,
	})
	return nil
}

// auth is how this node authenticates replication connections.
func (d *Daemon) auth() replicate.Auth { return replicate.Auth{Secret: d.secret, TLS: d.tls} }

// isNode reports whether name is a node of the config in force (a peer's
// certificate must name one).
func (d *Daemon) isNode(name string) bool {
	_, ok := d.config().Nodes[name]
	return ok
}

// otherNodes is every other node of the cluster.
func (d *Daemon) otherNodes() []replicate.Peer {
	var out []replicate.Peer
	for _, n := range d.config().NodeNames() {
		if n != d.node.Name {
			out = append(out, d.peer(n))
		}
	}
	return out
}

func (d *Daemon) peer(name string) replicate.Peer {
	return replicate.Peer{Name: name, Addr: d.config().Nodes[name].Replication}
}

// keepOpen is the disk as the log sees it: closing the log flushes the
// disk but leaves it open, so the role can change without reopening it.
// A resize from the log grows the disk's used part and is persisted in
// the log directory before the record counts as applied (see resize.go).
type keepOpen struct {
	*blockdev.File
	dir string
}

func (k keepOpen) Close() error {
	if k.Detached() {
		return nil // flushed when it was detached
	}
	return k.Flush()
}

// Resize implements blockdev.Resizer.
func (k keepOpen) Resize(size int64) error {
	if err := k.File.Resize(size); err != nil {
		return err
	}
	return writeResourceSize(k.dir, size)
}

// openPrimary opens r's log as primary (log → ack → apply): it replays what
// the local log holds past the applied position, seals its newest segment
// and starts the next under this node's name. Call from the role loop.
func (d *Daemon) openPrimary(r *resource) error {
	rc := r.config()
	opts := replicate.Options{
		Dir: r.dir, Node: d.node.Name, Resource: rc.Name,
		// replicate adds the resource to its logger's attributes.
		SegmentSize: rc.SegmentSize, Sync: rc.Sync, ApplyWindow: rc.ApplyWindow, Logger: d.log,
	}
	if d.cluster != nil {
		// Retention: keep what any other node that holds the resource
		// has not fetched and replayed yet.
		opts.MinAppliedByPeers = d.minApplied(r, func() []string { return d.others(rc) })
	}
	opts.Ack = d.ackOptions(rc)
	p, err := replicate.OpenPrimary(keepOpen{r.disk, r.dir}, opts)
	if err != nil {
		return err
	}
	if n := p.Replayed(); n > 0 {
		d.log.Info("replayed the log onto the disk", "resource", rc.Name, "records", n)
	}
	src := replicate.PrimarySource(p)
	r.mu.Lock()
	r.prim, r.dev, r.src = p, p, src
	r.mu.Unlock()
	if d.ship != nil {
		d.ship.AddResource(rc.Name, roleSource{src, r})
		go d.restoreSegments(r, p)
	}
	return nil
}

// rateLimits are the node's sync and fetch limiters ([limits] sync_rate,
// fetch_rate), shared by every resource; a reload changes their rates.
type rateLimits struct{ sync, fetch *rate.Limiter }

// newRateLimiter returns a byte limiter of bytesPerSec (0: unlimited, until
// a reload sets a rate).
func newRateLimiter(bytesPerSec int64) *rate.Limiter {
	l := rate.NewLimiter(rate.Inf, 64<<10)
	setRate(l, bytesPerSec)
	return l
}

// openSecondary opens r's log as secondary (fetch → replay) and starts it.
// wasPrimary says the log was this node's primary log until now.
func (d *Daemon) openSecondary(r *resource, wasPrimary bool) error {
	rc := r.config()
	if d.ship == nil {
		return fmt.Errorf("node %s is a secondary of %s but no other node holds it", d.node.Name, rc.Name)
	}
	log := d.log.With("resource", rc.Name)
	opts := replicate.SecondaryOptions{
		Dir: r.dir, Node: d.node.Name, Resource: rc.Name, Secret: d.secret, TLS: d.tls, Logger: d.log, // replicate adds the resource
		Peers: func() []replicate.Peer {
			var out []replicate.Peer
			for _, n := range r.role.fetchList() {
				out = append(out, d.peer(n))
			}
			return out
		},
		// Every fetch says which designation this node follows.
		Designation: func() (replicate.Designation, bool) {
			st := r.role.snapshot()
			return st.Designation, st.Phase != replicate.PhaseStarting
		},
		// Cascading: keep what the nodes fetching from us still need.
		MinAppliedByPeers: d.minApplied(r, func() []string { return d.fetchers(rc) }),
		SyncLimiter:       d.rates.sync,
		FetchLimiter:      d.rates.fetch,
		WasPrimary:        wasPrimary,
		VerifyInterval:    rc.VerifyInterval,
		Detached:          r.disk.Detached(),
	}
	s, err := replicate.OpenSecondary(keepOpen{r.disk, r.dir}, opts)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(d.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := s.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
			log.Error("replication of the resource stopped", "err", err)
		}
	}()
	src := s.Source()
	r.mu.Lock()
	r.sec, r.secStop, r.secDone, r.src, r.dev = s, cancel, done, src, r.disk
	r.mu.Unlock()
	d.ship.AddResource(rc.Name, roleSource{src, r})
	if !s.Consistent() {
		log.Info("this node's copy is not consistent yet: a fast full sync runs (tharsis view shows its progress; `tharsis fake-sync` skips it for freshly zeroed disks)")
	}
	return nil
}

// others is every other node holding a disk of rc (those that joined it).
func (d *Daemon) others(rc *config.Resource) []string {
	var out []string
	for _, n := range d.config().DiskNodes(rc.Name) {
		if n != d.node.Name {
			out = append(out, n)
		}
	}
	return out
}

// ackOptions is the resource's synchronous acknowledgement: ack_secondaries
// counted among the other nodes holding it.
func (d *Daemon) ackOptions(rc *config.Resource) replicate.AckOptions {
	t := rc.AckTimeout
	if t == config.AckForever {
		t = replicate.AckForever
	}
	return replicate.AckOptions{Secondaries: rc.AckSecondaries, Timeout: t, Nodes: d.others(rc)}
}

// fetchers is every node whose connect list names this node.
func (d *Daemon) fetchers(rc *config.Resource) []string {
	var out []string
	for _, n := range d.others(rc) {
		if slices.Contains(d.config().ConnectList(rc.Name, n), d.node.Name) {
			out = append(out, n)
		}
	}
	return out
}

// closeLog closes r's data path (primary or secondary), leaving the disk
// open; seal seals a primary's log and returns where it ends.
func (d *Daemon) closeLog(r *resource) error {
	_, err := d.closePath(r, false)
	return err
}

func (d *Daemon) closePath(r *resource, seal bool) (replicate.Position, error) {
	r.mu.Lock()
	prim, sec, stop, done := r.prim, r.sec, r.secStop, r.secDone
	r.prim, r.sec, r.secStop, r.secDone, r.dev = nil, nil, nil, nil, r.disk
	r.mu.Unlock()
	var end replicate.Position
	var err error
	switch {
	case sec != nil:
		stop()
		<-done
		err = sec.Close()
	case prim != nil && seal:
		end, err = prim.CloseSealed()
	case prim != nil:
		err = prim.Close()
	}
	return end, err
}

// startShip serves the replication protocol and polls the peers' status.
func (d *Daemon) startShip() error {
	if d.ship == nil {
		return nil
	}
	tl, err := net.Listen("tcp", d.node.Replication)
	if err != nil {
		return fmt.Errorf("replication: listen on %s: %w (is another daemon using it? see `replication` of node %s)", d.node.Replication, err, d.node.Name)
	}
	ln := d.limitReplication(tl)
	d.shipLn = ln
	go d.ship.Serve(ln)
	ctx, cancel := context.WithCancel(d.ctx)
	d.stopBg = cancel
	go d.cluster.Run(ctx)
	d.log.Info("replication serving", "listen", ln.Addr().String(), "peers", len(d.otherNodes()))
	return nil
}

func (d *Daemon) stopShip(ctx context.Context) {
	if d.stopBg != nil {
		d.stopBg()
	}
	if d.ship != nil && d.shipLn != nil {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		d.ship.Shutdown(sctx)
	}
}

func init() {
	verbs["log-rotate"] = func(d *Daemon, r *resource) (string, error) {
		prim, sec, _ := r.paths()
		if prim == nil {
			if sec != nil {
				return "", errors.New("only the primary writes the log: rotate it there")
			}
			return "", errNotReplicated
		}
		if err := prim.Rotate(); err != nil {
			return "", err
		}
		return r.name + ": now writing " + prim.Status().Current, nil
	}
	del := func(all bool) verbFunc {
		return func(d *Daemon, r *resource) (string, error) {
			h := r.repl()
			if h == nil {
				return "", errNotReplicated
			}
			removed, err := h.DeleteApplied(all)
			if prim, _, _ := r.paths(); all && prim != nil && prim.Emergency().Active {
				// log-delete-all ends emergency mode as soon as the
				// mark fits (MARS does the same).
				left, lerr := prim.MaybeLeaveEmergency(true)
				switch {
				case lerr != nil:
					return "", errors.Join(err, lerr)
				case left:
					return r.name + ": removed " + joinComma(removed) + "; emergency mode over: run `tharsis invalidate " + r.name + "` on each secondary", nil
				}
			}
			if err != nil {
				return "", err
			}
			return r.name + ": removed " + joinComma(removed), nil
		}
	}
	verbs["log-delete"] = del(false)
	verbs["log-delete-all"] = del(true)

	// Switches of a secondary; each persists across restarts.
	switchVerb := func(set func(*replicate.Secondary) error, done string) verbFunc {
		return func(d *Daemon, r *resource) (string, error) {
			prim, sec, _ := r.paths()
			if sec == nil {
				if prim != nil {
					return "", errNotSecondary
				}
				return "", errNotReplicated
			}
			if err := set(sec); err != nil {
				return "", err
			}
			return r.name + ": " + done, nil
		}
	}
	verbs["disconnect"] = switchVerb(func(s *replicate.Secondary) error { return s.SetFetchPaused(true) }, "fetching paused")
	verbs["connect"] = switchVerb(func(s *replicate.Secondary) error { return s.SetFetchPaused(false) }, "fetching")
	verbs["pause-fetch"] = verbs["disconnect"]
	verbs["resume-fetch"] = verbs["connect"]
	verbs["pause-replay"] = switchVerb(func(s *replicate.Secondary) error { return s.SetReplayPaused(true) }, "replay paused")
	verbs["resume-replay"] = switchVerb(func(s *replicate.Secondary) error { return s.SetReplayPaused(false) }, "replaying")
	verbs["pause-sync"] = switchVerb(func(s *replicate.Secondary) error { return s.SetSyncPaused(true) }, "sync paused")
	verbs["resume-sync"] = switchVerb(func(s *replicate.Secondary) error { return s.SetSyncPaused(false) }, "sync allowed")
	verbs["fake-sync"] = switchVerb(func(s *replicate.Secondary) error { return s.FakeSync() }, "marked consistent without copying (only right for disks that were identical, e.g. freshly zeroed)")
	verbs["invalidate"] = switchVerb(func(s *replicate.Secondary) error { return s.Invalidate() }, "invalidated: a fast full sync starts")
	verbs["leave-resource"] = func(d *Daemon, r *resource) (string, error) {
		return d.roleCommand(d.ctx, r, replicate.Command{Kind: replicate.CmdLeave}, nil)
	}
	verbs["join-resource"] = func(d *Daemon, r *resource) (string, error) {
		if r.role != nil && r.role.snapshot().Phase == replicate.PhaseLeft {
			return d.roleCommand(d.ctx, r, replicate.Command{Kind: replicate.CmdJoin}, nil)
		}
		prim, sec, _ := r.paths()
		if sec == nil {
			if prim != nil {
				return "", errors.New("this node is the resource's primary: it is joined already")
			}
			return "", errNotReplicated
		}
		if sec.Consistent() {
			return r.name + ": already joined and consistent", nil
		}
		if err := sec.SetSyncPaused(false); err != nil {
			return "", err
		}
		return r.name + ": joining: a fast full sync runs (see `tharsis view`)", nil
	}
}
