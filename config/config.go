package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Defaults applied by Parse.
const (
	DefaultStateRoot   = "/var/lib/tharsis" // state_dir is DefaultStateRoot/<node> unless set
	DefaultSegmentSize = 256 << 20          // segment_size
	MinSegmentSize     = 1 << 20            // smallest segment_size accepted
	DefaultApplyWindow = 64 << 20           // apply_window
	MinApplyWindow     = 1 << 20            // smallest apply_window accepted
	DefaultBufCnt      = 64                 // exports.aoe bufcnt
	DefaultNBDListen   = "0.0.0.0:10809"    // exports.nbd listen
	MaxNBDName         = 4096               // longest NBD export name or description, in bytes
	SectorSize         = 512                // size must be a multiple of this
	MinVerifyInterval  = time.Minute        // shortest verify_interval accepted (0: never)
	CompressOff        = "off"              // compress: ship the log as it is (default)
	CompressZstd       = "zstd"             // compress: zstd per shipped frame
	DefaultAckTimeout  = 10 * time.Second   // ack_timeout of a resource that sets none
	AckForever         = time.Duration(-1)  // ack_timeout = "forever"
)

// Config is a validated cluster configuration. Every path in it is already
// resolved against Dir; every default is already applied except Size (0 means
// "the smallest disk", known only at runtime) and Resource.LogDir ("" means
// the per-node default, see Config.LogDir).
type Config struct {
	File       string // path it was loaded from (or the name given to Parse)
	Dir        string // directory relative paths were resolved against
	SecretFile string // "" when not set
	// TLSDir, when set, turns on replication over mutual TLS 1.3: it holds
	// ca.crt and each node's NODE.crt and NODE.key (`tharsis cert`).
	TLSDir    string
	Nodes     map[string]*Node
	Resources map[string]*Resource
	AoE       []*AoEExport // in file order
	NBD       []*NBDExport // in file order
	Limits    Limits       // the [limits] table, defaults applied
}

// Node is one [nodes.NAME] table.
type Node struct {
	Name        string
	Replication string // host:port peers connect to
	StateDir    string // default DefaultStateRoot/<name>
	Control     string // unix socket path; default <StateDir>/control.sock
	// MetricsListen is the host:port the node serves Prometheus metrics on
	// (/metrics); "" serves none.
	MetricsListen string
}

// Resource is one [resources.NAME] table.
type Resource struct {
	Name        string
	Disks       map[string]string   // node -> disk path; at least one
	Size        int64               // bytes; 0 = the smallest disk
	LogDir      string              // "" = <state_dir of node>/<resource>/log
	Primary     string              // initial primary; a node with a disk
	Connect     map[string][]string // node -> nodes to fetch from, in order; nil when none
	Replicated  bool                // transaction log on (default true)
	SegmentSize int64               // log rotation threshold in bytes
	Sync        bool                // fdatasync the log on every write
	// Compress is how a node compresses the log it ships of the resource
	// to a fetching node that can decode it: "" (TOML "off", the default)
	// or CompressZstd.
	Compress string
	// AckSecondaries is k: a write is acknowledged only once k
	// secondaries hold it durably in their logs (0: asynchronous).
	// AckTimeout is how long a write waits for them before the primary
	// falls back to asynchronous (0: DefaultAckTimeout; AckForever: it
	// never does).
	AckSecondaries int
	AckTimeout     time.Duration
	// ApplyWindow bounds the memory of writes acknowledged (in the log)
	// but not yet applied to the disk; writers wait while it is full.
	ApplyWindow int64
	// VerifyInterval runs an online verify on each secondary that often
	// (`tharsis verify` without --repair); 0: never.
	VerifyInterval time.Duration
	// RetainMax and RetainMaxAge limit the log kept for another node that
	// is behind (bytes past what it replayed) or unreachable (for this
	// long); beyond either, it is released: the segments it still needs
	// may be deleted, and then it needs a full sync. 0: no limit.
	RetainMax    int64
	RetainMaxAge time.Duration
	// ServiceAddress is the address (with the prefix length of its
	// network) that the primary holds for clients and announces, and a
	// node removes when it stops being primary; not IsValid when the
	// resource has none.
	ServiceAddress netip.Prefix
	// ServiceInterface names, for every disk node, the interface that
	// gets ServiceAddress there; nil when there is no ServiceAddress.
	ServiceInterface map[string]string
}

// AoEExport is one [[exports.aoe]] table.
type AoEExport struct {
	Resource   string
	Shelf      uint16 // 0..0xfffe
	Slot       uint8  // 0..0xfe
	Interfaces []string
	AllowMACs  []net.HardwareAddr // nil = anyone
	ReadOnly   bool
	BufCnt     int
	WriteCache bool
}

// NBDExport is one [[exports.nbd]] table.
type NBDExport struct {
	Resource    string
	Listen      string // host:port, default DefaultNBDListen
	Name        string // default: the resource name
	Description string
	ReadOnly    bool
	// TLS is "" (off), TLSOn or TLSRequire: whether clients may or must
	// upgrade to TLS (NBD_OPT_STARTTLS) with the node's certificate from
	// tls_dir.
	TLS string
	// TLSVerifyClient serves the export only to clients presenting a
	// certificate signed by the cluster CA (tharsis cert create-client);
	// it needs TLS = TLSRequire.
	TLSVerifyClient bool
}

// TLSMode returns the export's tls key: TLSOff, TLSOn or TLSRequire.
func (e *NBDExport) TLSMode() string {
	if e.TLS == "" {
		return TLSOff
	}
	return e.TLS
}

// Values of an NBD export's tls key.
const (
	TLSOff     = "off"     // plain clients only (the default)
	TLSOn      = "on"      // plain or TLS, as the client likes
	TLSRequire = "require" // TLS only
)

// Load reads and validates the configuration file at path. Relative paths in
// the file are resolved against the file's directory (made absolute). It
// returns Errors when the file is not valid (including a tls_dir that is not
// a directory on this host), or the read error.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	dir := filepath.Dir(path)
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	c, err := Parse(path, data, dir)
	if err != nil {
		return nil, err
	}
	if c.TLSDir != "" {
		if err := checkTLSDir(c.TLSDir); err != nil {
			return nil, Errors{{File: path, Line: locate(data).line("tls_dir"), Key: "tls_dir", Msg: err.Error()}}
		}
	}
	return c, nil
}

// checkTLSDir says what is wrong with dir as a tls_dir on this host.
func checkTLSDir(dir string) error {
	st, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%s does not exist; make the cluster CA there with `tharsis cert create-ca --dir %s` and each node's certificate with `tharsis cert create-node`, or copy the directory from where they were made", dir, dir)
	case err != nil:
		return fmt.Errorf("%w (is it readable by the daemon?)", err)
	case !st.IsDir():
		return fmt.Errorf("%s is not a directory; tls_dir names the directory holding ca.crt and the nodes' certificates and keys", dir)
	}
	return nil
}

// NodeNames returns the node names, sorted.
func (c *Config) NodeNames() []string { return sortedKeys(c.Nodes) }

// ResourceNames returns the resource names, sorted.
func (c *Config) ResourceNames() []string { return sortedKeys(c.Resources) }

// DiskNodes returns the nodes holding a disk of resource res, sorted.
func (c *Config) DiskNodes(res string) []string {
	r := c.Resources[res]
	if r == nil {
		return nil
	}
	return sortedKeys(r.Disks)
}

// LogDir returns the log directory of resource res on node: the explicit
// log_dir, else <state_dir of node>/<res>/log. It returns "" for an unknown
// resource or node.
func (c *Config) LogDir(res, node string) string {
	r, n := c.Resources[res], c.Nodes[node]
	if r == nil || n == nil {
		return ""
	}
	if r.LogDir != "" {
		return r.LogDir
	}
	return filepath.Join(n.StateDir, res, "log")
}

// ConnectList returns the nodes that node fetches resource res from, in order
// of preference: the explicit connect list, else [primary] when node is not
// the primary. It returns nil for the primary without a list, and for nodes
// that hold no disk of res.
func (c *Config) ConnectList(res, node string) []string {
	r := c.Resources[res]
	if r == nil {
		return nil
	}
	if _, ok := r.Disks[node]; !ok {
		return nil
	}
	if l, ok := r.Connect[node]; ok {
		return append([]string(nil), l...)
	}
	if node == r.Primary {
		return nil
	}
	return []string{r.Primary}
}

// NBDTLSHosts returns the hosts NBD clients may dial to reach node's
// exports with tls on, which its certificate must name: the listen host
// of every such export of a resource with a disk on node (unless it is a
// wildcard address) and the resource's service address.
func (c *Config) NBDTLSHosts(node string) []string {
	var hosts []string
	for _, e := range c.NBD {
		r := c.Resources[e.Resource]
		if e.TLS == "" || r == nil {
			continue
		}
		if _, ok := r.Disks[node]; !ok {
			continue
		}
		if h, _, err := net.SplitHostPort(e.Listen); err == nil {
			if ip := net.ParseIP(h); ip == nil || !ip.IsUnspecified() {
				hosts = append(hosts, h)
			}
		}
		if r.ServiceAddress.IsValid() {
			hosts = append(hosts, r.ServiceAddress.Addr().String())
		}
	}
	return hosts
}

// ExportsOf returns the AoE and NBD exports of resource res, in file order.
func (c *Config) ExportsOf(res string) ([]*AoEExport, []*NBDExport) {
	var a []*AoEExport
	var n []*NBDExport
	for _, e := range c.AoE {
		if e.Resource == res {
			a = append(a, e)
		}
	}
	for _, e := range c.NBD {
		if e.Resource == res {
			n = append(n, e)
		}
	}
	return a, n
}

// Summary describes the configuration in a few lines for `tharsis config
// check`.
func (c *Config) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s, %s, %s, %s\n", c.File,
		plural(len(c.Nodes), "node"), plural(len(c.Resources), "resource"),
		plural(len(c.AoE), "AoE export"), plural(len(c.NBD), "NBD export"))
	switch {
	case c.TLSDir != "" && c.SecretFile != "":
		fmt.Fprintf(&b, "replication: mutual TLS 1.3 (tls_dir %s), and the cluster secret checked inside it\n", c.TLSDir)
	case c.TLSDir != "":
		fmt.Fprintf(&b, "replication: mutual TLS 1.3 (tls_dir %s)\n", c.TLSDir)
	}
	for _, name := range c.NodeNames() {
		n := c.Nodes[name]
		fmt.Fprintf(&b, "node %s: replication %s, state %s, control %s", name, n.Replication, n.StateDir, n.Control)
		if n.MetricsListen != "" {
			fmt.Fprintf(&b, ", metrics http://%s/metrics", n.MetricsListen)
		}
		b.WriteString("\n")
	}
	for _, name := range c.ResourceNames() {
		r := c.Resources[name]
		size := "size of the smallest disk"
		if r.Size > 0 {
			size = FormatSize(r.Size)
		}
		mode := fmt.Sprintf("replicated, segments of %s", FormatSize(r.SegmentSize))
		if !r.Replicated {
			mode = "not replicated (writes go straight to the disk)"
		}
		if r.Sync {
			mode += ", sync on every write"
		}
		fmt.Fprintf(&b, "resource %s: %s on %s; primary %s; %s\n", name, size,
			strings.Join(c.DiskNodes(name), ", "), r.Primary, mode)
		b.WriteString(serviceSummary(r))
		aoe, nbd := c.ExportsOf(name)
		for _, e := range aoe {
			who := "anyone"
			if len(e.AllowMACs) > 0 {
				who = plural(len(e.AllowMACs), "MAC")
			}
			fmt.Fprintf(&b, "  aoe e%d.%d on %s (%s%s)\n", e.Shelf, e.Slot, strings.Join(e.Interfaces, ", "), who, roSuffix(e.ReadOnly))
		}
		for _, e := range nbd {
			fmt.Fprintf(&b, "  nbd %q on %s%s\n", e.Name, e.Listen, roSuffix(e.ReadOnly))
		}
	}
	return b.String()
}

func roSuffix(ro bool) string {
	if ro {
		return ", read-only"
	}
	return ""
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func sortedKeys[V any](m map[string]V) []string {
	s := make([]string, 0, len(m))
	for k := range m {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}
