package config

import (
	"fmt"
	"reflect"
	"sort"
	"strings"
)

// ChangeKind says whether something was added, removed or modified.
type ChangeKind uint8

// The kinds of Change.
const (
	Added ChangeKind = iota + 1
	Removed
	Modified
)

func (k ChangeKind) String() string {
	switch k {
	case Added:
		return "added"
	case Removed:
		return "removed"
	case Modified:
		return "modified"
	}
	return fmt.Sprintf("ChangeKind(%d)", uint8(k))
}

// The things a Change can be about.
const (
	WhatSecret   = "secret_file"
	WhatTLS      = "tls_dir"
	WhatNode     = "node"
	WhatResource = "resource"
	WhatAoE      = "aoe export"
	WhatNBD      = "nbd export"
	WhatLimits   = "limits"
)

// Change is one difference between two configurations.
type Change struct {
	Kind ChangeKind
	What string // WhatSecret, WhatTLS, WhatNode, WhatResource, WhatAoE, WhatNBD or WhatLimits
	// Name identifies the thing: a node or resource name, an AoE export's
	// "shelf.slot" (e.g. "1.1"), an NBD export's "listen/name"; "" for
	// secret_file, tls_dir and limits.
	Name string
	// Fields lists the TOML keys whose values differ (Modified only), sorted.
	Fields []string
}

func (c Change) String() string {
	s := c.What + " "
	if c.Name != "" {
		s += c.Name + " "
	}
	s += c.Kind.String()
	if len(c.Fields) > 0 {
		s += ": " + strings.Join(c.Fields, ", ")
	}
	return s
}

// Diff lists what changed from old to new, for live reload: nodes, resources
// and exports added, removed or modified (with the keys that changed). AoE
// exports are matched by shelf.slot, NBD exports by listen address and name.
// The result is ordered: secret_file, tls_dir, nodes, resources, AoE, NBD exports, each
// by name, then limits (Modified, with the keys that changed). Either argument may be nil (meaning an empty configuration).
func Diff(old, new *Config) []Change {
	if old == nil {
		old = &Config{Limits: DefaultLimits()}
	}
	if new == nil {
		new = &Config{Limits: DefaultLimits()}
	}
	var out []Change
	if old.SecretFile != new.SecretFile {
		out = append(out, Change{Kind: Modified, What: WhatSecret})
	}
	if old.TLSDir != new.TLSDir {
		out = append(out, Change{Kind: Modified, What: WhatTLS})
	}
	out = append(out, diffMap(WhatNode, old.Nodes, new.Nodes, nodeFields)...)
	out = append(out, diffMap(WhatResource, old.Resources, new.Resources, resourceFields)...)
	out = append(out, diffMap(WhatAoE, aoeIndex(old.AoE), aoeIndex(new.AoE), aoeFields)...)
	out = append(out, diffMap(WhatNBD, nbdIndex(old.NBD), nbdIndex(new.NBD), nbdFields)...)
	if f := limitFields(old.Limits, new.Limits); len(f) > 0 {
		sort.Strings(f)
		out = append(out, Change{Kind: Modified, What: WhatLimits, Fields: f})
	}
	return out
}

func diffMap[V any](what string, a, b map[string]V, fields func(x, y V) []string) []Change {
	var out []Change
	names := map[string]bool{}
	for k := range a {
		names[k] = true
	}
	for k := range b {
		names[k] = true
	}
	keys := sortedKeys(names)
	for _, k := range keys {
		x, inA := a[k]
		y, inB := b[k]
		switch {
		case !inB:
			out = append(out, Change{Kind: Removed, What: what, Name: k})
		case !inA:
			out = append(out, Change{Kind: Added, What: what, Name: k})
		default:
			if f := fields(x, y); len(f) > 0 {
				sort.Strings(f)
				out = append(out, Change{Kind: Modified, What: what, Name: k, Fields: f})
			}
		}
	}
	return out
}

// fieldDiff returns the keys whose values differ; pairs is key, old, new, ...
func fieldDiff(pairs ...any) []string {
	var f []string
	for i := 0; i+2 < len(pairs); i += 3 {
		if !reflect.DeepEqual(pairs[i+1], pairs[i+2]) {
			f = append(f, pairs[i].(string))
		}
	}
	return f
}

func nodeFields(a, b *Node) []string {
	return fieldDiff("replication", a.Replication, b.Replication, "state_dir", a.StateDir, b.StateDir,
		"control", a.Control, b.Control, "metrics_listen", a.MetricsListen, b.MetricsListen)
}

func resourceFields(a, b *Resource) []string {
	return fieldDiff("disk", a.Disks, b.Disks, "size", a.Size, b.Size, "log_dir", a.LogDir, b.LogDir,
		"primary", a.Primary, b.Primary, "connect", a.Connect, b.Connect, "replicated", a.Replicated, b.Replicated,
		"segment_size", a.SegmentSize, b.SegmentSize, "sync", a.Sync, b.Sync, "compress", a.Compress, b.Compress,
		"ack_secondaries", a.AckSecondaries, b.AckSecondaries, "ack_timeout", a.AckTimeout, b.AckTimeout,
		"apply_window", a.ApplyWindow, b.ApplyWindow,
		"verify_interval", a.VerifyInterval, b.VerifyInterval,
		"retain_max", a.RetainMax, b.RetainMax, "retain_max_age", a.RetainMaxAge, b.RetainMaxAge,
		"service_address", a.ServiceAddress, b.ServiceAddress, "service_interface", a.ServiceInterface, b.ServiceInterface)
}

func aoeFields(a, b *AoEExport) []string {
	return fieldDiff("resource", a.Resource, b.Resource, "interfaces", a.Interfaces, b.Interfaces,
		"allow_macs", a.AllowMACs, b.AllowMACs, "read_only", a.ReadOnly, b.ReadOnly, "bufcnt", a.BufCnt, b.BufCnt,
		"write_cache", a.WriteCache, b.WriteCache)
}

func nbdFields(a, b *NBDExport) []string {
	return fieldDiff("resource", a.Resource, b.Resource, "description", a.Description, b.Description,
		"read_only", a.ReadOnly, b.ReadOnly, "tls", a.TLS, b.TLS, "tls_verify_client", a.TLSVerifyClient, b.TLSVerifyClient)
}

func aoeIndex(l []*AoEExport) map[string]*AoEExport {
	m := map[string]*AoEExport{}
	for _, e := range l {
		m[fmt.Sprintf("%d.%d", e.Shelf, e.Slot)] = e
	}
	return m
}

func nbdIndex(l []*NBDExport) map[string]*NBDExport {
	m := map[string]*NBDExport{}
	for _, e := range l {
		m[e.Listen+"/"+e.Name] = e
	}
	return m
}
