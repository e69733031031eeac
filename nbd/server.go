package nbd

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tharsis/tharsis/blockdev"
)

// Defaults of the Server's limits.
const (
	DefaultMaxPayload       = 32 << 20
	DefaultMaxInflight      = 64 << 20
	DefaultHandshakeTimeout = 30 * time.Second

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
}

// Server serves NBD exports. Set the exported fields before Serve; the zero
// value serves no exports until SetExports is called.
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

	mu        sync.Mutex
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

// lookup returns the export called name, or the first export for the
// empty name.
func (s *Server) lookup(name string) (Export, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
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
		c := newConn(s, nc)
		if !s.trackConn(c, true) {
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
