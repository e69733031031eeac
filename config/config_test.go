package config

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// designSketch is the config sketch of DESIGN.md, plus the node gamma that its
// connect table names (without it the sketch would not validate).
const designSketch = `secret_file = "/etc/tharsis/secret"  # shared cluster secret: peers authenticate with it
[nodes.alpha]
replication = "10.0.0.1:7777"
state_dir = "/var/lib/tharsis"       # optional, per node: logs, positions, persisted AoE state
[nodes.beta]
replication = "10.0.0.2:7777"
[nodes.gamma]
replication = "10.0.0.3:7777"

[resources.data]
disk = { alpha = "/dev/vg0/data", beta = "/var/lib/tharsis/data.img", gamma = "data.img" }
size = "100GiB"                      # optional: default is the smallest disk
log_dir = "/srv/mars/data"           # optional: default <state_dir of the node>/<resource>/log
connect = { beta = ["alpha"], gamma = ["beta", "alpha"] }   # fetch-from priorities

[[exports.aoe]]
resource = "data"
shelf = 1
slot = 1
interfaces = ["eth1"]
allow_macs = []                      # empty: anyone on the segment
[[exports.nbd]]
resource = "data"
listen = "0.0.0.0:10809"
name = "data"
read_only = false
`

func mustParse(t *testing.T, doc string) *Config {
	t.Helper()
	c, err := Parse("t.toml", []byte(doc), "/etc/tharsis")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return c
}

func TestDesignSketch(t *testing.T) {
	c := mustParse(t, designSketch)
	want := &Config{
		File:       "t.toml",
		Dir:        "/etc/tharsis",
		SecretFile: "/etc/tharsis/secret",
		Nodes: map[string]*Node{
			"alpha": {Name: "alpha", Replication: "10.0.0.1:7777", StateDir: "/var/lib/tharsis", Control: "/var/lib/tharsis/control.sock"},
			"beta":  {Name: "beta", Replication: "10.0.0.2:7777", StateDir: "/var/lib/tharsis/beta", Control: "/var/lib/tharsis/beta/control.sock"},
			"gamma": {Name: "gamma", Replication: "10.0.0.3:7777", StateDir: "/var/lib/tharsis/gamma", Control: "/var/lib/tharsis/gamma/control.sock"},
		},
		Resources: map[string]*Resource{
			"data": {
				Name:        "data",
				Disks:       map[string]string{"alpha": "/dev/vg0/data", "beta": "/var/lib/tharsis/data.img", "gamma": "/etc/tharsis/data.img"},
				Size:        100 << 30,
				LogDir:      "/srv/mars/data",
				Primary:     "alpha",
				Connect:     map[string][]string{"beta": {"alpha"}, "gamma": {"beta", "alpha"}},
				Replicated:  true,
				SegmentSize: 256 << 20,
				ApplyWindow: DefaultApplyWindow,
			},
		},
		AoE:    []*AoEExport{{Resource: "data", Shelf: 1, Slot: 1, Interfaces: []string{"eth1"}, BufCnt: 64}},
		NBD:    []*NBDExport{{Resource: "data", Listen: "0.0.0.0:10809", Name: "data"}},
		Limits: DefaultLimits(),
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got\n%s\nwant\n%s", c.Marshal(), want.Marshal())
	}
	if got := c.NodeNames(); !reflect.DeepEqual(got, []string{"alpha", "beta", "gamma"}) {
		t.Errorf("NodeNames = %v", got)
	}
	if got := c.ResourceNames(); !reflect.DeepEqual(got, []string{"data"}) {
		t.Errorf("ResourceNames = %v", got)
	}
	if got := c.ConnectList("data", "gamma"); !reflect.DeepEqual(got, []string{"beta", "alpha"}) {
		t.Errorf("ConnectList(gamma) = %v", got)
	}
	if got := c.LogDir("data", "beta"); got != "/srv/mars/data" {
		t.Errorf("LogDir = %q", got)
	}
}

func TestDefaults(t *testing.T) {
	c := mustParse(t, `
[nodes.b]
replication = "node-b.example:7777"
[nodes.a]
replication = "[fd00::1]:7777"
state_dir = "state"
control = "ctl.sock"
[nodes.c]
replication = "10.0.0.3:7777"
[resources.r]
disk = { b = "/dev/b", a = "/dev/a", c = "/dev/c" }
[resources.s]
disk = { c = "/dev/s" }
[[exports.aoe]]
resource = "r"
shelf = 0
slot = 0
interfaces = ["eth0"]
[[exports.nbd]]
resource = "r"
`)
	a, b := c.Nodes["a"], c.Nodes["b"]
	if a.StateDir != "/etc/tharsis/state" || a.Control != "/etc/tharsis/ctl.sock" || a.Replication != "[fd00::1]:7777" {
		t.Errorf("node a = %+v", a)
	}
	if b.StateDir != "/var/lib/tharsis/b" || b.Control != "/var/lib/tharsis/b/control.sock" {
		t.Errorf("node b = %+v", b)
	}
	r := c.Resources["r"]
	if r.Size != 0 || r.LogDir != "" || r.Primary != "a" || r.Connect != nil || !r.Replicated || r.SegmentSize != DefaultSegmentSize || r.Sync {
		t.Errorf("resource defaults = %+v", r)
	}
	if got := c.LogDir("r", "a"); got != "/etc/tharsis/state/r/log" {
		t.Errorf("LogDir(r, a) = %q", got)
	}
	if got := c.LogDir("r", "b"); got != "/var/lib/tharsis/b/r/log" {
		t.Errorf("LogDir(r, b) = %q", got)
	}
	if got := c.LogDir("nope", "a") + c.LogDir("r", "nope"); got != "" {
		t.Errorf("LogDir of unknown = %q", got)
	}
	for _, tc := range []struct {
		res, node string
		want      []string
	}{
		{"r", "a", nil},           // the primary
		{"r", "b", []string{"a"}}, // default: the primary
		{"r", "c", []string{"a"}},
		{"s", "c", nil},    // primary of s
		{"s", "a", nil},    // no disk of s
		{"nope", "a", nil}, // unknown resource
		{"r", "nope", nil}, // unknown node
	} {
		if got := c.ConnectList(tc.res, tc.node); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ConnectList(%s, %s) = %v, want %v", tc.res, tc.node, got, tc.want)
		}
	}
	e := c.AoE[0]
	if e.BufCnt != DefaultBufCnt || e.AllowMACs != nil || e.ReadOnly || e.WriteCache {
		t.Errorf("aoe defaults = %+v", e)
	}
	n := c.NBD[0]
	if n.Listen != DefaultNBDListen || n.Name != "r" || n.Description != "" || n.ReadOnly {
		t.Errorf("nbd defaults = %+v", n)
	}
	if got := c.Resources["s"].Primary; got != "c" {
		t.Errorf("primary of s = %q", got)
	}
}

func TestAllValues(t *testing.T) {
	c := mustParse(t, `
[nodes.a]
replication = "10.0.0.1:7777"
[nodes.b]
replication = "10.0.0.2:7777"
[resources.r]
disk = { a = "/dev/a", b = "/dev/b" }
size = "10 GB"
primary = "b"
replicated = false
segment_size = 1048576
sync = true
apply_window = "16MiB"
connect = { a = ["b"] }
[[exports.aoe]]
resource = "r"
shelf = 0xfffe
slot = 0xfe
interfaces = ["eth0", "eth1"]
allow_macs = ["00:11:22:33:44:55", "AA-BB-CC-DD-EE-FF"]
read_only = true
bufcnt = 65535
write_cache = true
[[exports.nbd]]
resource = "r"
listen = "127.0.0.1:010809"
name = "export one"
description = "the r resource"
read_only = true
[[exports.nbd]]
resource = "r"
listen = "127.0.0.1:10809"
name = "export two"
`)
	r := c.Resources["r"]
	if r.Size != 10e9 || r.Primary != "b" || r.Replicated || r.SegmentSize != 1<<20 || !r.Sync || r.ApplyWindow != 16<<20 ||
		!reflect.DeepEqual(r.Connect, map[string][]string{"a": {"b"}}) {
		t.Errorf("resource = %+v", r)
	}
	if got := c.ConnectList("r", "a"); !reflect.DeepEqual(got, []string{"b"}) {
		t.Errorf("ConnectList(r, a) = %v", got)
	}
	e := c.AoE[0]
	macs := []net.HardwareAddr{{0, 0x11, 0x22, 0x33, 0x44, 0x55}, {0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}}
	if e.Shelf != 0xfffe || e.Slot != 0xfe || !reflect.DeepEqual(e.AllowMACs, macs) || !e.ReadOnly || e.BufCnt != 65535 || !e.WriteCache ||
		!reflect.DeepEqual(e.Interfaces, []string{"eth0", "eth1"}) {
		t.Errorf("aoe = %+v", e)
	}
	n := c.NBD[0]
	if n.Listen != "127.0.0.1:10809" || n.Name != "export one" || n.Description != "the r resource" || !n.ReadOnly {
		t.Errorf("nbd = %+v", n)
	}
}

func TestExampleFile(t *testing.T) {
	c, err := Load("testdata/example.toml")
	if err != nil {
		t.Fatalf("testdata/example.toml must parse cleanly: %v", err)
	}
	abs, _ := filepath.Abs("testdata")
	if c.Dir != abs || c.File != "testdata/example.toml" {
		t.Errorf("File, Dir = %q, %q", c.File, c.Dir)
	}
	if got := c.Resources["scratch"].Disks["alpha"]; got != filepath.Join(abs, "scratch.img") {
		t.Errorf("relative disk resolved to %q", got)
	}
	sum := c.Summary()
	for _, w := range []string{
		"testdata/example.toml: 3 nodes, 2 resources, 1 AoE export, 2 NBD exports",
		"node alpha: replication 10.0.0.1:7777",
		"resource data: 100 GiB on alpha, beta, gamma; primary alpha; replicated, segments of 256 MiB",
		"  aoe e1.1 on eth1 (anyone)",
		`  nbd "data" on 0.0.0.0:10809`,
		"resource scratch: size of the smallest disk on alpha; primary alpha; not replicated",
	} {
		if !strings.Contains(sum, w) {
			t.Errorf("Summary lacks %q:\n%s", w, sum)
		}
	}
	aoe, nbd := c.ExportsOf("data")
	if len(aoe) != 1 || len(nbd) != 1 || nbd[0].Name != "data" {
		t.Errorf("ExportsOf(data) = %v, %v", aoe, nbd)
	}
	aoe, nbd = c.ExportsOf("scratch")
	if len(aoe) != 0 || len(nbd) != 1 || nbd[0].Name != "scratch" {
		t.Errorf("ExportsOf(scratch) = %v, %v", aoe, nbd)
	}
	if aoe, nbd := c.ExportsOf("nope"); aoe != nil || nbd != nil {
		t.Errorf("ExportsOf(nope) = %v, %v", aoe, nbd)
	}
}

func TestLoadErrors(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "missing.toml"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want ErrNotExist", err)
	}
	p := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(p, []byte("[nodes.a]\nreplication = \"x\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = Load(p)
	var errs Errors
	if !errors.As(err, &errs) || !strings.HasPrefix(err.Error(), p+":2: nodes.a.replication: ") {
		t.Errorf("Load(bad) = %v", err)
	}
}

func TestRelativeDir(t *testing.T) {
	c, err := Parse("t.toml", []byte("[nodes.a]\nreplication = \"h:1\"\nstate_dir = \"st\"\n[resources.r]\ndisk = { a = \"../d.img\" }\n"), "")
	if err != nil {
		t.Fatal(err)
	}
	if c.Dir != "." || c.Nodes["a"].StateDir != "st" || c.Resources["r"].Disks["a"] != "../d.img" {
		t.Errorf("Dir %q, state %q, disk %q", c.Dir, c.Nodes["a"].StateDir, c.Resources["r"].Disks["a"])
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	for _, doc := range []string{designSketch, mustRead(t, "testdata/example.toml")} {
		c := mustParse(t, doc)
		out := c.Marshal()
		c2, err := Parse("t.toml", out, "/etc/tharsis")
		if err != nil {
			t.Fatalf("Marshal output does not parse: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(c, c2) {
			t.Errorf("round trip differs:\n%s\n---\n%s", out, c2.Marshal())
		}
		if len(Diff(c, c2)) != 0 {
			t.Errorf("Diff after round trip = %v", Diff(c, c2))
		}
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestMarshalStrings(t *testing.T) {
	c := mustParse(t, `
[nodes.a]
replication = "h:1"
[resources.r]
disk = { a = "/dev/with \"quote\" and \\ back" }
[[exports.nbd]]
resource = "r"
name = "é ☃"
description = "line one\nline two\ttab \u0001"
read_only = true
[[exports.aoe]]
resource = "r"
shelf = 3
slot = 4
interfaces = ["eth0"]
allow_macs = ["00:11:22:33:44:55"]
read_only = true
`)
	c2, err := Parse("t.toml", c.Marshal(), "/etc/tharsis")
	if err != nil || !reflect.DeepEqual(c, c2) {
		t.Fatalf("round trip: %v\n%s", err, c.Marshal())
	}
	sum := c.Summary()
	for _, w := range []string{`nbd "é ☃" on 0.0.0.0:10809, read-only`, "aoe e3.4 on eth0 (1 MAC, read-only)", "resource r: size of the smallest disk on a"} {
		if !strings.Contains(sum, w) {
			t.Errorf("Summary lacks %q:\n%s", w, sum)
		}
	}
	if got := c.DiskNodes("r"); !reflect.DeepEqual(got, []string{"a"}) {
		t.Errorf("DiskNodes = %v", got)
	}
	if got := c.DiskNodes("nope"); got != nil {
		t.Errorf("DiskNodes(nope) = %v", got)
	}
}

func TestLimits(t *testing.T) {
	c := mustParse(t, designSketch)
	if c.Limits != DefaultLimits() {
		t.Errorf("limits without a [limits] table = %+v, want the defaults", c.Limits)
	}
	if c.Limits.NBDIdleTimeout != 0 {
		t.Errorf("nbd_idle_timeout defaults to %v; idle mounted clients must not be cut off", c.Limits.NBDIdleTimeout)
	}
	c = mustParse(t, designSketch+`
[limits]
nbd_memory = "1GiB"
nbd_max_connections = 16
nbd_handshake_timeout = "5s"
nbd_request_timeout = 90
nbd_idle_timeout = "1h30m"
replication_max_connections = 8
replication_auth_timeout = "2500ms"
control_max_connections = 4
control_idle_timeout = "1m"
`)
	want := Limits{
		NBDMemory: 1 << 30, NBDMaxConnections: 16, NBDHandshakeTimeout: 5 * time.Second,
		NBDRequestTimeout: 90 * time.Second, NBDIdleTimeout: 90 * time.Minute,
		ReplicationMaxConnections: 8, ReplicationAuthTimeout: 2500 * time.Millisecond,
		ControlMaxConnections: 4, ControlIdleTimeout: time.Minute,
	}
	if c.Limits != want {
		t.Errorf("limits = %+v, want %+v", c.Limits, want)
	}
	out := c.Marshal()
	for _, w := range []string{"\n[limits]\n", `nbd_memory = "1 GiB"`, `nbd_request_timeout = "1m30s"`, `replication_auth_timeout = "2.5s"`} {
		if !strings.Contains(string(out), w) {
			t.Errorf("Marshal lacks %q:\n%s", w, out)
		}
	}
	c2, err := Parse("t.toml", out, "/etc/tharsis")
	if err != nil || c2.Limits != want {
		t.Fatalf("round trip: %v, %+v", err, c2)
	}
	got := Diff(mustParse(t, designSketch), c)
	if len(got) != 1 || got[0].String() != "limits modified: control_idle_timeout, control_max_connections, nbd_handshake_timeout, nbd_idle_timeout, nbd_max_connections, nbd_memory, nbd_request_timeout, replication_auth_timeout, replication_max_connections" {
		t.Errorf("Diff = %v", got)
	}
}

func TestLimitsWithDefaults(t *testing.T) {
	if got := (Limits{}).WithDefaults(); got != DefaultLimits() {
		t.Errorf("zero Limits with defaults = %+v, want %+v", got, DefaultLimits())
	}
	l := Limits{NBDMemory: 1 << 30, ControlIdleTimeout: time.Minute, NBDIdleTimeout: time.Hour}
	want := DefaultLimits()
	want.NBDMemory, want.ControlIdleTimeout, want.NBDIdleTimeout = 1<<30, time.Minute, time.Hour
	if got := l.WithDefaults(); got != want {
		t.Errorf("WithDefaults = %+v, want %+v", got, want)
	}
}
