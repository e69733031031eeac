package vmtests

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ClusterResource is a resource every node of a Cluster holds a sparse
// disk file of.
type ClusterResource struct {
	Name string
	Size int64
	// Extra lines for the resource's table (e.g. service_address).
	Extra string
}

// ClusterConfig describes a tharsis cluster on a Segment.
type ClusterConfig struct {
	Dir       string   // configs, disks, state dirs, logs
	Bin       string   // the tharsis binary
	Nodes     []string // the first is the resource's first primary
	Resources []ClusterResource
	AoE       []AoEExport // served on NodeDev of the primary
	NBD       []NBDExport // listening on 0.0.0.0:Port in the primary's namespace
}

// Cluster is tharsis nodes on a Segment, each running `tharsis run` inside
// its own namespace with its own state dir and disk files; they replicate
// to each other over the segment.
type Cluster struct {
	cfg   ClusterConfig
	seg   *Segment
	Nodes map[string]*ClusterNode
	Order []string
	Path  string // the config file (identical for every node)
}

// ClusterNode is one node's daemon.
type ClusterNode struct {
	*NetNode
	c        *Cluster
	StateDir string
	Socket   string
	LogPath  string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

const replPort = 7777

// NewCluster adds a namespace per node to seg and writes the config and
// the disk files; nothing runs yet.
func NewCluster(ctx context.Context, seg *Segment, cfg ClusterConfig) (*Cluster, error) {
	c := &Cluster{cfg: cfg, seg: seg, Nodes: map[string]*ClusterNode{}, Order: cfg.Nodes, Path: filepath.Join(cfg.Dir, "tharsis.toml")}
	for i, name := range cfg.Nodes {
		nn, err := seg.AddNode(ctx, name, 11+i)
		if err != nil {
			return nil, err
		}
		n := &ClusterNode{NetNode: nn, c: c, StateDir: filepath.Join(cfg.Dir, name), LogPath: filepath.Join(cfg.Dir, name+".log")}
		n.Socket = filepath.Join(n.StateDir, "control.sock")
		if err := os.MkdirAll(n.StateDir, 0o755); err != nil {
			return nil, err
		}
		for _, r := range cfg.Resources {
			f, err := os.Create(n.Disk(r.Name))
			if err == nil {
				err = f.Truncate(r.Size)
				f.Close()
			}
			if err != nil {
				return nil, err
			}
		}
		c.Nodes[name] = n
	}
	if err := os.WriteFile(filepath.Join(cfg.Dir, "secret"), []byte("vm-tests cluster secret "+seg.ID+"\n"), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(c.Path, []byte(c.Config()), 0o600); err != nil {
		return nil, err
	}
	return c, nil
}

// Disk is the disk file of resource res on n.
func (n *ClusterNode) Disk(res string) string {
	return filepath.Join(n.c.cfg.Dir, n.Name+"-"+res+".img")
}

// Config renders the cluster's TOML.
func (c *Cluster) Config() string {
	var b strings.Builder
	b.WriteString("secret_file = \"secret\"\n")
	for _, name := range c.Order {
		n := c.Nodes[name]
		fmt.Fprintf(&b, "\n[nodes.%s]\nreplication = \"%s:%d\"\nstate_dir = %q\n", name, n.IP, replPort, n.StateDir)
	}
	for _, r := range c.cfg.Resources {
		fmt.Fprintf(&b, "\n[resources.%s]\ndisk = { ", r.Name)
		for i, name := range c.Order {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%s = %q", name, c.Nodes[name].Disk(r.Name))
		}
		fmt.Fprintf(&b, " }\nprimary = %q\nsegment_size = \"8MiB\"\n%s", c.Order[0], r.Extra)
	}
	for _, e := range c.cfg.AoE {
		fmt.Fprintf(&b, "\n[[exports.aoe]]\nresource = %q\nshelf = %d\nslot = %d\ninterfaces = [%q]\n", e.Resource, e.Shelf, e.Slot, NodeDev)
	}
	for _, e := range c.cfg.NBD {
		fmt.Fprintf(&b, "\n[[exports.nbd]]\nresource = %q\nlisten = \"0.0.0.0:%d\"\nname = %q\n", e.Resource, e.Port, e.Name)
	}
	return b.String()
}

// Start runs `tharsis run` for n inside its namespace and waits (30 s at
// most) until its control socket answers.
func (n *ClusterNode) Start(ctx context.Context) error {
	n.mu.Lock()
	if n.cmd != nil {
		n.mu.Unlock()
		return fmt.Errorf("node %s is already running", n.Name)
	}
	logf, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		n.mu.Unlock()
		return err
	}
	fmt.Fprintf(logf, "==== vm-tests: start %s at %s\n", n.Name, time.Now().Format(time.StampMilli))
	cmd := exec.Command("ip", "netns", "exec", n.NS, n.c.cfg.Bin, "run", "--config", n.c.Path, "--node", n.Name, "--log-level", "debug")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		n.mu.Unlock()
		return err
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		fmt.Fprintf(logf, "==== vm-tests: %s exited (%v) at %s\n", n.Name, cmd.ProcessState, time.Now().Format(time.StampMilli))
		logf.Close()
		close(exited)
	}()
	n.cmd, n.exited = cmd, exited
	n.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var dead bool
	err = poll(ctx, "node "+n.Name+" to answer on "+n.Socket, func() (bool, string) {
		select {
		case <-exited:
			dead = true
			return true, ""
		default:
		}
		_, err := n.View(ctx)
		return err == nil, errText(err)
	})
	if dead {
		n.mu.Lock()
		n.cmd = nil
		n.mu.Unlock()
		return fmt.Errorf("tharsis run for node %s exited at startup (its log: %s)", n.Name, n.LogPath)
	}
	return err
}

// Kill sends SIGKILL to n's daemon and waits until it is gone.
func (n *ClusterNode) Kill() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return fmt.Errorf("node %s is not running", n.Name)
	}
	// ip netns exec execs the program: the process is tharsis itself.
	n.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-n.exited:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("node %s (pid %d) survived SIGKILL for 10 s", n.Name, n.cmd.Process.Pid)
	}
	n.cmd = nil
	return nil
}

// Stop sends SIGTERM and waits 20 s at most (then SIGKILL).
func (n *ClusterNode) Stop() error {
	n.mu.Lock()
	cmd, exited := n.cmd, n.exited
	n.mu.Unlock()
	if cmd == nil {
		return nil
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		n.Kill()
		return fmt.Errorf("node %s did not stop within 20 s of SIGTERM", n.Name)
	}
	n.mu.Lock()
	n.cmd = nil
	n.mu.Unlock()
	return nil
}

// Running reports whether n's daemon runs.
func (n *ClusterNode) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cmd != nil
}

// Log returns n's daemon output so far.
func (n *ClusterNode) Log() string {
	b, _ := os.ReadFile(n.LogPath)
	return string(b)
}

// Tharsis runs the tharsis CLI with args (callers pass --socket n.Socket
// where the verb needs it) and returns its standard output.
func (n *ClusterNode) Tharsis(ctx context.Context, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, n.c.cfg.Bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String(), fmt.Errorf("tharsis %s on %s: %v: %s", strings.Join(args, " "), n.Name, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.String(), nil
}

// Primary runs `tharsis primary [--force] --socket S RES` on n.
func (n *ClusterNode) Primary(ctx context.Context, res string, force bool) (string, error) {
	args := []string{"primary", "--socket", n.Socket}
	if force {
		args = append(args, "--force")
	}
	out, err := n.Tharsis(ctx, append(args, res)...)
	return strings.TrimSpace(out), err
}

// NodeView is the part of `tharsis view --json --raw` the vm-tests read.
type NodeView struct {
	Node      string `json:"node"`
	Resources []struct {
		Name string `json:"name"`
		Role string `json:"role"`
		Log  *struct {
			Written LogPos `json:"written"`
			Applied LogPos `json:"applied"`
		} `json:"log"`
		Replication *struct {
			End         LogPos `json:"end"`
			Applied     LogPos `json:"applied"`
			Consistent  bool   `json:"consistent"`
			LagBytes    int64  `json:"lag_bytes"`
			Phase       string `json:"phase"`
			Error       string `json:"error"`
			Designation struct {
				Primary    string `json:"primary"`
				Generation uint64 `json:"generation"`
			} `json:"designation"`
		} `json:"replication"`
	} `json:"resources"`
}

// LogPos is a position in a resource's log.
type LogPos struct {
	Segment uint64 `json:"segment"`
	Offset  int64  `json:"offset"`
	Seq     uint64 `json:"seq"`
}

// ResView is one resource of a NodeView: its role, where its log ends
// (the primary's written end, or what a secondary fetched), how far it is
// applied, and whether it is consistent.
type ResView struct {
	Role       string
	Phase      string
	End        uint64
	Applied    uint64
	Consistent bool
	Primary    string
	Generation uint64
	Error      string
}

// View runs `tharsis view --json --raw` on n.
func (n *ClusterNode) View(ctx context.Context) (*NodeView, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	out, err := n.Tharsis(ctx, "view", "--json", "--raw", "--socket", n.Socket)
	if err != nil {
		return nil, err
	}
	var v NodeView
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return nil, fmt.Errorf("view --json of %s: %w\n%s", n.Name, err, out)
	}
	return &v, nil
}

// Res returns resource res of n's view.
func (n *ClusterNode) Res(ctx context.Context, res string) (*ResView, error) {
	v, err := n.View(ctx)
	if err != nil {
		return nil, err
	}
	for _, r := range v.Resources {
		if r.Name != res {
			continue
		}
		rv := &ResView{Role: r.Role}
		if r.Log != nil {
			rv.End, rv.Applied = r.Log.Written.Seq, r.Log.Applied.Seq
		}
		if p := r.Replication; p != nil {
			rv.Phase, rv.Consistent, rv.Error = p.Phase, p.Consistent, p.Error
			rv.Primary, rv.Generation = p.Designation.Primary, p.Designation.Generation
			if p.End.Seq > rv.End {
				rv.End = p.End.Seq
			}
			if rv.Applied == 0 || r.Role != "primary" {
				rv.Applied = p.Applied.Seq
			}
		}
		return rv, nil
	}
	return nil, fmt.Errorf("view of %s shows no resource %s", n.Name, res)
}

// WaitRes polls n's view of res (every 50 ms, until ctx ends) until cond
// holds.
func (n *ClusterNode) WaitRes(ctx context.Context, res, what string, cond func(r *ResView) bool) (*ResView, error) {
	var last *ResView
	err := poll(ctx, fmt.Sprintf("%s on %s: %s", res, n.Name, what), func() (bool, string) {
		r, err := n.Res(ctx, res)
		if err != nil {
			return false, err.Error()
		}
		last = r
		return cond(r), fmt.Sprintf("%+v", *r)
	})
	return last, err
}

// StartAll starts every node.
func (c *Cluster) StartAll(ctx context.Context) error {
	for _, name := range c.Order {
		if err := c.Nodes[name].Start(ctx); err != nil {
			return err
		}
	}
	return nil
}

// StopAll stops every running node (SIGTERM).
func (c *Cluster) StopAll() error {
	var errs []error
	for _, name := range c.Order {
		if err := c.Nodes[name].Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Logs returns the tail (lines) of every node's log, for failure reports.
func (c *Cluster) Logs(lines int) string {
	var b strings.Builder
	for _, name := range c.Order {
		n := c.Nodes[name]
		l := strings.Split(strings.TrimRight(n.Log(), "\n"), "\n")
		if len(l) > lines {
			l = append([]string{"... (" + strconv.Itoa(len(l)-lines) + " lines before)"}, l[len(l)-lines:]...)
		}
		fmt.Fprintf(&b, "\n--- log of %s (%s) ---\n%s", name, n.LogPath, strings.Join(l, "\n"))
	}
	return b.String()
}

// poll calls cond every 50 ms until it holds or ctx ends.
func poll(ctx context.Context, what string, cond func() (bool, string)) error {
	for {
		ok, why := cond()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last: %s)", what, ctx.Err(), why)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func errText(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}
