package config

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// The keys valid at each level of the file.
var (
	topKeys      = []string{"secret_file", "tls_dir", "nodes", "resources", "exports", "limits"}
	nodeKeys     = []string{"replication", "state_dir", "control", "metrics_listen"}
	resourceKeys = []string{"disk", "size", "log_dir", "primary", "connect", "replicated", "segment_size", "sync", "compress", "ack_secondaries", "ack_timeout", "apply_window", "verify_interval", "retain_max", "retain_max_age", "service_address", "service_interface"}
	exportKeys   = []string{"aoe", "nbd"}
	aoeKeys      = []string{"resource", "shelf", "slot", "interfaces", "allow_macs", "read_only", "bufcnt", "write_cache"}
	nbdKeys      = []string{"resource", "listen", "name", "description", "read_only", "tls", "tls_verify_client"}
	limitKeys    = []string{"nbd_memory", "nbd_max_connections", "nbd_handshake_timeout", "nbd_request_timeout",
		"nbd_idle_timeout", "replication_max_connections", "replication_auth_timeout", "control_max_connections",
		"control_idle_timeout", "sync_rate", "fetch_rate"}
)

// keyHome says where each key belongs, for "unknown key" hints when a key is
// valid but in the wrong table.
var keyHome = func() map[string]string {
	m := map[string]string{}
	add := func(keys []string, where string) {
		for _, k := range keys {
			if _, ok := m[k]; !ok {
				m[k] = where
			}
		}
	}
	add(topKeys, "the top level (before any [table])")
	add(nodeKeys, "a [nodes.NAME] table")
	add(resourceKeys, "a [resources.NAME] table")
	add(exportKeys, "[exports] (written as [[exports.aoe]] or [[exports.nbd]])")
	add(aoeKeys, "an [[exports.aoe]] table")
	add(nbdKeys, "an [[exports.nbd]] table")
	add(limitKeys, "the [limits] table")
	return m
}()

// examples shows a correct line for each key, used in error messages.
var examples = map[string]string{
	"secret_file":       `secret_file = "/etc/tharsis/secret"`,
	"tls_dir":           `tls_dir = "/etc/tharsis/tls"`,
	"tls":               `tls = "require"`,
	"tls_verify_client": `tls_verify_client = true`,
	"nodes":             `[nodes.alpha]`,
	"resources":         `[resources.data]`,
	"exports":           `[[exports.nbd]]`,
	"replication":       `replication = "10.0.0.1:7777"`,
	"state_dir":         `state_dir = "/var/lib/tharsis/alpha"`,
	"control":           `control = "/run/tharsis/alpha.sock"`,
	"metrics_listen":    `metrics_listen = "127.0.0.1:9750"`,
	"disk":              `disk = { alpha = "/dev/vg0/data", beta = "/dev/vg0/data" }`,
	"size":              `size = "100GiB"`,
	"log_dir":           `log_dir = "/srv/tharsis/data/log"`,
	"primary":           `primary = "alpha"`,
	"connect":           `connect = { beta = ["alpha"] }`,
	"replicated":        `replicated = true`,
	"segment_size":      `segment_size = "256MiB"`,
	"apply_window":      `apply_window = "64MiB"`,
	"sync":              `sync = false`,
	"compress":          `compress = "zstd"`,
	"verify_interval":   `verify_interval = "24h"`,
	"ack_secondaries":   `ack_secondaries = 1`,
	"ack_timeout":       `ack_timeout = "10s"`,
	"retain_max":        `retain_max = "64GiB"`,
	"retain_max_age":    `retain_max_age = "72h"`,
	"service_address":   `service_address = "10.0.0.10/24"`,
	"service_interface": `service_interface = "eth1"`,
	"aoe":               `[[exports.aoe]]`,
	"nbd":               `[[exports.nbd]]`,
	"resource":          `resource = "data"`,
	"shelf":             `shelf = 1`,
	"slot":              `slot = 1`,
	"interfaces":        `interfaces = ["eth1"]`,
	"allow_macs":        `allow_macs = ["00:11:22:33:44:55"]`,
	"read_only":         `read_only = false`,
	"bufcnt":            `bufcnt = 64`,
	"write_cache":       `write_cache = false`,
	"listen":            `listen = "0.0.0.0:10809"`,
	"name":              `name = "data"`,
	"description":       `description = "database volume"`,
	"limits":            `[limits]`,

	"nbd_memory":                  `nbd_memory = "256MiB"`,
	"nbd_max_connections":         `nbd_max_connections = 128`,
	"nbd_handshake_timeout":       `nbd_handshake_timeout = "30s"`,
	"nbd_request_timeout":         `nbd_request_timeout = "30s"`,
	"nbd_idle_timeout":            `nbd_idle_timeout = "10m"`,
	"replication_max_connections": `replication_max_connections = 128`,
	"replication_auth_timeout":    `replication_auth_timeout = "10s"`,
	"control_max_connections":     `control_max_connections = 32`,
	"control_idle_timeout":        `control_idle_timeout = "30s"`,
	"sync_rate":                   `sync_rate = "100MiB"`,
	"fetch_rate":                  `fetch_rate = "50MiB"`,
}

// Parse decodes into generic maps and walks them against the schema, rather
// than decoding into structs and asking MetaData.Undecoded for unknown keys:
// a struct decode stops at the first wrong type, while the walk reports every
// wrong type, unknown key (each level knows its valid keys, for the "did you
// mean") and bad reference in one pass. Lines come from locate (locate.go).

// Parse validates the TOML document data. file names it in errors (and in
// Config.File); relative paths in it are resolved against dir ("" means ".").
// When data is not valid, Parse returns nil and Errors listing every problem
// it found, sorted by line.
func Parse(file string, data []byte, dir string) (*Config, error) {
	if dir == "" {
		dir = "."
	}
	var raw map[string]any
	if _, err := toml.Decode(string(data), &raw); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			msg := "TOML syntax error: " + pe.Message
			if pe.LastKey != "" {
				msg += fmt.Sprintf(" (after key %q)", pe.LastKey)
			}
			return nil, Errors{{File: file, Line: syntaxLine(data, pe.Position), Msg: msg + "; fix the syntax and check again"}}
		}
		return nil, Errors{{File: file, Msg: "cannot read the TOML: " + err.Error()}}
	}
	p := &parser{file: file, dir: dir, loc: locate(data)}
	c := p.build(raw)
	if len(p.errs) > 0 {
		p.errs.sort()
		return nil, p.errs
	}
	return c, nil
}

// syntaxLine returns the line of a syntax error. The parser counts an
// unexpected newline as part of the next line; counting the newlines before
// the error's byte offset names the line the operator has to fix.
func syntaxLine(data []byte, pos toml.Position) int {
	if pos.Start <= 0 || pos.Start > len(data) {
		return pos.Line
	}
	line := 1 + bytes.Count(data[:pos.Start], []byte{'\n'})
	if pos.Start == len(data) && line > 1 && data[len(data)-1] == '\n' {
		line-- // at EOF: blame the last line, not the empty one after it
	}
	return line
}

type parser struct {
	file, dir string
	loc       *locator
	errs      Errors
	cfg       *Config
}

func (p *parser) errorf(path, format string, args ...any) {
	p.errs = append(p.errs, &Error{File: p.file, Line: p.loc.line(path), Key: path, Msg: fmt.Sprintf(format, args...)})
}

func (p *parser) resolve(s string) string {
	if filepath.IsAbs(s) {
		return filepath.Clean(s)
	}
	return filepath.Join(p.dir, s)
}

func typeName(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case time.Time:
		return "a date/time"
	case map[string]any:
		return "a table"
	case []map[string]any:
		return "an array of tables"
	case []any:
		return "an array"
	}
	return fmt.Sprintf("%T", v)
}

func (p *parser) typeErr(path, key, want string, v any) {
	p.errorf(joinPath(path, key), "must be %s, not %s; for example: %s", want, typeName(v), examples[key])
}

// checkKeys reports every key of m not in valid.
func (p *parser) checkKeys(m map[string]any, path string, valid []string, where string) {
	for _, k := range sortedKeys(m) {
		if contains(valid, k) {
			continue
		}
		msg := "unknown key in " + where
		if s := suggest(k, valid); s != "" {
			msg += fmt.Sprintf("; did you mean %q?", s)
		} else if home, ok := keyHome[k]; ok {
			msg += fmt.Sprintf("; %q belongs in %s", k, home)
		} else {
			msg += "; valid keys here: " + strings.Join(valid, ", ")
		}
		p.errorf(joinPath(path, k), "%s", msg)
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// require reports a missing key and says whether it is present.
func (p *parser) require(m map[string]any, path, key, why string) bool {
	if _, ok := m[key]; ok {
		return true
	}
	p.errorf(joinPath(path, key), "missing; %s, for example: %s", why, examples[key])
	return false
}

// The get functions return the value of key in m and whether it is present
// with the right type; a wrong type is reported.

func (p *parser) getString(m map[string]any, path, key string) (string, bool) {
	v, ok := m[key]
	if !ok {
		return "", false
	}
	s, ok := v.(string)
	if !ok {
		p.typeErr(path, key, "a string", v)
	}
	return s, ok
}

func (p *parser) getPath(m map[string]any, path, key string) (string, bool) {
	s, ok := p.getString(m, path, key)
	if !ok {
		return "", false
	}
	if s == "" {
		p.errorf(joinPath(path, key), "is empty; give a path or leave the key out, for example: %s", examples[key])
		return "", false
	}
	return p.resolve(s), true
}

func (p *parser) getInt(m map[string]any, path, key string) (int64, bool) {
	v, ok := m[key]
	if !ok {
		return 0, false
	}
	n, ok := v.(int64)
	if !ok {
		p.typeErr(path, key, "an integer", v)
	}
	return n, ok
}

func (p *parser) getBool(m map[string]any, path, key string, def bool) bool {
	v, ok := m[key]
	if !ok {
		return def
	}
	b, ok := v.(bool)
	if !ok {
		p.typeErr(path, key, "true or false", v)
		return def
	}
	return b
}

func (p *parser) getTable(m map[string]any, path, key string) (map[string]any, bool) {
	v, ok := m[key]
	if !ok {
		return nil, false
	}
	t, ok := v.(map[string]any)
	if !ok {
		p.typeErr(path, key, "a table", v)
	}
	return t, ok
}

// getStrings returns an array of strings; ok is false when the key is
// missing, not an array, or holds a non-string (each reported).
func (p *parser) getStrings(m map[string]any, path, key string) ([]string, bool) {
	v, ok := m[key]
	if !ok {
		return nil, false
	}
	a, ok := v.([]any)
	if !ok {
		p.typeErr(path, key, "an array of strings", v)
		return nil, false
	}
	kp := joinPath(path, key)
	out := make([]string, 0, len(a))
	for i, e := range a {
		s, isStr := e.(string)
		if !isStr {
			p.errorf(indexPath(kp, i), "must be a string, not %s; for example: %s", typeName(e), examples[key])
			ok = false
			continue
		}
		out = append(out, s)
	}
	return out, ok
}

// getSize accepts a string with a unit or an integer number of bytes.
func (p *parser) getSize(m map[string]any, path, key string) (int64, bool) {
	v, ok := m[key]
	if !ok {
		return 0, false
	}
	switch v := v.(type) {
	case int64:
		if v < 0 {
			p.errorf(joinPath(path, key), "%d is negative; for example: %s", v, examples[key])
			return 0, false
		}
		return v, true
	case string:
		n, err := ParseSize(v)
		if err != nil {
			p.errorf(joinPath(path, key), "%v", err)
			return 0, false
		}
		return n, true
	}
	p.typeErr(path, key, "a size string or a number of bytes", v)
	return 0, false
}

// tables returns the elements of an array of tables with their paths.
func (p *parser) tables(m map[string]any, path, key string) ([]map[string]any, []string) {
	v, ok := m[key]
	if !ok {
		return nil, nil
	}
	kp := joinPath(path, key)
	var elems []any
	switch v := v.(type) {
	case []map[string]any:
		for _, e := range v {
			elems = append(elems, e)
		}
	case []any:
		elems = v
	case map[string]any:
		p.errorf(kp, "must be an array of tables: write [[%s]] (double brackets) for each export", kp)
		return nil, nil
	default:
		p.typeErr(path, key, "an array of tables", v)
		return nil, nil
	}
	var out []map[string]any
	var paths []string
	for i, e := range elems {
		ep := indexPath(kp, i)
		t, ok := e.(map[string]any)
		if !ok {
			p.errorf(ep, "must be a table, not %s; write each export as [[%s]] with its keys below", typeName(e), kp)
			continue
		}
		out = append(out, t)
		paths = append(paths, ep)
	}
	return out, paths
}

func validName(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || i > 0 && (c == '_' || c == '-') {
			continue
		}
		return false
	}
	return true
}

func (p *parser) checkName(path, name, what string) {
	if !validName(name) {
		p.errorf(path, "%q is not a valid %s name; use 1 to 63 characters from a-z, 0-9, '_' and '-', starting with a letter or digit", name, what)
	}
}

// hostPort is a parsed, normalised host:port.
type hostPort struct {
	host string // normalised; "" for an empty host
	port int
}

func (h hostPort) String() string { return net.JoinHostPort(h.host, strconv.Itoa(h.port)) }

func (h hostPort) wildcard() bool { return h.host == "" || h.host == "0.0.0.0" || h.host == "::" }

// conflicts says whether listening on a and b would clash on one machine.
func (h hostPort) conflicts(o hostPort) bool {
	return h.port == o.port && (h.host == o.host || h.wildcard() || o.wildcard())
}

// parseHostPort checks s is host:port with a port from 1 to 65535 and a host
// that is an IP address or a hostname (or empty/wildcard when listening).
func parseHostPort(s string, listen bool) (hostPort, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return hostPort{}, fmt.Errorf("%q is not host:port; write it like 10.0.0.1:7777 or [fd00::1]:7777", s)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return hostPort{}, fmt.Errorf("port %q in %q must be a number from 1 to 65535", port, s)
	}
	h := hostPort{port: n}
	if a, err := netip.ParseAddr(host); err == nil {
		h.host = a.String()
	} else if host == "" || validHostname(host) {
		h.host = strings.ToLower(host)
	} else {
		return hostPort{}, fmt.Errorf("host %q in %q is neither an IP address nor a valid hostname", host, s)
	}
	if !listen && h.wildcard() {
		return hostPort{}, fmt.Errorf("%q has no specific host; peers connect to this address, so give the node's own IP address or hostname", s)
	}
	return h, nil
}

func validHostname(h string) bool {
	if len(h) > 253 {
		return false
	}
	for _, l := range strings.Split(strings.TrimSuffix(h, "."), ".") {
		if len(l) == 0 || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// validIfName follows Linux's dev_valid_name.
func validIfName(s string) bool {
	if s == "" || len(s) > 15 || s == "." || s == ".." {
		return false
	}
	return !strings.ContainsAny(s, "/: \t\n\r\v\f")
}

// maxSocketPath is the longest unix socket path Linux accepts (sun_path is
// 108 bytes including the terminating NUL).
const maxSocketPath = 107

func (p *parser) build(raw map[string]any) *Config {
	c := &Config{File: p.file, Dir: p.dir, Nodes: map[string]*Node{}, Resources: map[string]*Resource{}}
	p.cfg = c
	p.checkKeys(raw, "", topKeys, "the top level")
	if s, ok := p.getPath(raw, "", "secret_file"); ok {
		c.SecretFile = s
	}
	if s, ok := p.getPath(raw, "", "tls_dir"); ok {
		c.TLSDir = s
	}
	repl := map[string]hostPort{}
	if nodes, ok := p.getTable(raw, "", "nodes"); ok {
		for _, name := range sortedKeys(nodes) {
			if n, hp, ok := p.node(name, nodes[name]); ok {
				c.Nodes[name] = n
				if hp.port != 0 {
					repl[name] = hp
				}
			}
		}
	}
	if len(c.Nodes) == 0 {
		_, has := raw["nodes"]
		path := ""
		if has {
			path = "nodes"
		}
		p.errs = append(p.errs, &Error{File: p.file, Line: p.loc.line(path), Key: "nodes",
			Msg: "no nodes defined; add a [nodes.NAME] table with replication = \"host:port\" for every machine of the cluster"})
	}
	if res, ok := p.getTable(raw, "", "resources"); ok {
		for _, name := range sortedKeys(res) {
			if r, ok := p.resource(name, res[name]); ok {
				c.Resources[name] = r
			}
		}
	}
	var aoePaths, nbdPaths []string
	var nbdAddrs []hostPort
	if ex, ok := p.getTable(raw, "", "exports"); ok {
		p.checkKeys(ex, "exports", exportKeys, "[exports]")
		tabs, paths := p.tables(ex, "exports", "aoe")
		for i, t := range tabs {
			if e, ok := p.aoe(paths[i], t); ok {
				c.AoE = append(c.AoE, e)
				aoePaths = append(aoePaths, paths[i])
			}
		}
		tabs, paths = p.tables(ex, "exports", "nbd")
		for i, t := range tabs {
			if e, hp, ok := p.nbd(paths[i], t); ok {
				c.NBD = append(c.NBD, e)
				nbdPaths = append(nbdPaths, paths[i])
				nbdAddrs = append(nbdAddrs, hp)
			}
		}
	}
	c.Limits = DefaultLimits()
	if lt, ok := p.getTable(raw, "", "limits"); ok {
		c.Limits = p.limits(lt)
	}
	p.crossNodes(repl)
	p.crossResources()
	p.crossAoE(aoePaths)
	p.crossNBD(nbdPaths, nbdAddrs, repl)
	p.crossMetrics(nbdPaths, nbdAddrs, repl)
	p.crossService(nbdPaths, nbdAddrs, repl)
	return c
}

func (p *parser) asTable(v any, path, example string) (map[string]any, bool) {
	m, ok := v.(map[string]any)
	if !ok {
		p.errorf(path, "must be a table, not %s; write it as %s with its keys below", typeName(v), example)
	}
	return m, ok
}

func (p *parser) node(name string, v any) (*Node, hostPort, bool) {
	path := joinPath("nodes", name)
	p.checkName(path, name, "node")
	m, ok := p.asTable(v, path, "[nodes."+keySeg(name)+"]")
	if !ok {
		return nil, hostPort{}, false
	}
	p.checkKeys(m, path, nodeKeys, "[nodes.NAME]")
	n := &Node{Name: name}
	var hp hostPort
	if p.require(m, path, "replication", "every node needs the host:port its peers reach it on") {
		if s, ok := p.getString(m, path, "replication"); ok {
			h, err := parseHostPort(s, false)
			if err != nil {
				p.errorf(joinPath(path, "replication"), "%v", err)
			} else {
				hp = h
				n.Replication = h.String()
			}
		}
	}
	n.StateDir = filepath.Join(DefaultStateRoot, name)
	if s, ok := p.getPath(m, path, "state_dir"); ok {
		n.StateDir = s
	}
	n.Control = filepath.Join(n.StateDir, "control.sock")
	ctlKey := "control"
	if s, ok := p.getPath(m, path, "control"); ok {
		n.Control = s
	} else if _, ok := m["state_dir"]; ok {
		ctlKey = "state_dir"
	} else {
		ctlKey = ""
	}
	if len(n.Control) > maxSocketPath {
		kp := path
		if ctlKey != "" {
			kp = joinPath(path, ctlKey)
		}
		p.errorf(kp, "control socket path %q is %d bytes, but unix socket paths are limited to %d; set a shorter control (or state_dir)", n.Control, len(n.Control), maxSocketPath)
	}
	if s, ok := p.getString(m, path, "metrics_listen"); ok {
		if h, err := parseHostPort(s, true); err != nil {
			p.errorf(joinPath(path, "metrics_listen"), "%v", err)
		} else {
			n.MetricsListen = h.String()
		}
	}
	return n, hp, true
}

func (p *parser) knownNodes() string {
	return strings.Join(p.cfg.NodeNames(), ", ")
}

// unknownNode reports a reference to a node that is not defined.
func (p *parser) unknownNode(path, name, role string) {
	msg := fmt.Sprintf("unknown node %q", name)
	if s := suggest(name, p.cfg.NodeNames()); s != "" {
		msg += fmt.Sprintf(" (did you mean %q?)", s)
	}
	p.errorf(path, "%s; %s can only name nodes defined as [nodes.NAME] (defined: %s)", msg, role, p.knownNodes())
}

func (p *parser) resource(name string, v any) (*Resource, bool) {
	path := joinPath("resources", name)
	p.checkName(path, name, "resource")
	m, ok := p.asTable(v, path, "[resources."+keySeg(name)+"]")
	if !ok {
		return nil, false
	}
	p.checkKeys(m, path, resourceKeys, "[resources.NAME]")
	r := &Resource{Name: name, Disks: map[string]string{}, Replicated: true, SegmentSize: DefaultSegmentSize, ApplyWindow: DefaultApplyWindow}
	diskPath := joinPath(path, "disk")
	if _, ok := m["disk"]; !ok {
		p.errorf(diskPath, "missing: resource %q has no disk; name the disk of every node that holds it, for example: %s", name, examples["disk"])
	} else if disks, ok := p.getTable(m, path, "disk"); ok {
		if len(disks) == 0 {
			p.errorf(diskPath, "lists no node: resource %q has no disk; name the disk of every node that holds it, for example: %s", name, examples["disk"])
		}
		for _, node := range sortedKeys(disks) {
			np := joinPath(diskPath, node)
			d, isStr := disks[node].(string)
			switch {
			case p.cfg.Nodes[node] == nil:
				p.unknownNode(np, node, "disk")
			case !isStr:
				p.errorf(np, "must be a string (the path of the disk on node %s), not %s; for example: %s", node, typeName(disks[node]), examples["disk"])
			case d == "":
				p.errorf(np, "is empty; give the path of the disk on node %s, for example: %s", node, examples["disk"])
			default:
				r.Disks[node] = p.resolve(d)
			}
		}
	}
	if n, ok := p.getSize(m, path, "size"); ok {
		switch {
		case n == 0:
			p.errorf(joinPath(path, "size"), "must be more than 0; leave size out to use the size of the smallest disk")
		case n%SectorSize != 0:
			p.errorf(joinPath(path, "size"), "%d bytes is not a multiple of %d; round it, for example to %s", n, SectorSize, FormatSize(n/SectorSize*SectorSize+SectorSize))
		default:
			r.Size = n
		}
	}
	if s, ok := p.getPath(m, path, "log_dir"); ok {
		r.LogDir = s
	}
	diskNodes := sortedKeys(r.Disks)
	if s, ok := p.getString(m, path, "primary"); ok {
		pp := joinPath(path, "primary")
		switch {
		case p.cfg.Nodes[s] == nil:
			p.unknownNode(pp, s, "primary")
		case r.Disks[s] == "":
			p.errorf(pp, "node %q holds no disk of resource %q, so it cannot be its primary; name one of %s, or add a disk for %s", s, name, strings.Join(diskNodes, ", "), s)
		default:
			r.Primary = s
		}
	} else if len(diskNodes) > 0 {
		r.Primary = diskNodes[0]
	}
	if conn, ok := p.getTable(m, path, "connect"); ok {
		p.connect(r, joinPath(path, "connect"), conn)
	}
	r.Replicated = p.getBool(m, path, "replicated", true)
	if n, ok := p.getSize(m, path, "segment_size"); ok {
		if n < MinSegmentSize {
			p.errorf(joinPath(path, "segment_size"), "%s is too small; use at least %s", FormatSize(n), FormatSize(MinSegmentSize))
		} else {
			r.SegmentSize = n
		}
	}
	r.Sync = p.getBool(m, path, "sync", false)
	if s, ok := p.getString(m, path, "compress"); ok {
		switch s {
		case CompressOff:
		case CompressZstd:
			r.Compress = s
		default:
			p.errorf(joinPath(path, "compress"), "%q is not a compression; use %q or %q, for example: %s", s, CompressOff, CompressZstd, examples["compress"])
		}
	}
	p.ack(r, path, m)
	if n, ok := p.getSize(m, path, "apply_window"); ok {
		if n < MinApplyWindow {
			p.errorf(joinPath(path, "apply_window"), "%s is too small; use at least %s, for example: %s", FormatSize(n), FormatSize(MinApplyWindow), examples["apply_window"])
		} else {
			r.ApplyWindow = n
		}
	}
	if d, ok := p.getDuration(m, path, "verify_interval"); ok {
		if d != 0 && d < MinVerifyInterval {
			p.errorf(joinPath(path, "verify_interval"), "%s is too often; use at least %s (or 0: never), for example: %s", d, MinVerifyInterval, examples["verify_interval"])
		} else {
			r.VerifyInterval = d
		}
	}
	if n, ok := p.getSize(m, path, "retain_max"); ok {
		if n != 0 && n < 2*r.SegmentSize {
			p.errorf(joinPath(path, "retain_max"), "%s is less than two log segments (%s); use more, or 0: no limit, for example: %s", FormatSize(n), FormatSize(2*r.SegmentSize), examples["retain_max"])
		} else {
			r.RetainMax = n
		}
	}
	if d, ok := p.getDuration(m, path, "retain_max_age"); ok {
		if d < 0 || d != 0 && d < time.Minute {
			p.errorf(joinPath(path, "retain_max_age"), "%s is too short; use at least 1m (or 0: no limit), for example: %s", d, examples["retain_max_age"])
		} else {
			r.RetainMaxAge = d
		}
	}
	p.service(r, path, m)
	return r, true
}

// ack parses ack_secondaries and ack_timeout (synchronous acknowledgement).
func (p *parser) ack(r *Resource, path string, m map[string]any) {
	if v, ok := m["ack_timeout"]; ok {
		kp := joinPath(path, "ack_timeout")
		if s, isStr := v.(string); isStr && s == "forever" {
			r.AckTimeout = AckForever
		} else if d, ok := p.getDuration(m, path, "ack_timeout"); ok {
			if d <= 0 {
				p.errorf(kp, "%s is not a wait; give a positive duration, or \"forever\" (writes wait for their acknowledgements however long), for example: %s", d, examples["ack_timeout"])
			} else {
				r.AckTimeout = d
			}
		}
	}
	k, ok := p.getInt(m, path, "ack_secondaries")
	if !ok {
		return
	}
	kp := joinPath(path, "ack_secondaries")
	others := len(r.Disks) - 1
	// The nodes that may fetch from the config's primary directly: those
	// without a connect list, and those whose list names it.
	direct := 0
	for n := range r.Disks {
		if l, has := r.Connect[n]; n != r.Primary && (!has || slices.Contains(l, r.Primary)) {
			direct++
		}
	}
	switch {
	case k < 0:
		p.errorf(kp, "%d is negative; give the number of secondaries that must hold a write before it is acknowledged (0: asynchronous), for example: %s", k, examples["ack_secondaries"])
	case k > 0 && !r.Replicated:
		p.errorf(kp, "resource %q is not replicated (replicated = false): no secondary can acknowledge; remove ack_secondaries", r.Name)
	case k > int64(others):
		p.errorf(kp, "%d is more than the %d other node(s) holding resource %q: writes could never be acknowledged; use at most %d", k, others, r.Name, others)
	case k > int64(direct):
		p.errorf(kp, "%d is more than the %d node(s) that fetch from the primary %s directly (the others fetch through another node, per connect): writes could never be acknowledged; use at most %d, or add %s to their connect lists", k, direct, r.Primary, direct, r.Primary)
	default:
		r.AckSecondaries = int(k)
	}
}

// holder checks that node may appear in resource r's connect table.
func (p *parser) holder(r *Resource, path, node string) bool {
	if p.cfg.Nodes[node] == nil {
		p.unknownNode(path, node, "connect")
		return false
	}
	if r.Disks[node] == "" {
		p.errorf(path, "node %q holds no disk of resource %q, so it takes no part in its replication; name only %s, or add a disk for %s", node, r.Name, strings.Join(sortedKeys(r.Disks), ", "), node)
		return false
	}
	return true
}

func (p *parser) connect(r *Resource, path string, conn map[string]any) {
	for _, node := range sortedKeys(conn) {
		np := joinPath(path, node)
		okNode := p.holder(r, np, node)
		list, ok := p.getStrings(conn, path, node)
		if !ok {
			continue
		}
		if len(list) == 0 {
			p.errorf(np, "is empty; list the nodes %s fetches %s from, in order, or leave it out to fetch from the primary", node, r.Name)
			continue
		}
		good := okNode
		seen := map[string]bool{}
		for i, peer := range list {
			ep := indexPath(np, i)
			switch {
			case !p.holder(r, ep, peer):
				good = false
			case peer == node:
				p.errorf(ep, "node %q lists itself; a node cannot fetch from itself, remove it", node)
				good = false
			case seen[peer]:
				p.errorf(ep, "node %q is listed twice; list each peer once", peer)
				good = false
			}
			seen[peer] = true
		}
		if good {
			if r.Connect == nil {
				r.Connect = map[string][]string{}
			}
			r.Connect[node] = list
		}
	}
}

func (p *parser) exportResource(m map[string]any, path string) string {
	if !p.require(m, path, "resource", "every export names the resource it serves") {
		return ""
	}
	s, ok := p.getString(m, path, "resource")
	if !ok {
		return ""
	}
	if p.cfg.Resources[s] == nil {
		msg := fmt.Sprintf("unknown resource %q", s)
		if sg := suggest(s, p.cfg.ResourceNames()); sg != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", sg)
		}
		p.errorf(joinPath(path, "resource"), "%s; define it as [resources.%s] or export one of: %s", msg, keySeg(s), strings.Join(p.cfg.ResourceNames(), ", "))
	}
	return s
}

func (p *parser) aoe(path string, m map[string]any) (*AoEExport, bool) {
	p.checkKeys(m, path, aoeKeys, "[[exports.aoe]]")
	e := &AoEExport{BufCnt: DefaultBufCnt}
	e.Resource = p.exportResource(m, path)
	ok := e.Resource != ""
	if p.require(m, path, "shelf", "every AoE export needs a shelf (major) number") {
		if n, good := p.getInt(m, path, "shelf"); good {
			switch {
			case n == 0xffff:
				p.errorf(joinPath(path, "shelf"), "shelf 65535 (0xffff) is reserved for broadcast; use 0 to 65534")
				ok = false
			case n < 0 || n > 0xffff:
				p.errorf(joinPath(path, "shelf"), "shelf %d is out of range; use 0 to 65534", n)
				ok = false
			default:
				e.Shelf = uint16(n)
			}
		} else {
			ok = false
		}
	} else {
		ok = false
	}
	if p.require(m, path, "slot", "every AoE export needs a slot (minor) number") {
		if n, good := p.getInt(m, path, "slot"); good {
			switch {
			case n == 0xff:
				p.errorf(joinPath(path, "slot"), "slot 255 (0xff) is reserved for broadcast; use 0 to 254")
				ok = false
			case n < 0 || n > 0xff:
				p.errorf(joinPath(path, "slot"), "slot %d is out of range; use 0 to 254", n)
				ok = false
			default:
				e.Slot = uint8(n)
			}
		} else {
			ok = false
		}
	} else {
		ok = false
	}
	ip := joinPath(path, "interfaces")
	if p.require(m, path, "interfaces", "AoE is served on named Ethernet interfaces") {
		if l, good := p.getStrings(m, path, "interfaces"); good {
			if len(l) == 0 {
				p.errorf(ip, "is empty; name at least one Ethernet interface, for example: %s", examples["interfaces"])
			}
			seen := map[string]bool{}
			for i, s := range l {
				switch {
				case !validIfName(s):
					p.errorf(indexPath(ip, i), "%q is not a valid interface name (1 to 15 characters, no '/', ':' or spaces); see `ip link`", s)
				case seen[s]:
					p.errorf(indexPath(ip, i), "interface %q is listed twice; list it once", s)
				default:
					e.Interfaces = append(e.Interfaces, s)
				}
				seen[s] = true
			}
		}
	}
	if l, good := p.getStrings(m, path, "allow_macs"); good {
		mp := joinPath(path, "allow_macs")
		for i, s := range l {
			mac, err := net.ParseMAC(s)
			if err != nil || len(mac) != 6 {
				p.errorf(indexPath(mp, i), "%q is not a 6-byte Ethernet MAC address; write it like 00:11:22:33:44:55", s)
				continue
			}
			e.AllowMACs = append(e.AllowMACs, mac)
		}
	}
	e.ReadOnly = p.getBool(m, path, "read_only", false)
	if n, good := p.getInt(m, path, "bufcnt"); good {
		if n < 1 || n > 65535 {
			p.errorf(joinPath(path, "bufcnt"), "%d is out of range; use 1 to 65535 (default %d)", n, DefaultBufCnt)
		} else {
			e.BufCnt = int(n)
		}
	}
	e.WriteCache = p.getBool(m, path, "write_cache", false)
	return e, ok
}

func (p *parser) nbd(path string, m map[string]any) (*NBDExport, hostPort, bool) {
	p.checkKeys(m, path, nbdKeys, "[[exports.nbd]]")
	e := &NBDExport{Listen: DefaultNBDListen}
	e.Resource = p.exportResource(m, path)
	ok := e.Resource != ""
	e.Name = e.Resource
	hp, _ := parseHostPort(DefaultNBDListen, true)
	if s, good := p.getString(m, path, "listen"); good {
		h, err := parseHostPort(s, true)
		if err != nil {
			p.errorf(joinPath(path, "listen"), "%v", err)
			ok = false
		} else {
			hp = h
			e.Listen = h.String()
		}
	} else if _, has := m["listen"]; has {
		ok = false
	}
	if s, good := p.getString(m, path, "name"); good {
		if len(s) == 0 || len(s) > MaxNBDName {
			p.errorf(joinPath(path, "name"), "must be 1 to %d bytes long (it is %d); leave it out to use the resource name", MaxNBDName, len(s))
		}
		e.Name = s
	}
	if s, good := p.getString(m, path, "description"); good {
		if len(s) > MaxNBDName {
			p.errorf(joinPath(path, "description"), "is %d bytes; shorten it to at most %d", len(s), MaxNBDName)
		}
		e.Description = s
	}
	e.ReadOnly = p.getBool(m, path, "read_only", false)
	if s, good := p.getString(m, path, "tls"); good {
		switch s {
		case TLSOff: // the zero value
		case TLSOn, TLSRequire:
			e.TLS = s
		default:
			p.errorf(joinPath(path, "tls"), "is %q; use \"off\" (plain), \"on\" (plain or TLS, as the client likes) or \"require\" (TLS only)", s)
		}
	}
	e.TLSVerifyClient = p.getBool(m, path, "tls_verify_client", false)
	switch {
	case e.TLS != "" && p.cfg.TLSDir == "":
		p.errorf(joinPath(path, "tls"), "is %q but there is no tls_dir: the node serves TLS with its certificate from tls_dir; set tls_dir (see `tharsis cert create-ca`) or use tls = \"off\"", e.TLS)
	case e.TLSVerifyClient && e.TLS != TLSRequire:
		p.errorf(joinPath(path, "tls_verify_client"), "needs tls = \"require\" (tls is %q): a plain client could not be asked for a certificate", e.TLSMode())
	}
	return e, hp, ok
}

// crossNodes: no two nodes share a replication address.
func (p *parser) crossNodes(repl map[string]hostPort) {
	names := sortedKeys(repl)
	for j, b := range names {
		for _, a := range names[:j] {
			if repl[a] == repl[b] {
				p.errorf(joinPath(joinPath("nodes", b), "replication"), "%s is also the replication address of node %s (line %d); give each node its own address",
					repl[b], a, p.loc.line(joinPath(joinPath("nodes", a), "replication")))
				break
			}
		}
	}
}

// crossResources: on each node, no two resources share a disk or a log dir.
func (p *parser) crossResources() {
	c := p.cfg
	for _, node := range c.NodeNames() {
		disks, logs := map[string]string{}, map[string]string{}
		for _, res := range c.ResourceNames() {
			r := c.Resources[res]
			d, ok := r.Disks[node]
			if !ok {
				continue
			}
			rp := joinPath("resources", res)
			if other, dup := disks[d]; dup {
				p.errorf(joinPath(joinPath(rp, "disk"), node), "disk %s on node %s is also the disk of resource %s; give each resource its own disk", d, node, other)
			} else {
				disks[d] = res
			}
			ld := c.LogDir(res, node)
			if other, dup := logs[ld]; dup {
				p.errorf(joinPath(rp, "log_dir"), "log directory %s on node %s is also used by resource %s; give each resource its own log_dir", ld, node, other)
			} else {
				logs[ld] = res
			}
		}
	}
}

// crossAoE: shelf.slot is unique across all AoE exports (any node may become
// primary, so they all share one address space).
func (p *parser) crossAoE(paths []string) {
	seen := map[uint32]int{}
	for i, e := range p.cfg.AoE {
		k := uint32(e.Shelf)<<8 | uint32(e.Slot)
		if j, dup := seen[k]; dup {
			p.errorf(joinPath(paths[i], "shelf"), "shelf.slot %d.%d is already used by %s (line %d); give each AoE export its own shelf.slot",
				e.Shelf, e.Slot, paths[j], p.loc.line(joinPath(paths[j], "shelf")))
			continue
		}
		seen[k] = i
	}
}

// crossMetrics: a node's metrics_listen clashes neither with its own
// replication address, nor with an NBD listen address, nor with the same
// address of another node.
func (p *parser) crossMetrics(nbdPaths []string, nbdAddrs []hostPort, repl map[string]hostPort) {
	seen := map[hostPort]string{}
	for _, name := range p.cfg.NodeNames() {
		n := p.cfg.Nodes[name]
		if n.MetricsListen == "" {
			continue
		}
		h, err := parseHostPort(n.MetricsListen, true)
		if err != nil {
			continue // reported by node
		}
		kp := joinPath(joinPath("nodes", name), "metrics_listen")
		if r, ok := repl[name]; ok && h.conflicts(r) {
			p.errorf(kp, "%s collides with the node's replication address %s; use another port", n.MetricsListen, r)
			continue
		}
		if other, dup := seen[h]; dup && !h.wildcard() {
			p.errorf(kp, "%s is also the metrics_listen of node %s (line %d); give each node its own address",
				n.MetricsListen, other, p.loc.line(joinPath(joinPath("nodes", other), "metrics_listen")))
			continue
		}
		seen[h] = name
		for i, a := range nbdAddrs {
			if h.conflicts(a) {
				p.errorf(kp, "%s collides with the NBD listen address %s of %s (line %d); use another port",
					n.MetricsListen, a, nbdPaths[i], p.loc.line(joinPath(nbdPaths[i], "listen")))
				break
			}
		}
	}
}

// crossNBD: export names are unique per listen address; listen addresses do
// not clash with each other or with a node's replication address.
func (p *parser) crossNBD(paths []string, addrs []hostPort, repl map[string]hostPort) {
	exps := p.cfg.NBD
	for j, e := range exps {
		lp := joinPath(paths[j], "listen")
		for i := 0; i < j; i++ {
			if addrs[i] == addrs[j] && exps[i].Name == e.Name {
				p.errorf(joinPath(paths[j], "name"), "export name %q on %s is also used by %s (line %d); give each export on one address its own name",
					e.Name, e.Listen, paths[i], p.loc.line(joinPath(paths[i], "name")))
				break
			}
		}
		for i := 0; i < j; i++ {
			if addrs[i] != addrs[j] && addrs[i].conflicts(addrs[j]) {
				p.errorf(lp, "%s conflicts with %s of %s (line %d): a wildcard address takes the port on every interface; use exactly the same listen for exports sharing a port, or another port",
					e.Listen, exps[i].Listen, paths[i], p.loc.line(joinPath(paths[i], "listen")))
				break
			}
		}
		for _, node := range sortedKeys(repl) {
			if addrs[j].conflicts(repl[node]) {
				p.errorf(lp, "%s collides with the replication address %s of node %s (line %d); use another port",
					e.Listen, repl[node], node, p.loc.line(joinPath(joinPath("nodes", node), "replication")))
				break
			}
		}
	}
}
