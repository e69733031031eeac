package clustertest

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tharsis/tharsis/internal/testutil"
)

var keep = flag.Bool("keep", false, "keep each cluster's temp dir (configs, disks, state, logs) after the test")

const (
	resource   = "r0"
	nbdPort    = 10809
	replPort   = 7777
	subnet     = "10.77.0."
	ClientIP   = subnet + "250" // the bridge namespace's, with Options.ServiceAddress
	nodeDev    = "eth0"         // a node's end of its veth pair, inside its namespace
	readyAfter = 30 * time.Second
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	buildDir  string
	clusterN  atomic.Int32
)

func TestMain(m *testing.M) {
	flag.Parse()
	removeLeftovers()
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// tharsisBin builds cmd/tharsis once per test binary.
func tharsisBin(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "tharsis-clustertest-")
		if buildErr != nil {
			return
		}
		binPath = filepath.Join(buildDir, "tharsis")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/tharsis/tharsis/cmd/tharsis").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build ./cmd/tharsis: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// Options describe a cluster to build.
type Options struct {
	Nodes       []string            // default alpha, beta, gamma; the first is the primary
	Connect     map[string][]string // default beta: [alpha], gamma: [beta, alpha]; empty map: none
	DiskSize    int64               // default 64 MiB (sparse files)
	SegmentSize string              // default "8MiB"
	// Secrets overrides the secret_file contents of some nodes (each node
	// gets its own config file, identical but for secret_file).
	Secrets map[string]string
	// Primaries overrides the config's `primary` in some nodes' config
	// files (stale copies that disagree).
	Primaries map[string]string
	// ResourceExtra is appended to the resource's table (more keys).
	ResourceExtra string
	// ServiceAddress is r0's service_address (e.g. "10.77.0.100/24") on
	// every node's ServiceInterface (default its eth0); the bridge
	// namespace then gets ClientIP, so that a client there reaches it.
	ServiceAddress   string
	ServiceInterface string
	// AoE adds an AoE export of r0, target e1.1 on every node's veth
	// (nodeDev): whichever node is primary serves it (see aoe_test.go).
	AoE bool
	// TLS replaces secret_file by tls_dir = "tls": a CA and every node's
	// certificate are made there with `tharsis cert` (see tls_test.go).
	TLS bool
}

// Cluster is a tharsis cluster, one node per network namespace, each joined
// to a bridge namespace by a veth pair.
type Cluster struct {
	t      testing.TB
	ID     string // short, unique per cluster in this machine
	Dir    string // configs, disks, state dirs, logs
	Bin    string
	BridNS string
	Nodes  map[string]*Node
	Order  []string // node names, the config's primary first
	Size   int64
	// primary is the node the tests write through (Order[0] until a
	// handover moves it: SetPrimary).
	primary string
}

// Node is one node of a Cluster.
type Node struct {
	c        *Cluster
	Name     string
	NS       string // its network namespace
	IP       string
	Config   string // its config file
	Disk     string
	StateDir string
	Socket   string
	LogPath  string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// NewCluster builds the namespaces, the configs and the disks (sparse,
// zero) of a cluster; nothing runs yet. Everything is removed in t.Cleanup.
func NewCluster(t testing.TB, opt Options) *Cluster {
	t.Helper()
	testutil.NeedRoot(t)
	testutil.NeedTool(t, "ip")
	bin := tharsisBin(t)
	if opt.Nodes == nil {
		opt.Nodes = []string{"alpha", "beta", "gamma"}
	}
	if opt.Connect == nil {
		opt.Connect = map[string][]string{"beta": {"alpha"}, "gamma": {"beta", "alpha"}}
	}
	if opt.DiskSize == 0 {
		opt.DiskSize = 64 << 20
	}
	if opt.SegmentSize == "" {
		opt.SegmentSize = "8MiB"
	}
	id := fmt.Sprintf("%x-%d", os.Getpid(), clusterN.Add(1))
	dir, err := os.MkdirTemp("", "tc"+id+"-")
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{t: t, ID: id, Dir: dir, Bin: bin, BridNS: "tc" + id + "-br", Nodes: map[string]*Node{}, Order: opt.Nodes, Size: opt.DiskSize}
	// Cleanups run last-in first-out: the temp dir goes after the
	// namespaces, which go after the processes; the logs are attached
	// before anything is removed.
	t.Cleanup(func() {
		if *keep || t.Failed() && os.Getenv("THARSIS_KEEP_FAILED") == "1" {
			t.Logf("kept %s", dir)
			return
		}
		os.RemoveAll(dir)
	})
	t.Cleanup(c.removeNetwork)
	t.Cleanup(func() {
		for _, n := range c.nodes() {
			n.kill()
		}
		if t.Failed() {
			c.attachLogs()
		}
	})

	if err := c.buildNetwork(); err != nil {
		t.Fatal(err)
	}
	if opt.ServiceAddress != "" {
		if err := ipCmd("-n", c.BridNS, "addr", "add", ClientIP+"/24", "dev", "br0"); err != nil {
			t.Fatal(err)
		}
	}
	for i, name := range opt.Nodes {
		n := &Node{
			c: c, Name: name, NS: "tc" + id + "-" + name, IP: fmt.Sprintf("%s%d", subnet, i+1),
			Config: filepath.Join(dir, name+".toml"), Disk: filepath.Join(dir, name+".img"),
			StateDir: filepath.Join(dir, name), LogPath: filepath.Join(dir, name+".log"),
		}
		n.Socket = filepath.Join(n.StateDir, "control.sock")
		if len(n.Socket) >= 108 {
			t.Fatalf("control socket path %s is too long for a unix socket", n.Socket)
		}
		c.Nodes[name] = n
		if err := c.addNode(n); err != nil {
			t.Fatal(err)
		}
		f, err := os.Create(n.Disk)
		if err == nil {
			err = f.Truncate(opt.DiskSize)
			f.Close()
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "secret"), []byte("clustertest secret "+id+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.nodes() {
		secret := "secret"
		if s, ok := opt.Secrets[n.Name]; ok {
			secret = "secret-" + n.Name
			if err := os.WriteFile(filepath.Join(dir, secret), []byte(s), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		primary := c.Order[0]
		if p, ok := opt.Primaries[n.Name]; ok {
			primary = p
		}
		if err := os.WriteFile(n.Config, c.config(secret, primary, opt), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if opt.TLS {
		c.makeCerts()
	}
	return c
}

// config renders the cluster's TOML with the given secret_file.
func (c *Cluster) config(secret, primary string, opt Options) []byte {
	var b bytes.Buffer
	if opt.TLS {
		b.WriteString("tls_dir = \"tls\"\n")
	} else {
		fmt.Fprintf(&b, "secret_file = %q\n", secret)
	}
	for _, n := range c.nodes() {
		fmt.Fprintf(&b, "\n[nodes.%s]\nreplication = \"%s:%d\"\nstate_dir = %q\n", n.Name, n.IP, replPort, n.Name)
	}
	fmt.Fprintf(&b, "\n[resources.%s]\ndisk = { ", resource)
	for i, n := range c.nodes() {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s = %q", n.Name, n.Name+".img")
	}
	fmt.Fprintf(&b, " }\nprimary = %q\nsegment_size = %q\n%s", primary, opt.SegmentSize, opt.ResourceExtra)
	if opt.ServiceAddress != "" {
		iface := cmp.Or(opt.ServiceInterface, nodeDev)
		fmt.Fprintf(&b, "service_address = %q\nservice_interface = %q\n", opt.ServiceAddress, iface)
	}
	if len(opt.Connect) > 0 {
		b.WriteString("connect = { ")
		i := 0
		for _, name := range c.Order {
			list, ok := opt.Connect[name]
			if !ok {
				continue
			}
			if i > 0 {
				b.WriteString(", ")
			}
			i++
			q := make([]string, len(list))
			for j, p := range list {
				q[j] = fmt.Sprintf("%q", p)
			}
			fmt.Fprintf(&b, "%s = [%s]", name, strings.Join(q, ", "))
		}
		b.WriteString(" }\n")
	}
	// Every node listens on its own address (0.0.0.0 in its namespace):
	// the export follows the primary.
	fmt.Fprintf(&b, "\n[[exports.nbd]]\nresource = %q\nlisten = \"0.0.0.0:%d\"\nname = %q\n", resource, nbdPort, resource)
	if opt.AoE {
		fmt.Fprintf(&b, "\n[[exports.aoe]]\nresource = %q\nshelf = %d\nslot = %d\ninterfaces = [%q]\n", resource, aoeShelf, aoeSlot, nodeDev)
	}
	return b.Bytes()
}

func (c *Cluster) nodes() []*Node {
	var ns []*Node
	for _, name := range c.Order {
		if n := c.Nodes[name]; n != nil {
			ns = append(ns, n)
		}
	}
	return ns
}

// Primary is the node the tests treat as the resource's primary: the first
// node, or the one SetPrimary named.
func (c *Cluster) Primary() *Node {
	if c.primary != "" {
		return c.Nodes[c.primary]
	}
	return c.Nodes[c.Order[0]]
}

// SetPrimary makes the tests write through (and compare against) name.
func (c *Cluster) SetPrimary(name string) { c.primary = name }

// secondaries returns the nodes other than Primary().
func (c *Cluster) secondaries() []*Node {
	var out []*Node
	for _, n := range c.nodes() {
		if n != c.Primary() {
			out = append(out, n)
		}
	}
	return out
}

// NBDAddr is the primary's NBD export address.
func (c *Cluster) NBDAddr() string { return fmt.Sprintf("%s:%d", c.Primary().IP, nbdPort) }

// ipCmd runs ip(8).
var ipCmd = testutil.IP

func addNetns(name string) error {
	if err := ipCmd("netns", "add", name); err != nil {
		// A leftover of an earlier run with the same PID: ours by name.
		_ = ipCmd("netns", "del", name)
		return ipCmd("netns", "add", name)
	}
	return nil
}

func (c *Cluster) buildNetwork() error {
	if err := addNetns(c.BridNS); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"-n", c.BridNS, "link", "add", "br0", "type", "bridge"},
		{"-n", c.BridNS, "link", "set", "br0", "up"},
	} {
		if err := ipCmd(args...); err != nil {
			return err
		}
	}
	return nil
}

// addNode creates n's namespace and its veth pair into the bridge.
func (c *Cluster) addNode(n *Node) error {
	if err := addNetns(n.NS); err != nil {
		return err
	}
	port := "v-" + n.Name
	if len(port) > 15 {
		port = port[:15]
	}
	for _, args := range [][]string{
		{"link", "add", nodeDev, "netns", n.NS, "type", "veth", "peer", "name", port, "netns", c.BridNS},
		{"-n", c.BridNS, "link", "set", port, "master", "br0", "up"},
		{"-n", n.NS, "addr", "add", n.IP + "/24", "dev", nodeDev},
		{"-n", n.NS, "link", "set", nodeDev, "up"},
		{"-n", n.NS, "link", "set", "lo", "up"},
	} {
		if err := ipCmd(args...); err != nil {
			return err
		}
	}
	return nil
}

// leftoverNS matches the namespaces of a cluster: tc<pid in hex>-<n>-<node or br>.
var leftoverNS = regexp.MustCompile(`^tc([0-9a-f]+)-[0-9]+-[a-z0-9_-]+$`)

// removeLeftovers removes what a test binary killed before its cleanups
// (go test -timeout, SIGKILL) left behind: the namespaces of clusters whose
// test process is gone, the daemons still running in them, and their temp
// dirs.
func removeLeftovers() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		m := leftoverNS.FindStringSubmatch(f[0])
		if m == nil {
			continue
		}
		pid, err := strconv.ParseInt(m[1], 16, 64)
		if err != nil || processAlive(int(pid)) {
			continue
		}
		if pids, err := exec.Command("ip", "netns", "pids", f[0]).Output(); err == nil {
			for _, p := range strings.Fields(string(pids)) {
				if n, err := strconv.Atoi(p); err == nil {
					_ = syscall.Kill(n, syscall.SIGKILL)
				}
			}
		}
		_ = ipCmd("netns", "del", f[0])
		dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "tc"+m[1]+"-*"))
		for _, d := range dirs {
			os.RemoveAll(d)
		}
	}
}

// processAlive reports whether pid is a running clustertest binary.
func processAlive(pid int) bool {
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return err == nil && strings.HasPrefix(string(comm), "clustertest")
}

func (c *Cluster) removeNetwork() {
	for _, n := range c.nodes() {
		_ = ipCmd("netns", "del", n.NS)
	}
	_ = ipCmd("netns", "del", c.BridNS)
}

func (c *Cluster) attachLogs() {
	for _, n := range c.nodes() {
		b, err := os.ReadFile(n.LogPath)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		if len(lines) > 150 {
			lines = append([]string{fmt.Sprintf("... (%d lines before)", len(lines)-150)}, lines[len(lines)-150:]...)
		}
		c.t.Logf("---- log of %s (%s) ----\n%s", n.Name, n.LogPath, strings.Join(lines, "\n"))
	}
}

// StartAll starts every node and waits until each answers on its control
// socket.
func (c *Cluster) StartAll() {
	c.t.Helper()
	for _, n := range c.nodes() {
		n.Start()
	}
}

// Start runs `tharsis run` for n inside its namespace and waits until its
// control socket answers.
func (n *Node) Start() {
	t := n.c.t
	t.Helper()
	n.mu.Lock()
	if n.cmd != nil {
		n.mu.Unlock()
		t.Fatalf("node %s is already running", n.Name)
	}
	logf, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		n.mu.Unlock()
		t.Fatal(err)
	}
	fmt.Fprintf(logf, "==== clustertest: start %s at %s\n", n.Name, time.Now().Format(time.StampMilli))
	cmd := exec.Command("ip", "netns", "exec", n.NS, n.c.Bin, "run", "--config", n.Config, "--node", n.Name, "--log-level", "debug")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		n.mu.Unlock()
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		fmt.Fprintf(logf, "==== clustertest: %s exited (%v) at %s\n", n.Name, cmd.ProcessState, time.Now().Format(time.StampMilli))
		logf.Close()
		close(exited)
	}()
	n.cmd, n.exited = cmd, exited
	n.mu.Unlock()

	deadline := time.Now().Add(readyAfter)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			t.Fatalf("tharsis run for node %s exited at startup; its log:\n%s", n.Name, n.Log())
		default:
		}
		if _, last = n.TryView(); last == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("node %s did not answer on %s within %s: %v", n.Name, n.Socket, readyAfter, last)
}

// Running reports whether n's daemon runs.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cmd != nil
}

// Kill sends SIGKILL to n's daemon and waits until it is gone.
func (n *Node) Kill() {
	n.c.t.Helper()
	if !n.kill() {
		n.c.t.Fatalf("node %s is not running", n.Name)
	}
}

// Stop sends SIGTERM to n's daemon and waits (at most 20 s, then SIGKILL).
func (n *Node) Stop() {
	n.c.t.Helper()
	n.mu.Lock()
	cmd, exited := n.cmd, n.exited
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		n.kill()
		n.c.t.Fatalf("node %s did not stop within 20 s of SIGTERM", n.Name)
	}
	n.mu.Lock()
	n.cmd = nil
	n.mu.Unlock()
}

func (n *Node) kill() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return false
	}
	// ip netns exec execs the program: the process is tharsis itself.
	_ = n.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-n.exited:
	case <-time.After(10 * time.Second):
		n.c.t.Errorf("node %s (pid %d) survived SIGKILL for 10 s", n.Name, n.cmd.Process.Pid)
	}
	n.cmd = nil
	return true
}

// Log returns n's daemon log so far.
func (n *Node) Log() string {
	b, _ := os.ReadFile(n.LogPath)
	return string(b)
}

// CutLink sets n's end of its veth pair down (no packet passes, no reset
// is sent); RestoreLink sets it up again.
func (n *Node) CutLink() {
	n.c.t.Helper()
	if err := ipCmd("-n", n.NS, "link", "set", nodeDev, "down"); err != nil {
		n.c.t.Fatal(err)
	}
}

// RestoreLink undoes CutLink (the address stays configured).
func (n *Node) RestoreLink() {
	n.c.t.Helper()
	if err := ipCmd("-n", n.NS, "link", "set", nodeDev, "up"); err != nil {
		n.c.t.Fatal(err)
	}
}

// tharsis runs the tharsis CLI against n's control socket.
func (n *Node) tharsis(timeout time.Duration, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, n.c.Bin, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("tharsis %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

// Verb runs `tharsis VERB --socket S r0` on n (connect, disconnect,
// pause-replay, invalidate, ...) and fails the test if it fails.
func (n *Node) Verb(verb string) string {
	n.c.t.Helper()
	out, err := n.TryVerb(verb)
	if err != nil {
		n.c.t.Fatalf("node %s: %v", n.Name, err)
	}
	return out
}

// TryVerb is Verb returning the error.
func (n *Node) TryVerb(verb string) (string, error) {
	out, err := n.tharsis(time.Minute, verb, "--socket", n.Socket, resource)
	if err != nil && strings.Contains(err.Error(), "unknown command") {
		err = fmt.Errorf("the tharsis CLI has no verb %q yet (issue 6 item 6): %w", verb, err)
	}
	return strings.TrimSpace(string(out)), err
}

// TryView runs `tharsis view --json --raw` (the daemon's own status) on n.
func (n *Node) TryView() (*View, error) {
	out, err := n.tharsis(15*time.Second, "view", "--json", "--raw", "--socket", n.Socket)
	if err != nil {
		return nil, err
	}
	return parseView(out)
}

// View is TryView failing the test on error.
func (n *Node) View() *View {
	n.c.t.Helper()
	v, err := n.TryView()
	if err != nil {
		n.c.t.Fatalf("node %s: %v", n.Name, err)
	}
	return v
}

// Repl returns n's replication status of r0, failing the test when the
// daemon does not report one.
func (n *Node) Repl() *ReplStatus {
	n.c.t.Helper()
	r, err := n.TryRepl()
	if err != nil {
		n.c.t.Fatal(err)
	}
	return r
}

// TryRepl is Repl returning the error.
func (n *Node) TryRepl() (*ReplStatus, error) {
	v, err := n.TryView()
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", n.Name, err)
	}
	r := v.Resource(resource)
	if r == nil {
		return nil, fmt.Errorf("node %s: `tharsis view --json` shows no resource %s", n.Name, resource)
	}
	if r.Repl == nil {
		return nil, &noReplError{fmt.Sprintf("node %s: `tharsis view --json` of %s (role %s) has no replication status (no object with lag_bytes): the daemon does not run replicate.Secondary/ShipServer yet, or view does not show it (issue 6 items 1, 4, 9); it shows:\n%s", n.Name, resource, r.Role, r.Raw)}
	}
	return r.Repl, nil
}

// noReplError says the daemon reports no replication status at all: a
// missing feature, not a state to wait out.
type noReplError struct{ msg string }

func (e *noReplError) Error() string { return e.msg }

// needRepl waits (10 s at most) until n's view has a replication status at
// all, and fails the test at once naming what the daemon lacks otherwise.
func (n *Node) needRepl() {
	n.c.t.Helper()
	start := time.Now()
	for {
		_, err := n.TryRepl()
		var nr *noReplError
		if !errors.As(err, &nr) {
			return
		}
		if time.Since(start) > 10*time.Second {
			n.c.t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// SHA256 is the hex SHA-256 of n's disk file.
func (n *Node) SHA256() string {
	n.c.t.Helper()
	f, err := os.Open(n.Disk)
	if err != nil {
		n.c.t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		n.c.t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// ReadDisk returns the whole disk file of n.
func (n *Node) ReadDisk() []byte {
	n.c.t.Helper()
	b, err := os.ReadFile(n.Disk)
	if err != nil {
		n.c.t.Fatal(err)
	}
	return b
}

// TxBytes is the byte counter of n's veth end: sent (tx) and received (rx).
func (n *Node) TxRx() (tx, rx int64) {
	n.c.t.Helper()
	var stats struct {
		Stats64 struct {
			RX struct {
				Bytes int64 `json:"bytes"`
			} `json:"rx"`
			TX struct {
				Bytes int64 `json:"bytes"`
			} `json:"tx"`
		} `json:"stats64"`
	}
	out, err := exec.Command("ip", "-n", n.NS, "-j", "-s", "link", "show", nodeDev).Output()
	if err != nil {
		n.c.t.Fatalf("ip -s link in %s: %v", n.NS, err)
	}
	var list []json.RawMessage
	if err := json.Unmarshal(out, &list); err != nil || len(list) != 1 {
		n.c.t.Fatalf("ip -j -s link: %v: %s", err, out)
	}
	if err := json.Unmarshal(list[0], &stats); err != nil {
		n.c.t.Fatal(err)
	}
	return stats.Stats64.TX.Bytes, stats.Stats64.RX.Bytes
}

// WaitCaughtUp waits until every running secondary has replayed the whole
// log of the primary, is consistent and has nothing left to fetch, then
// returns the primary's log end.
func (c *Cluster) WaitCaughtUp(timeout time.Duration, names ...string) Position {
	c.t.Helper()
	if len(names) == 0 {
		for _, n := range c.secondaries() {
			if n.Running() {
				names = append(names, n.Name)
			}
		}
	}
	for _, name := range names {
		c.Nodes[name].needRepl()
	}
	var end Position
	var why string
	deadline := time.Now().Add(timeout)
	for {
		ok, w, e := c.caughtUp(names)
		if ok {
			return e
		}
		why, end = w, e
		if time.Now().After(deadline) {
			c.t.Fatalf("secondaries %v did not catch up with the primary (log end %s) within %s: %s", names, end, timeout, why)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *Cluster) caughtUp(names []string) (bool, string, Position) {
	p := c.Primary()
	pr, err := p.TryView()
	if err != nil {
		return false, err.Error(), Position{}
	}
	end, ok := pr.LogEnd(resource)
	if !ok {
		return false, "the primary's view has no log end", end
	}
	for _, name := range names {
		r, err := c.Nodes[name].TryRepl()
		if err != nil {
			return false, err.Error(), end
		}
		switch {
		case !r.Consistent:
			return false, fmt.Sprintf("%s is not consistent (sync %s)", name, r.Sync), end
		case r.Applied.Seq != end.Seq:
			return false, fmt.Sprintf("%s replayed %s, primary at %s (source %q, lag %d bytes, %.1fs, error %q)", name, r.Applied, end, r.Source, r.LagBytes, r.LagSeconds, r.Err), end
		case r.LagBytes != 0:
			return false, fmt.Sprintf("%s reports lag %d bytes", name, r.LagBytes), end
		}
	}
	return true, "", end
}

// AssertIdentical checks that the disk files of the named nodes (default:
// every running node) hold the same bytes.
func (c *Cluster) AssertIdentical(names ...string) {
	c.t.Helper()
	if len(names) == 0 {
		for _, n := range c.nodes() {
			names = append(names, n.Name)
		}
	}
	want := c.Nodes[names[0]].SHA256()
	for _, name := range names[1:] {
		if got := c.Nodes[name].SHA256(); got != want {
			c.t.Errorf("disk of %s (sha256 %s) differs from %s's (sha256 %s)", name, got[:16], names[0], want[:16])
		}
	}
}

// WaitFor polls cond every 50 ms until it holds; on timeout the test fails
// with what and the last reason cond gave.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	start := time.Now()
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Since(start) > timeout {
			t.Fatalf("timed out after %s waiting for %s: %s", timeout, what, why)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// inNetns runs fn on an OS thread that has entered namespace ns.
var inNetns = testutil.InNetns

// DialNBD connects to the primary's NBD export from inside the primary's
// namespace.
func (c *Cluster) DialNBD() (*nbdConn, error) {
	var conn *nbdConn
	err := inNetns(c.Primary().NS, func() error {
		var err error
		conn, err = dialNBD(c.NBDAddr(), resource)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("NBD export %s of %s: %w", c.NBDAddr(), c.Primary().Name, err)
	}
	return conn, nil
}

// MustDialNBD is DialNBD failing the test, with the connection closed in
// t.Cleanup.
func (c *Cluster) MustDialNBD() *nbdConn {
	c.t.Helper()
	conn, err := c.DialNBD()
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { conn.Close() })
	return conn
}
