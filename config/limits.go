package config

import (
	"fmt"
	"strings"
	"time"
)

// Defaults of the [limits] table.
const (
	DefaultNBDMemory                 = 256 << 20 // nbd_memory
	MinNBDMemory                     = 32 << 20  // the largest NBD request the server accepts
	DefaultNBDMaxConnections         = 128       // nbd_max_connections, per listen address
	DefaultNBDHandshakeTimeout       = 30 * time.Second
	DefaultNBDRequestTimeout         = 30 * time.Second
	DefaultNBDIdleTimeout            = 0 // never: mounted clients idle between I/O
	DefaultReplicationMaxConnections = 128
	DefaultReplicationAuthTimeout    = 10 * time.Second
	DefaultControlMaxConnections     = 32
	DefaultControlIdleTimeout        = 30 * time.Second
	maxConnectionsLimit              = 65535
)

// Limits is the [limits] table: what the clients of one node may hold. The
// same values apply on every node. Every field is set (Parse applies the
// defaults).
type Limits struct {
	// NBDMemory bounds the payload bytes of NBD requests in memory, over
	// all NBD listeners and connections of the node together.
	NBDMemory int64
	// NBDMaxConnections bounds the connections of each NBD listen address.
	NBDMaxConnections int
	// NBDHandshakeTimeout bounds an NBD connection's handshake.
	NBDHandshakeTimeout time.Duration
	// NBDRequestTimeout bounds the arrival of one NBD request once its
	// first byte is in.
	NBDRequestTimeout time.Duration
	// NBDIdleTimeout closes an NBD connection that sends no request for
	// this long; 0 never does.
	NBDIdleTimeout time.Duration
	// ReplicationMaxConnections bounds the connections of the replication
	// listener.
	ReplicationMaxConnections int
	// ReplicationAuthTimeout bounds a replication connection's
	// authentication.
	ReplicationAuthTimeout time.Duration
	// ControlMaxConnections bounds the connections of the control socket.
	ControlMaxConnections int
	// ControlIdleTimeout closes a control connection idle between requests.
	ControlIdleTimeout time.Duration
	// SyncRate and FetchRate bound the bytes per second a node's full
	// syncs copy and the log it fetches, over all its resources (a sync
	// must not starve the primary's clients of the link); 0: no limit.
	SyncRate, FetchRate int64
}

// MinRate is the smallest sync_rate or fetch_rate accepted.
const MinRate = 64 << 10

// DefaultLimits returns the limits of a file without a [limits] table.
func DefaultLimits() Limits {
	return Limits{
		NBDMemory:                 DefaultNBDMemory,
		NBDMaxConnections:         DefaultNBDMaxConnections,
		NBDHandshakeTimeout:       DefaultNBDHandshakeTimeout,
		NBDRequestTimeout:         DefaultNBDRequestTimeout,
		NBDIdleTimeout:            DefaultNBDIdleTimeout,
		ReplicationMaxConnections: DefaultReplicationMaxConnections,
		ReplicationAuthTimeout:    DefaultReplicationAuthTimeout,
		ControlMaxConnections:     DefaultControlMaxConnections,
		ControlIdleTimeout:        DefaultControlIdleTimeout,
	}
}

// WithDefaults returns l with the default standing in for every zero field
// (as in a Config built without Parse); NBDIdleTimeout's zero is its
// default.
func (l Limits) WithDefaults() Limits {
	d := DefaultLimits()
	orDefault(&l.NBDMemory, d.NBDMemory)
	orDefault(&l.NBDMaxConnections, d.NBDMaxConnections)
	orDefault(&l.NBDHandshakeTimeout, d.NBDHandshakeTimeout)
	orDefault(&l.NBDRequestTimeout, d.NBDRequestTimeout)
	orDefault(&l.ReplicationMaxConnections, d.ReplicationMaxConnections)
	orDefault(&l.ReplicationAuthTimeout, d.ReplicationAuthTimeout)
	orDefault(&l.ControlMaxConnections, d.ControlMaxConnections)
	orDefault(&l.ControlIdleTimeout, d.ControlIdleTimeout)
	return l
}

func orDefault[T int | int64 | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// limits reads the [limits] table m.
func (p *parser) limits(m map[string]any) Limits {
	l := DefaultLimits()
	p.checkKeys(m, "limits", limitKeys, "[limits]")
	if n, ok := p.getSize(m, "limits", "nbd_memory"); ok {
		if n < MinNBDMemory {
			p.errorf("limits.nbd_memory", "%s is less than the largest NBD request (%s); use at least %s (default %s)",
				FormatSize(n), FormatSize(MinNBDMemory), FormatSize(MinNBDMemory), FormatSize(DefaultNBDMemory))
		} else {
			l.NBDMemory = n
		}
	}
	p.connections(m, "nbd_max_connections", &l.NBDMaxConnections)
	p.connections(m, "replication_max_connections", &l.ReplicationMaxConnections)
	p.connections(m, "control_max_connections", &l.ControlMaxConnections)
	p.timeout(m, "nbd_handshake_timeout", &l.NBDHandshakeTimeout, false)
	p.timeout(m, "nbd_request_timeout", &l.NBDRequestTimeout, false)
	p.timeout(m, "nbd_idle_timeout", &l.NBDIdleTimeout, true)
	p.timeout(m, "replication_auth_timeout", &l.ReplicationAuthTimeout, false)
	p.timeout(m, "control_idle_timeout", &l.ControlIdleTimeout, false)
	p.rate(m, "sync_rate", &l.SyncRate)
	p.rate(m, "fetch_rate", &l.FetchRate)
	return l
}

// rate reads a bytes-per-second limit of [limits] into dst (0: none).
func (p *parser) rate(m map[string]any, key string, dst *int64) {
	n, ok := p.getSize(m, "limits", key)
	if !ok {
		return
	}
	if n != 0 && n < MinRate {
		p.errorf(joinPath("limits", key), "%s per second is too little; use at least %s (or 0: no limit), for example: %s", FormatSize(n), FormatSize(MinRate), examples[key])
		return
	}
	*dst = n
}

// connections reads a connection cap of [limits] into dst.
func (p *parser) connections(m map[string]any, key string, dst *int) {
	n, ok := p.getInt(m, "limits", key)
	if !ok {
		return
	}
	if n < 1 || n > maxConnectionsLimit {
		p.errorf(joinPath("limits", key), "%d is out of range; use 1 to %d (default %d)", n, maxConnectionsLimit, *dst)
		return
	}
	*dst = int(n)
}

// timeout reads a duration of [limits] into dst; zero says "never" and is
// accepted only when zeroOK.
func (p *parser) timeout(m map[string]any, key string, dst *time.Duration, zeroOK bool) {
	d, ok := p.getDuration(m, "limits", key)
	if !ok {
		return
	}
	if d == 0 && !zeroOK {
		p.errorf(joinPath("limits", key), "must be more than 0 (default %s); for example: %s", *dst, examples[key])
		return
	}
	*dst = d
}

// getDuration accepts a Go duration string ("30s", "5m", "1h30m") or an
// integer number of seconds.
func (p *parser) getDuration(m map[string]any, path, key string) (time.Duration, bool) {
	v, ok := m[key]
	if !ok {
		return 0, false
	}
	kp := joinPath(path, key)
	switch v := v.(type) {
	case int64:
		if v < 0 || v > int64(maxDuration/time.Second) {
			p.errorf(kp, "%d seconds is out of range; for example: %s", v, examples[key])
			return 0, false
		}
		return time.Duration(v) * time.Second, true
	case string:
		d, err := time.ParseDuration(strings.TrimSpace(v))
		switch {
		case err != nil:
			p.errorf(kp, "%q is not a duration; write a number with a unit (ms, s, m, h), for example: %s", v, examples[key])
			return 0, false
		case d < 0:
			p.errorf(kp, "%q is negative; for example: %s", v, examples[key])
			return 0, false
		case d > maxDuration:
			p.errorf(kp, "%q is too long; use at most %s", v, maxDuration)
			return 0, false
		}
		return d, true
	}
	p.typeErr(path, key, "a duration string or a number of seconds", v)
	return 0, false
}

// maxDuration bounds timeouts: far beyond any useful value, and far from
// overflowing time.Time arithmetic.
const maxDuration = 365 * 24 * time.Hour

// marshal appends the [limits] table, every key written out.
func (l Limits) marshal(b *strings.Builder) {
	b.WriteString("\n[limits]\n")
	fmt.Fprintf(b, "nbd_memory = %s\n", quoteTOML(FormatSize(l.NBDMemory)))
	fmt.Fprintf(b, "nbd_max_connections = %d\n", l.NBDMaxConnections)
	fmt.Fprintf(b, "nbd_handshake_timeout = %s\n", quoteTOML(l.NBDHandshakeTimeout.String()))
	fmt.Fprintf(b, "nbd_request_timeout = %s\n", quoteTOML(l.NBDRequestTimeout.String()))
	fmt.Fprintf(b, "nbd_idle_timeout = %s\n", quoteTOML(l.NBDIdleTimeout.String()))
	fmt.Fprintf(b, "replication_max_connections = %d\n", l.ReplicationMaxConnections)
	fmt.Fprintf(b, "replication_auth_timeout = %s\n", quoteTOML(l.ReplicationAuthTimeout.String()))
	fmt.Fprintf(b, "control_max_connections = %d\n", l.ControlMaxConnections)
	fmt.Fprintf(b, "control_idle_timeout = %s\n", quoteTOML(l.ControlIdleTimeout.String()))
	fmt.Fprintf(b, "sync_rate = %s\n", quoteTOML(FormatSize(l.SyncRate)))
	fmt.Fprintf(b, "fetch_rate = %s\n", quoteTOML(FormatSize(l.FetchRate)))
}

func limitFields(a, b Limits) []string {
	return fieldDiff("nbd_memory", a.NBDMemory, b.NBDMemory, "nbd_max_connections", a.NBDMaxConnections, b.NBDMaxConnections,
		"nbd_handshake_timeout", a.NBDHandshakeTimeout, b.NBDHandshakeTimeout, "nbd_request_timeout", a.NBDRequestTimeout, b.NBDRequestTimeout,
		"nbd_idle_timeout", a.NBDIdleTimeout, b.NBDIdleTimeout,
		"replication_max_connections", a.ReplicationMaxConnections, b.ReplicationMaxConnections,
		"replication_auth_timeout", a.ReplicationAuthTimeout, b.ReplicationAuthTimeout,
		"control_max_connections", a.ControlMaxConnections, b.ControlMaxConnections,
		"control_idle_timeout", a.ControlIdleTimeout, b.ControlIdleTimeout,
		"sync_rate", a.SyncRate, b.SyncRate, "fetch_rate", a.FetchRate, b.FetchRate)
}
