package nbd

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tharsis/tharsis/blockdev"
	"github.com/tharsis/tharsis/internal/netlimit"
)

// Defaults of the Server's limits.
const (
	DefaultMaxPayload       = 32 << 20
	DefaultMaxInflight      = 64 << 20
	DefaultHandshakeTimeout = 30 * time.Second
	DefaultRequestTimeout   = 30 * time.Second
	DefaultMaxConns         = 128

	// maxOptionLen bounds the data of one handshake option; longer options
	// are skipped and answered with NBD_REP_ERR_TOO_BIG.
	maxOptionLen = 64 << 10
	// maxOptions bounds the number of options of one handshake.
	maxOptions = 1024
	// maxInflightRequests bounds the requests in flight on one connection,
	// whatever their size.
	maxInflightRequests = 256
	// writeTimeout bounds how long a reply may wait for a client that does
	// not read; after it the connection is dropped.
	writeTimeout = 2 * time.Minute
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("nbd: server closed")

// Export is one named device served over NBD.
type Export struct {
	// Name is what clients ask for (nbd://host/Name). The empty name, which
	// clients use when they name no export, selects the first export.
	Name string
	// Description is shown to clients that ask for it (nbdinfo).
	Description string
	// Device holds the bytes. The server never closes it.
	Device blockdev.Device
	// ReadOnly makes the server advertise NBD_FLAG_READ_ONLY and answer
	// every write, trim and write-zeroes with EPERM.
	ReadOnly bool
	// Stats, when set, counts the export's requests by operation: payload
	// bytes of reads and writes, errors, and the latency from the request's
	// arrival until its reply is sent. Several exports (or servers) may
	// share one; the caller reads it.
	Stats *blockdev.Stats
	// TLS says whether the export is served over TLS; TLS needs the
	// Server's TLS config (SetTLSConfig), without which every export is
	// plain and NBD_OPT_STARTTLS is answered NBD_REP_ERR_UNSUP.
	TLS TLSMode
	// VerifyClient serves the export only to TLS clients that presented a
	// certificate the Server's TLS config verified (ClientAuth
	// VerifyClientCertIfGiven and ClientCAs); others are answered
	// NBD_REP_ERR_POLICY. It implies TLSRequire.
	VerifyClient bool
}

// Server serves NBD exports. Set the exported fields before Serve; the zero
// value serves no exports until SetExports or AddExport is called. The set of
// exports may change while the server runs (SetExports, AddExport, Withdraw).
type Server struct {
	// Logger receives connection events; nil means slog.Default().
	Logger *slog.Logger
	// MaxPayload is the largest READ or WRITE the server accepts and
	// advertises as maximum block size; 0 means DefaultMaxPayload. Values
	// below 4096 are raised to 4096, above 1 GiB lowered to 1 GiB.
	MaxPayload uint32
	// MaxInflight bounds the payload bytes of the requests in flight on one
	// connection; the server stops reading requests while it is spent.
	// 0 means DefaultMaxInflight; it is raised to MaxPayload if smaller.
	MaxInflight int64
	// HandshakeTimeout bounds the handshake of a connection; 0 means
	// DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// Memory bounds the payload bytes in memory across all connections;
	// several Servers may share one. nil means a budget of DefaultMemory
	// for this Server alone.
	Memory *MemoryBudget
	// MaxConns bounds the open connections of the Server (handshake and
	// transmission, over all its listeners): a connection over it is closed
	// as soon as it is accepted, and a burst of refusals is logged once.
	// 0 means DefaultMaxConns.
	MaxConns int
	// RequestTimeout bounds the arrival of one request: once its first
	// byte is in, its header and payload must follow within this time (time
	// spent waiting for Memory or MaxInflight does not count); otherwise
	// the connection is closed. 0 means DefaultRequestTimeout.
	RequestTimeout time.Duration
	// IdleTimeout closes a connection in transmission that sends no request
	// for this long. 0, the default, never closes idle connections: a
	// mounted nbd-client sends nothing while its file system is idle, and
	// TCP keep-alive already finds peers that are gone.
	IdleTimeout time.Duration

	mu        sync.Mutex
	tlsConfig *tls.Config
	gate      *netlimit.Gate // from MaxConns, made by the first Serve
	mem       *MemoryBudget  // Memory, or the Server's own
	exports   []Export
	listeners map[*net.Listener]struct{}
	conns     map[*conn]struct{}
	closing   atomic.Bool
	connWG    sync.WaitGroup
}

// SetExports replaces the set of exports atomically. Connections that are
// already in transmission keep the device they chose; every handshake from
// now on sees the new set. Exports with a nil Device are ignored; of two
// exports with the same name the first wins.
func (s *Server) SetExports(exports []Export) {
	list := make([]Export, 0, len(exports))
	seen := make(map[string]bool, len(exports))
	for _, e := range exports {
		if e.Device == nil || seen[e.Name] {
			continue
		}
		seen[e.Name] = true
		list = append(list, e)
	}
	s.mu.Lock()
	s.exports = list
	s.mu.Unlock()
}

// AddExport adds e to the exports, or replaces the export of the same name
// (keeping its place in the list); the other exports are not touched.
// Connections already in transmission on a replaced export keep the device
// they chose; every handshake from now on sees e. An export with a nil
// Device is ignored.
func (s *Server) AddExport(e Export) {
	if e.Device == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// Build a new slice: exportList hands out s.exports without copying.
	list := make([]Export, 0, len(s.exports)+1)
	replaced := false
	for _, x := range s.exports {
		if x.Name == e.Name {
			x, replaced = e, true
		}
		list = append(list, x)
	}
	if !replaced {
		list = append(list, e)
	}
	s.exports = list
}

// Withdraw removes the exports called names from the server and ends every
// connection that chose one of them: each stops reading requests, answers
// those already read, then closes (as Shutdown does for all connections).
// Connections of other exports and the listeners are not disturbed; a
// handshake after Withdraw no longer sees the names. If ctx ends first, the
// remaining connections of those exports are closed hard and ctx.Err() is
// returned. Withdraw does not close devices.
//
// A connection still in the handshake is ended only if it has chosen a
// withdrawn export (the choice and Withdraw are ordered under the server's
// lock); otherwise its handshake goes on without the names. When Withdraw
// returns nil, no request of those connections is running on a device, so
// the caller may close the devices; after ctx ended, requests stuck in a
// device may still be running. A name that is added again (AddExport) while
// Withdraw waits is served afresh: its new connections are not ended.
func (s *Server) Withdraw(ctx context.Context, names ...string) error {
	if len(names) == 0 {
		return nil
	}
	drop := make(map[string]bool, len(names))
	for _, n := range names {
		drop[n] = true
	}
	var ending []*conn
	s.mu.Lock()
	kept := make([]Export, 0, len(s.exports))
	for _, e := range s.exports {
		if !drop[e.Name] {
			kept = append(kept, e)
		}
	}
	s.exports = kept
	for c := range s.conns {
		if c.hasPick && drop[c.picked] {
			c.beginShutdown()
			ending = append(ending, c)
		}
	}
	s.mu.Unlock()
	if len(ending) > 0 {
		s.logger().Info("nbd: exports withdrawn; ending their connections", "exports", names, "connections", len(ending))
	}

	for i, c := range ending {
		select {
		case <-c.done:
		case <-ctx.Done():
			for _, c := range ending[i:] {
				c.nc.Close()
			}
			return ctx.Err()
		}
	}
	return nil
}

// SetTLSConfig sets the TLS configuration of NBD_OPT_STARTTLS: the server's
// certificate and, to verify client certificates, ClientAuth
// VerifyClientCertIfGiven with ClientCAs. nil turns TLS off. Connections
// accepted from now on use it; those already accepted keep what they had.
func (s *Server) SetTLSConfig(cfg *tls.Config) {
	s.mu.Lock()
	s.tlsConfig = cfg
	s.mu.Unlock()
}

// tlsState returns the TLS configuration and the TLS mode for a new
// connection.
func (s *Server) tlsState() (*tls.Config, connTLS) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tlsConfig, tlsModeOf(s.tlsConfig, s.exports)
}

// lookup returns the export called name, or the first export for the
// empty name.
func (s *Server) lookup(name string) (Export, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lookupLocked(name)
}

// pick is lookup for a connection that is about to choose the export: in
// the same critical section it records the choice in c, so that Withdraw,
// which holds s.mu too, either removed the export before (and pick fails)
// or sees c's choice (and ends c). An export c may not choose (TLS) is
// returned with its refusal and not recorded.
func (s *Server) pick(c *conn, name string) (Export, refusal, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.lookupLocked(name)
	if !ok {
		return e, refusal{}, false
	}
	if r := c.exportRefusal(e); r.typ != 0 {
		return e, r, true
	}
	c.picked, c.hasPick = e.Name, true
	return e, refusal{}, true
}

func (s *Server) lookupLocked(name string) (Export, bool) {
	for _, e := range s.exports {
		if e.Name == name {
			return e, true
		}
	}
	if name == "" && len(s.exports) > 0 {
		return s.exports[0], true
	}
	return Export{}, false
}

// exportList returns a snapshot of the exports.
func (s *Server) exportList() []Export {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.exports
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

func (s *Server) maxPayload() uint32 {
	switch p := s.MaxPayload; {
	case p == 0:
		return DefaultMaxPayload
	case p < 4096:
		return 4096
	case p > 1<<30:
		return 1 << 30
	default:
		return p
	}
}

func (s *Server) maxInflight() int64 {
	n := s.MaxInflight
	if n <= 0 {
		n = DefaultMaxInflight
	}
	return max(n, int64(s.maxPayload()))
}

func (s *Server) handshakeTimeout() time.Duration {
	if s.HandshakeTimeout > 0 {
		return s.HandshakeTimeout
	}
	return DefaultHandshakeTimeout
}

func (s *Server) requestTimeout() time.Duration {
	if s.RequestTimeout > 0 {
		return s.RequestTimeout
	}
	return DefaultRequestTimeout
}

// limits returns the connection gate and the payload budget, making them
// on first use from MaxConns and Memory.
func (s *Server) limits() (*netlimit.Gate, *MemoryBudget) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gate == nil {
		n := s.MaxConns
		if n <= 0 {
			n = DefaultMaxConns
		}
		s.gate = netlimit.NewGate(n, s.logger(), "nbd")
	}
	if s.mem == nil {
		s.mem = s.Memory
		if s.mem == nil {
			s.mem = NewMemoryBudget(DefaultMemory)
		}
	}
	return s.gate, s.mem
}

// Serve accepts connections on l and serves each in its own goroutine. It
// returns ErrServerClosed after Shutdown, or the error that made Accept
// fail for good. Serve closes l before it returns.
func (s *Server) Serve(l net.Listener) error {
	if !s.trackListener(&l, true) {
		l.Close()
		return ErrServerClosed
	}
	defer s.trackListener(&l, false)
	defer l.Close()
	gate, mem := s.limits()

	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.closing.Load() {
				return ErrServerClosed
			}
			var te interface{ Temporary() bool }
			if errors.As(err, &te) && te.Temporary() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.logger().Warn("nbd: accept failed; retrying", "err", err, "retry_in", backoff)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		if !gate.Enter() {
			nc.Close()
			continue
		}
		c := newConn(s, nc, gate, mem)
		if !s.trackConn(c, true) {
			gate.Leave()
			nc.Close()
			return ErrServerClosed
		}
		go c.serve()
	}
}

func (s *Server) trackListener(l *net.Listener, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !add {
		delete(s.listeners, l)
		return true
	}
	if s.closing.Load() {
		return false
	}
	if s.listeners == nil {
		s.listeners = make(map[*net.Listener]struct{})
	}
	s.listeners[l] = struct{}{}
	return true
}

func (s *Server) trackConn(c *conn, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !add {
		delete(s.conns, c)
		return true
	}
	if s.closing.Load() {
		return false
	}
	if s.conns == nil {
		s.conns = make(map[*conn]struct{})
	}
	s.conns[c] = struct{}{}
	s.connWG.Add(1)
	return true
}

// Shutdown stops the server gracefully: it closes the listeners, stops
// reading new requests, lets every request already read finish and be
// answered, then closes the connections. Connections still in the handshake
// are closed at once. If ctx ends first, Shutdown closes the remaining
// connections hard and returns ctx.Err(). Shutdown does not close devices.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing.Store(true)
	for l := range s.listeners {
		(*l).Close()
	}
	for c := range s.conns {
		c.beginShutdown()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.connWG.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.conns {
			c.nc.Close()
		}
		s.mu.Unlock()
		return ctx.Err()
	}
}
