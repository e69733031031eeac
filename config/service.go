package config

import (
	"fmt"
	"net/netip"
	"strings"
)

// The service address of a resource (service_address, service_interface)
// is an IP address its primary holds for clients, heartbeat IPaddr style:
// NBD has no redirect, so clients reconnect to an address that moves with
// the primary.

// service reads service_address and service_interface of resource r (at
// path, table m). Both are set only when both are valid.
func (p *parser) service(r *Resource, path string, m map[string]any) {
	ap, ip := joinPath(path, "service_address"), joinPath(path, "service_interface")
	_, hasIface := m["service_interface"]
	s, hasAddr := p.getString(m, path, "service_address")
	if _, present := m["service_address"]; !present {
		if hasIface {
			p.errorf(ip, "is set but service_address is not; add the address the primary should hold, for example: %s, or remove service_interface", examples["service_address"])
		}
		return
	}
	var addr netip.Prefix
	if hasAddr {
		a, err := parseServiceAddress(s)
		if err != nil {
			p.errorf(ap, "%v", err)
		} else {
			addr = a
		}
	}
	if !hasIface {
		p.errorf(ip, "missing: service_address needs the interface that gets it on each node that may become primary, for example: %s, or { alpha = \"eth1\", beta = \"bond0\" } when the names differ", examples["service_interface"])
		return
	}
	ifaces, ok := p.serviceInterfaces(r, ip, m["service_interface"])
	if ok && addr.IsValid() {
		r.ServiceAddress, r.ServiceInterface = addr, ifaces
	}
}

// parseServiceAddress checks s is a unicast host address with a prefix
// length, as `ip addr add` takes it.
func parseServiceAddress(s string) (netip.Prefix, error) {
	pf, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err != nil {
		if a, aerr := netip.ParseAddr(strings.TrimSpace(s)); aerr == nil {
			bits := 24
			if a.Is6() {
				bits = 64
			}
			return netip.Prefix{}, fmt.Errorf("%q has no prefix length; add the length of the clients' network as `ip addr add` takes it, for example %s/%d", s, a, bits)
		}
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address with a prefix length; for example: %s (or fd00::10/64)", s, examples["service_address"])
	}
	a := pf.Addr()
	why := ""
	switch {
	case a.Is4In6():
		return netip.Prefix{}, fmt.Errorf("%q is an IPv4-mapped IPv6 address; write it as IPv4, for example %s/%d", s, a.Unmap(), max(pf.Bits()-96, 0))
	case pf.Bits() == 0:
		why = "its prefix length is 0; give the length of the clients' network"
	case a.IsUnspecified():
		why = "it is the unspecified address"
	case a.IsLoopback():
		why = "it is a loopback address"
	case a.IsMulticast():
		why = "it is a multicast address"
	case a.IsLinkLocalUnicast():
		why = "it is link-local; use an address clients route to"
	case a.Is4() && a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		why = "it is the broadcast address"
	case a.Is4() && pf.Bits() < 31 && a == pf.Masked().Addr():
		why = fmt.Sprintf("it is the network address of %s; give a host address", pf.Masked())
	case a.Is4() && pf.Bits() < 31 && a == lastAddr(pf):
		why = fmt.Sprintf("it is the broadcast address of %s; give a host address", pf.Masked())
	}
	if why != "" {
		return netip.Prefix{}, fmt.Errorf("%q cannot be a service address: %s", s, why)
	}
	return pf, nil
}

// lastAddr returns the highest address of the IPv4 prefix pf.
func lastAddr(pf netip.Prefix) netip.Addr {
	b := pf.Masked().Addr().As4()
	host := uint32(1)<<(32-pf.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// serviceInterfaces reads service_interface: one name for every disk node
// of r, or a table naming each disk node's interface.
func (p *parser) serviceInterfaces(r *Resource, kp string, v any) (map[string]string, bool) {
	out := map[string]string{}
	switch v := v.(type) {
	case string:
		if !validIfName(v) {
			p.errorf(kp, "%q is not a valid interface name (1 to 15 characters, no '/', ':' or spaces); see `ip link`", v)
			return nil, false
		}
		for node := range r.Disks {
			out[node] = v
		}
		return out, true
	case map[string]any:
		ok := true
		for _, node := range sortedKeys(v) {
			np := joinPath(kp, node)
			name, isStr := v[node].(string)
			switch {
			case p.cfg.Nodes[node] == nil:
				p.unknownNode(np, node, "service_interface")
				ok = false
			case r.Disks[node] == "":
				p.errorf(np, "node %q holds no disk of resource %q, so it never holds its service address; name only %s", node, r.Name, strings.Join(sortedKeys(r.Disks), ", "))
				ok = false
			case !isStr:
				p.errorf(np, "must be a string (the interface on node %s), not %s; for example: service_interface = { %s = \"eth1\" }", node, typeName(v[node]), keySeg(node))
				ok = false
			case !validIfName(name):
				p.errorf(np, "%q is not a valid interface name (1 to 15 characters, no '/', ':' or spaces); see `ip link` on %s", name, node)
				ok = false
			default:
				out[node] = name
			}
		}
		var missing []string
		for _, node := range sortedKeys(r.Disks) {
			if _, has := v[node]; !has {
				missing = append(missing, node)
			}
		}
		if len(missing) > 0 {
			p.errorf(kp, "names no interface for %s, which %s a disk of resource %q and may become its primary; add %s = \"IFACE\"",
				strings.Join(missing, ", "), pluralVerb(len(missing)), r.Name, keySeg(missing[0]))
			ok = false
		}
		return out, ok
	}
	p.errorf(kp, "must be a string or a table of node = interface, not %s; for example: %s, or { alpha = \"eth1\", beta = \"bond0\" }", typeName(v), examples["service_interface"])
	return nil, false
}

func pluralVerb(n int) string {
	if n == 1 {
		return "holds"
	}
	return "hold"
}

// crossService: a service address belongs to one resource, is no node's
// replication address, and no NBD export of another resource listens on it
// (that resource's primary may be on another node).
func (p *parser) crossService(nbdPaths []string, nbdAddrs []hostPort, repl map[string]hostPort) {
	c := p.cfg
	owner := map[netip.Addr]string{}
	for _, res := range c.ResourceNames() {
		r := c.Resources[res]
		if !r.ServiceAddress.IsValid() {
			continue
		}
		a := r.ServiceAddress.Addr()
		ap := joinPath(joinPath("resources", res), "service_address")
		if other, dup := owner[a]; dup {
			p.errorf(ap, "%s is also the service address of resource %s (line %d); give each resource its own address (their primaries may be different nodes)",
				a, other, p.loc.line(joinPath(joinPath("resources", other), "service_address")))
			continue
		}
		owner[a] = res
		for _, node := range sortedKeys(repl) {
			if h, err := netip.ParseAddr(repl[node].host); err == nil && h == a {
				p.errorf(ap, "%s is the replication address of node %s (line %d); the service address moves between nodes, so give it an address of its own",
					a, node, p.loc.line(joinPath(joinPath("nodes", node), "replication")))
				break
			}
		}
	}
	for i, e := range c.NBD {
		h, err := netip.ParseAddr(nbdAddrs[i].host)
		if err != nil {
			continue
		}
		if res, ok := owner[h]; ok && res != e.Resource {
			instead := fmt.Sprintf("0.0.0.0:%d", nbdAddrs[i].port)
			if r := c.Resources[e.Resource]; r != nil && r.ServiceAddress.IsValid() {
				instead = fmt.Sprintf("%s (the service address of %s) or %s", hostPort{host: r.ServiceAddress.Addr().String(), port: nbdAddrs[i].port}, e.Resource, instead)
			}
			p.errorf(joinPath(nbdPaths[i], "listen"), "%s is the service address of resource %s, whose primary may be another node than %s's; listen on %s",
				h, res, e.Resource, instead)
		}
	}
}

// serviceSummary describes r's service address for Summary ("" when none).
func serviceSummary(r *Resource) string {
	if !r.ServiceAddress.IsValid() {
		return ""
	}
	return fmt.Sprintf("  service address %s on %s\n", r.ServiceAddress, describeIfaces(r.ServiceInterface))
}

func describeIfaces(m map[string]string) string {
	if name, same := sameIface(m); same {
		return name
	}
	var parts []string
	for _, node := range sortedKeys(m) {
		parts = append(parts, fmt.Sprintf("%s (%s)", m[node], node))
	}
	return strings.Join(parts, ", ")
}

// sameIface returns the one interface name when every node uses it.
func sameIface(m map[string]string) (string, bool) {
	names := map[string]bool{}
	for _, n := range m {
		names[n] = true
	}
	if len(names) != 1 {
		return "", false
	}
	for n := range names {
		return n, true
	}
	return "", false
}

// marshalService renders service_address and service_interface lines of r
// ("" when it has no service address).
func marshalService(r *Resource) string {
	if !r.ServiceAddress.IsValid() {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "service_address = %s\n", quoteTOML(r.ServiceAddress.String()))
	if name, same := sameIface(r.ServiceInterface); same {
		fmt.Fprintf(&b, "service_interface = %s\n", quoteTOML(name))
		return b.String()
	}
	nodes := sortedKeys(r.ServiceInterface)
	parts := make([]string, len(nodes))
	for i, node := range nodes {
		parts[i] = keySeg(node) + " = " + quoteTOML(r.ServiceInterface[node])
	}
	fmt.Fprintf(&b, "service_interface = { %s }\n", strings.Join(parts, ", "))
	return b.String()
}
