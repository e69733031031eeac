// Package netlimit bounds what one listener's clients can hold: the number
// of open connections (a connection over the cap is closed as soon as it is
// accepted) and the time a new connection may take for its handshake.
//
// A Gate counts connections and logs refusals once per burst; servers that
// track their connections themselves (nbd.Server) use it directly. Listener
// wraps a net.Listener with a Gate and the handshake deadline, for servers
// that cannot be changed (replicate.ShipServer, net/http).
package netlimit

import (
	"log/slog"
	"net"
	"sync"
	"time"
)

// Gate admits at most a fixed number of connections at a time. A refusal
// starts a burst: the first refusal logs a warning, and the next admission
// logs how many connections the burst refused, so a flood costs two log
// lines, not one per connection. A Gate is safe for concurrent use.
type Gate struct {
	max  int
	log  *slog.Logger
	what string

	mu      sync.Mutex
	open    int
	refused int // in the current burst
}

// NewGate returns a Gate admitting n connections (at least 1) of what
// (e.g. "nbd 0.0.0.0:10809"), logging to log (nil: slog.Default()).
func NewGate(n int, log *slog.Logger, what string) *Gate {
	if log == nil {
		log = slog.Default()
	}
	return &Gate{max: max(n, 1), log: log, what: what}
}

// Enter admits one connection and returns true, or returns false when max
// connections are open; the caller closes a refused connection at once.
func (g *Gate) Enter() bool {
	g.mu.Lock()
	if g.open >= g.max {
		g.refused++
		first := g.refused == 1
		g.mu.Unlock()
		if first {
			g.log.Warn(g.what+": connection limit reached; closing new connections at once until some close", "max", g.max)
		}
		return false
	}
	g.open++
	refused := g.refused
	g.refused = 0
	g.mu.Unlock()
	if refused > 0 {
		g.log.Info(g.what+": accepting connections again", "refused", refused, "max", g.max)
	}
	return true
}

// Leave gives back the place of a connection admitted by Enter.
func (g *Gate) Leave() {
	g.mu.Lock()
	g.open--
	g.mu.Unlock()
}

// Open returns the number of connections admitted and not yet left.
func (g *Gate) Open() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.open
}

// Max returns the cap.
func (g *Gate) Max() int { return g.max }

// Listener is a net.Listener that closes connections over its Gate's cap as
// soon as they are accepted, and bounds each connection's handshake.
//
// The handshake of a connection lasts from Accept until the server clears
// the connection's deadline with SetDeadline(time.Time{}), which is how
// replicate.ShipServer and nbd.Server end theirs. Until then every deadline
// the server sets is capped at Accept time plus the handshake timeout, and
// a deadline cleared for one direction only stays at that cap; a server
// that never clears its deadline loses its connections after the timeout.
type Listener struct {
	net.Listener
	gate      *Gate
	handshake time.Duration
}

// NewListener wraps l: at most gate.Max() connections are open at once,
// and handshake (0: none) bounds each connection's handshake.
func NewListener(l net.Listener, gate *Gate, handshake time.Duration) *Listener {
	return &Listener{Listener: l, gate: gate, handshake: handshake}
}

// Gate returns the listener's Gate.
func (l *Listener) Gate() *Gate { return l.gate }

// Accept returns the next connection the cap admits; connections over the
// cap are closed without being returned.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		nc, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if !l.gate.Enter() {
			nc.Close()
			continue
		}
		c := &conn{Conn: nc, gate: l.gate}
		if l.handshake > 0 {
			c.hsEnd = time.Now().Add(l.handshake)
			c.inHandshake = true
			nc.SetDeadline(c.hsEnd)
		}
		return c, nil
	}
}

// conn gives its place back to the gate when closed, and caps deadlines
// during the handshake.
type conn struct {
	net.Conn
	gate      *Gate
	closeOnce sync.Once

	mu          sync.Mutex
	inHandshake bool
	hsEnd       time.Time
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(c.gate.Leave)
	return err
}

// capped returns the deadline to set for t during the handshake.
func (c *conn) capped(t time.Time) time.Time {
	if !c.inHandshake || !t.IsZero() && t.Before(c.hsEnd) {
		return t
	}
	return c.hsEnd
}

func (c *conn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.IsZero() {
		c.inHandshake = false // the server's handshake is done
	}
	return c.Conn.SetDeadline(c.capped(t))
}

func (c *conn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.Conn.SetReadDeadline(c.capped(t))
}

func (c *conn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.Conn.SetWriteDeadline(c.capped(t))
}
