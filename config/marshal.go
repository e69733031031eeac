package config

import (
	"fmt"
	"strings"
)

// Marshal renders c as TOML with every default written out and every path as
// resolved. Parsing the result with the same dir gives a Config equal to c
// (apart from File) when c's paths are absolute or dir is ".". Tools such as
// `tharsis demo` use it to write a config file.
func (c *Config) Marshal() []byte {
	var b strings.Builder
	kv := func(k, v string) { fmt.Fprintf(&b, "%s = %s\n", k, v) }
	q := quoteTOML
	if c.SecretFile != "" {
		kv("secret_file", q(c.SecretFile))
	}
	if c.TLSDir != "" {
		kv("tls_dir", q(c.TLSDir))
	}
	for _, name := range c.NodeNames() {
		n := c.Nodes[name]
		fmt.Fprintf(&b, "\n[nodes.%s]\n", keySeg(name))
		kv("replication", q(n.Replication))
		kv("state_dir", q(n.StateDir))
		kv("control", q(n.Control))
		if n.MetricsListen != "" {
			kv("metrics_listen", q(n.MetricsListen))
		}
	}
	for _, name := range c.ResourceNames() {
		r := c.Resources[name]
		fmt.Fprintf(&b, "\n[resources.%s]\n", keySeg(name))
		var disks []string
		for _, node := range sortedKeys(r.Disks) {
			disks = append(disks, keySeg(node)+" = "+q(r.Disks[node]))
		}
		kv("disk", "{ "+strings.Join(disks, ", ")+" }")
		if r.Size > 0 {
			kv("size", q(FormatSize(r.Size)))
		}
		if r.LogDir != "" {
			kv("log_dir", q(r.LogDir))
		}
		if r.Primary != "" {
			kv("primary", q(r.Primary))
		}
		if len(r.Connect) > 0 {
			var conn []string
			for _, node := range sortedKeys(r.Connect) {
				conn = append(conn, keySeg(node)+" = "+quoteList(r.Connect[node]))
			}
			kv("connect", "{ "+strings.Join(conn, ", ")+" }")
		}
		kv("replicated", fmt.Sprint(r.Replicated))
		kv("segment_size", q(FormatSize(r.SegmentSize)))
		kv("sync", fmt.Sprint(r.Sync))
		if r.Compress != "" {
			kv("compress", q(r.Compress))
		}
		if r.AckSecondaries > 0 {
			kv("ack_secondaries", fmt.Sprint(r.AckSecondaries))
		}
		switch {
		case r.AckTimeout == AckForever:
			kv("ack_timeout", q("forever"))
		case r.AckTimeout > 0 && r.AckTimeout != DefaultAckTimeout:
			kv("ack_timeout", q(r.AckTimeout.String()))
		}
		if r.ApplyWindow != DefaultApplyWindow {
			kv("apply_window", q(FormatSize(r.ApplyWindow)))
		}
		if r.VerifyInterval > 0 {
			kv("verify_interval", q(r.VerifyInterval.String()))
		}
		if r.RetainMax > 0 {
			kv("retain_max", q(FormatSize(r.RetainMax)))
		}
		if r.RetainMaxAge > 0 {
			kv("retain_max_age", q(r.RetainMaxAge.String()))
		}
		b.WriteString(marshalService(r))
	}
	for _, e := range c.AoE {
		b.WriteString("\n[[exports.aoe]]\n")
		kv("resource", q(e.Resource))
		kv("shelf", fmt.Sprint(e.Shelf))
		kv("slot", fmt.Sprint(e.Slot))
		kv("interfaces", quoteList(e.Interfaces))
		macs := make([]string, len(e.AllowMACs))
		for i, m := range e.AllowMACs {
			macs[i] = m.String()
		}
		kv("allow_macs", quoteList(macs))
		kv("read_only", fmt.Sprint(e.ReadOnly))
		kv("bufcnt", fmt.Sprint(e.BufCnt))
		kv("write_cache", fmt.Sprint(e.WriteCache))
	}
	for _, e := range c.NBD {
		b.WriteString("\n[[exports.nbd]]\n")
		kv("resource", q(e.Resource))
		kv("listen", q(e.Listen))
		kv("name", q(e.Name))
		if e.Description != "" {
			kv("description", q(e.Description))
		}
		kv("read_only", fmt.Sprint(e.ReadOnly))
		if e.TLS != "" {
			kv("tls", q(e.TLS))
		}
		if e.TLSVerifyClient {
			kv("tls_verify_client", "true")
		}
	}
	c.Limits.marshal(&b)
	return []byte(b.String())
}

func quoteList(l []string) string {
	s := make([]string, len(l))
	for i, v := range l {
		s[i] = quoteTOML(v)
	}
	return "[" + strings.Join(s, ", ") + "]"
}
