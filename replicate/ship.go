package replicate

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/tharsis/tharsis/replicate/wire"
)

// ErrServerClosed is returned by ShipServer.Serve after Shutdown.
var ErrServerClosed = errors.New("replicate: ship server closed")

// Limits of the ship server.
const (
	// maxRequestFrame bounds frames a client sends after authentication
	// (requests are small).
	maxRequestFrame = 64 << 10
	// MaxChunkSize bounds the chunk size of checksum and chunk requests.
	MaxChunkSize = 16 << 20
	// maxSumsPerRequest bounds the chunks of one checksum request.
	maxSumsPerRequest = 4096
	// shipBatch is the target size of one SegmentData frame.
	shipBatch = 1 << 20
	// handshakeTimeout bounds the authentication of an accepted connection.
	handshakeTimeout = 10 * time.Second
)

// ShipServer serves the replication protocol on a node's replication
// address: status to every authenticated peer, and for each resource the node
// holds a log of (as primary or secondary) the log stream (Fetch), chunk
// checksums and chunks (full sync). Peers authenticate first: with TLS set,
// a TLS 1.3 handshake with certificates from the cluster CA (everything after
// it is encrypted); with a secret, a mutual HMAC-SHA256 challenge-response
// proving knowledge of the cluster secret (inside TLS when both are set).
// Without TLS nothing is encrypted.
//
// Set the exported fields before Serve; AddResource and RemoveResource may be
// called at any time.
type ShipServer struct {
	Node   string // this node's name
	Secret []byte // the cluster secret (contents of secret_file), or nil with TLS
	// TLS, if set, makes every connection TLS 1.3 with mutual certificate
	// authentication (see TLS); the secret is then an extra check.
	TLS    *TLS
	Logger *slog.Logger
	// OnRole, if set, receives the role messages of authenticated peers
	// (from names the sending node); an error is sent back to the sender.
	OnRole func(from string, m RoleMessage) error

	mu        sync.Mutex
	res       map[string]*shipRes
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	closed    bool
	wg        sync.WaitGroup
	extra     func() []ResourceStatus
	// hsFails tracks failed handshakes per remote host, so each distinct
	// failure is logged once (WARN) and its repeats are counted.
	hsFails map[string]*repeatLog
	// noFetchAccept makes the server act as one of an older release
	// (tests): no features listed, a Fetch with Accept refused as
	// malformed.
	noFetchAccept bool
	// noFetchDesignation makes the server act as one of the release
	// before Fetch.Designation (tests): only fetch-accept listed, a Fetch
	// with a designation refused as malformed.
	noFetchDesignation bool
	// mangle, if set, may change every data frame before it is sent
	// (tests: damage in transit).
	mangle func(wire.Message)
}

// maxHandshakeHosts bounds the hosts whose handshake failures are tracked.
const maxHandshakeHosts = 1024

func hostOf(remote string) string {
	if h, _, err := net.SplitHostPort(remote); err == nil {
		return h
	}
	return remote
}

// handshakeFailed logs a failed handshake (authentication, another
// protocol version, a timeout, a stranger) once per host and failure.
func (s *ShipServer) handshakeFailed(remote string, err error, log *slog.Logger) {
	host := hostOf(remote)
	msg := err.Error()
	if errors.Is(err, wire.ErrVersion) {
		msg = fmt.Sprintf("%v: the peer runs another tharsis version; upgrade the nodes to the same release", err)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		msg = fmt.Sprintf("no handshake within %v (%v)", handshakeTimeout, err)
	}
	s.mu.Lock()
	if s.hsFails == nil {
		s.hsFails = map[string]*repeatLog{}
	}
	r := s.hsFails[host]
	if r == nil && len(s.hsFails) < maxHandshakeHosts {
		r = &repeatLog{}
		s.hsFails[host] = r
	}
	s.mu.Unlock()
	if r == nil || r.changed(stripPort(msg, remote)) {
		log.Warn("replication handshake failed", "err", msg)
	}
}

// handshakeOK ends the failure streak of remote's host, if any.
func (s *ShipServer) handshakeOK(remote string, log *slog.Logger) {
	host := hostOf(remote)
	s.mu.Lock()
	r := s.hsFails[host]
	delete(s.hsFails, host)
	s.mu.Unlock()
	if r != nil {
		if last, n := r.clear(); n > 0 {
			log.Info("replication handshakes succeed again", "failed_before", last, "repeats", n)
		}
	}
}

// stripPort removes remote (host:port, different per connection) from a
// message, so repeats from one host compare equal.
func stripPort(msg, remote string) string { return strings.ReplaceAll(msg, remote, hostOf(remote)) }

type shipRes struct {
	src    Source
	ctx    context.Context // cancelled by RemoveResource
	cancel context.CancelFunc
}

func (s *ShipServer) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// AddResource serves the log and data of resource name from src (replacing
// any previous source of that name: its streams are closed).
func (s *ShipServer) AddResource(name string, src Source) {
	ctx, cancel := context.WithCancel(context.Background())
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.res == nil {
		s.res = map[string]*shipRes{}
	}
	if old := s.res[name]; old != nil {
		old.cancel()
	}
	s.res[name] = &shipRes{src: src, ctx: ctx, cancel: cancel}
}

// RemoveResource stops serving resource name and ends its streams.
func (s *ShipServer) RemoveResource(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.res[name]; r != nil {
		r.cancel()
		delete(s.res, name)
	}
}

func (s *ShipServer) resource(name string) *shipRes {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.res[name]
}

// NodeStatus is the status this server tells peers: every resource served.
func (s *ShipServer) NodeStatus() NodeStatus {
	s.mu.Lock()
	names := make([]string, 0, len(s.res))
	srcs := map[string]Source{}
	for n, r := range s.res {
		names = append(names, n)
		srcs[n] = r.src
	}
	s.mu.Unlock()
	sort.Strings(names)
	st := NodeStatus{Node: s.Node, Time: time.Now(), Resources: []ResourceStatus{}}
	if !s.noFetchAccept {
		st.Features = []string{wire.FeatureFetchAccept}
		if !s.noFetchDesignation {
			st.Features = append(st.Features, wire.FeatureFetchDesignation)
		}
	}
	for _, n := range names {
		rs := srcs[n].Status()
		rs.Resource = n
		st.Resources = append(st.Resources, rs)
	}
	return st
}

// Serve accepts connections on l and serves each in its own goroutine until
// Shutdown; then it returns ErrServerClosed.
func (s *ShipServer) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	if s.listeners == nil {
		s.listeners = map[net.Listener]struct{}{}
		s.conns = map[net.Conn]struct{}{}
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, errTemporaryAccept(err)) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("replication listener %s: %w", l.Addr(), err)
		}
		delay = 0
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			nc.Close()
			return ErrServerClosed
		}
		s.conns[nc] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(nc)
	}
}

// errTemporaryAccept returns err itself for accept errors worth retrying
// (out of file descriptors), nil otherwise.
func errTemporaryAccept(err error) error {
	var se interface{ Temporary() bool }
	if errors.As(err, &se) && se.Temporary() {
		return err
	}
	return nil
}

// Shutdown closes the listeners and every connection (fetch streams end;
// fetchers reconnect elsewhere), then waits for the handlers until ctx is
// done.
func (s *ShipServer) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	for _, r := range s.res {
		r.cancel()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *ShipServer) auth() Auth { return Auth{Secret: s.Secret, TLS: s.TLS} }

func (s *ShipServer) serveConn(nc net.Conn) {
	raw := nc
	remote := nc.RemoteAddr().String()
	log := s.logger().With("peer", remote)
	defer func() {
		if v := recover(); v != nil {
			log.Error("replication connection handler panicked", "panic", v, "stack", string(debug.Stack()))
		}
		nc.Close()
		raw.Close()
		s.mu.Lock()
		delete(s.conns, raw)
		s.mu.Unlock()
		s.wg.Done()
	}()
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	nc.SetDeadline(time.Now().Add(handshakeTimeout))
	auth := s.auth()
	if err := auth.check(); err != nil {
		s.handshakeFailed(remote, err, log)
		return
	}
	certNode := ""
	if auth.TLS != nil {
		tc, name, err := auth.TLS.server(context.Background(), nc, remote)
		if err != nil {
			s.handshakeFailed(remote, err, log)
			return
		}
		nc, certNode = tc, name
	}
	c := wire.NewConn(nc)
	peer, err := serverHandshake(c, s.Node, auth.Secret, remote)
	if err == nil && certNode != "" && peer != certNode {
		err = authErr("peer %s says it is node %q, but its certificate names node %q", remote, peer, certNode)
	}
	if err != nil {
		s.handshakeFailed(remote, err, log)
		return
	}
	s.handshakeOK(remote, log)
	nc.SetDeadline(time.Time{})
	c.Max = maxRequestFrame
	log = log.With("peer_node", peer) // "node" is this node, "peer" its address
	var buf []byte
	for {
		m, err := c.Recv()
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				log.Debug("replication connection ended", "err", err)
			}
			return
		}
		switch m := m.(type) {
		case *wire.StatusRequest:
			b, err := json.Marshal(s.NodeStatus())
			if err != nil {
				b = []byte("{}")
			}
			err = c.SendFlush(&wire.Status{JSON: b})
			if err != nil {
				return
			}
		case *wire.Role:
			var rm RoleMessage
			err := json.Unmarshal(m.JSON, &rm)
			switch {
			case err != nil:
				err = c.SendFlush(&wire.Error{Code: wire.CodeBadRequest, Message: fmt.Sprintf("unreadable role message: %v", err)})
			case rm.From != peer:
				err = c.SendFlush(&wire.Error{Code: wire.CodeBadRequest, Message: fmt.Sprintf("role message from %q on %s's connection", rm.From, peer)})
			case s.OnRole == nil:
				err = c.SendFlush(&wire.Error{Code: wire.CodeNoResource, Message: fmt.Sprintf("node %s takes no role messages", s.Node)})
			default:
				if herr := s.OnRole(peer, rm); herr != nil {
					err = c.SendFlush(&wire.Error{Code: wire.CodeNoResource, Message: herr.Error()})
				} else {
					err = c.SendFlush(&wire.Role{JSON: []byte("{}")})
				}
			}
			if err != nil {
				return
			}
		case *wire.Fetch:
			r := s.resource(m.Resource)
			if r == nil {
				c.SendFlush(&wire.Error{Code: wire.CodeNoResource, Message: fmt.Sprintf("node %s holds no log of resource %q", s.Node, m.Resource)})
				return
			}
			if (s.noFetchAccept || s.noFetchDesignation) && m.Designation != nil || s.noFetchAccept && m.Accept != 0 {
				log.Debug("replication connection ended", "err", "malformed fetch (accept or designation)")
				return
			}
			if err := s.refuseFetch(r, peer, m); err != nil {
				code := wire.CodeDiverged // what fetchers of older releases know
				if errors.Is(err, ErrStaleDesignation) && m.Designation != nil {
					code = wire.CodeStale
				}
				c.SendFlush(&wire.Error{Code: code, Message: fmt.Sprintf("node %s ships no log of %s: %v", s.Node, m.Resource, err)})
				log.Info("log fetch refused", "resource", m.Resource, "why", err)
				return
			}
			var comp *wire.Compressor
			if m.Accept&wire.EncodingZstd.Bit() != 0 && shipCompression(r.src) == CompressZstd {
				comp = wire.NewCompressor()
			}
			attrs := []any{"resource", m.Resource, "from", fromWire(m.From).String(), "compress", comp != nil}
			if tc, ok := nc.(*tls.Conn); ok {
				attrs = append(attrs, "cipher", tls.CipherSuiteName(tc.ConnectionState().CipherSuite))
			}
			log.Info("peer fetches the log", attrs...)
			readDone := make(chan struct{})
			err := s.stream(r, m.Resource, peer, nc, c, fromWire(m.From), comp, readDone)
			var we *wire.Error
			if errors.As(err, &we) {
				c.SendFlush(we)
				lingerClose(nc, readDone)
				if we.Code == wire.CodeCorrupt {
					// Logged once, as ERROR, where the damage was noted.
					log.Debug("log stream refused", "resource", m.Resource, "err", we.Message)
				} else {
					log.Warn("log stream refused", "resource", m.Resource, "err", we.Message)
				}
			} else if err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, context.Canceled) {
				log.Info("log stream ended", "resource", m.Resource, "err", err)
			}
			return
		case *wire.Emergency:
			if err := s.serveEmergency(c, m); err != nil {
				return
			}
		case *wire.ChecksumRequest:
			if buf, err = s.checksums(c, m, buf); err != nil {
				return
			}
		case *wire.ChunkRequest:
			if buf, err = s.chunk(c, m, buf); err != nil {
				return
			}
		default:
			c.SendFlush(&wire.Error{Code: wire.CodeBadRequest, Message: fmt.Sprintf("unexpected %s message", m.Type())})
			return
		}
	}
}

// refuseFetch says why r's log is not shipped to peer (nil: it is): the
// fetcher's designation is newer than this node's, or the source refuses
// anyone (Refuser).
func (s *ShipServer) refuseFetch(r *shipRes, peer string, m *wire.Fetch) error {
	if fc, ok := r.src.(FetchChecker); ok && m.Designation != nil {
		if err := fc.CheckFetch(peer, Designation{Primary: m.Designation.Primary, Generation: m.Designation.Generation}); err != nil {
			return err
		}
	}
	if rf, ok := r.src.(Refuser); ok {
		return rf.Refuse()
	}
	return nil
}

// lingerClose half-closes nc after an error frame and waits (a while) for
// the peer to close its end, read meanwhile by the stream's reader (done):
// closing with the peer's acknowledgements unread would reset the
// connection, and the peer could lose the error frame.
func lingerClose(nc net.Conn, done <-chan struct{}) {
	cw, ok := nc.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return
	}
	t := time.NewTimer(2 * time.Second)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}

// syncDevice finds the device of a checksum or chunk request.
func (s *ShipServer) syncDevice(res string, chunk uint32) (dev interface {
	ReadAt([]byte, int64) (int, error)
	Size() int64
}, werr *wire.Error) {
	r := s.resource(res)
	if r == nil {
		return nil, &wire.Error{Code: wire.CodeNoResource, Message: fmt.Sprintf("node %s holds no resource %q", s.Node, res)}
	}
	if chunk < 4096 || chunk > MaxChunkSize {
		return nil, &wire.Error{Code: wire.CodeBadRequest, Message: fmt.Sprintf("chunk size %d is not within 4 KiB..%d", chunk, MaxChunkSize)}
	}
	if rf, ok := r.src.(Refuser); ok {
		if err := rf.Refuse(); err != nil {
			return nil, &wire.Error{Code: wire.CodeDiverged, Message: fmt.Sprintf("node %s cannot be a sync source of %s: %v", s.Node, res, err)}
		}
	}
	d, _, err := r.src.SyncData()
	if err != nil {
		return nil, &wire.Error{Code: wire.CodeNotConsistent, Message: fmt.Sprintf("node %s cannot be a sync source of %s: %v", s.Node, res, err)}
	}
	return d, nil
}

func (s *ShipServer) checksums(c *wire.Conn, m *wire.ChecksumRequest, buf []byte) ([]byte, error) {
	dev, werr := s.syncDevice(m.Resource, m.ChunkSize)
	if werr == nil && m.Count > maxSumsPerRequest {
		werr = &wire.Error{Code: wire.CodeBadRequest, Message: fmt.Sprintf("%d checksums asked, at most %d per request", m.Count, maxSumsPerRequest)}
	}
	if werr != nil {
		return buf, c.SendFlush(werr)
	}
	size := dev.Size()
	cs := int64(m.ChunkSize)
	if cap(buf) < int(cs) {
		buf = make([]byte, cs)
	}
	sums := make([]byte, 0, int(m.Count)*wire.SumSize)
	for i := uint64(0); i < uint64(m.Count); i++ {
		off := int64(m.First+i) * cs
		if m.First+i > uint64(size/cs+1) || off >= size {
			break
		}
		b := buf[:min(cs, size-off)]
		if _, err := dev.ReadAt(b, off); err != nil {
			return buf, c.SendFlush(&wire.Error{Code: wire.CodeInternal, Message: fmt.Sprintf("read data device of %s at %d: %v", m.Resource, off, err)})
		}
		sum := sha256.Sum256(b)
		sums = append(sums, sum[:wire.SumSize]...)
	}
	return buf, c.SendFlush(&wire.Checksums{First: m.First, Size: size, Sums: sums})
}

func (s *ShipServer) chunk(c *wire.Conn, m *wire.ChunkRequest, buf []byte) ([]byte, error) {
	dev, werr := s.syncDevice(m.Resource, m.ChunkSize)
	if werr != nil {
		return buf, c.SendFlush(werr)
	}
	size, cs := dev.Size(), int64(m.ChunkSize)
	off := int64(m.Index) * cs
	if m.Index > uint64(size/cs) || off >= size {
		return buf, c.SendFlush(&wire.Error{Code: wire.CodeBadRequest, Message: fmt.Sprintf("chunk %d is past the end of the device (%d bytes)", m.Index, size)})
	}
	if cap(buf) < int(cs) {
		buf = make([]byte, cs)
	}
	b := buf[:min(cs, size-off)]
	if _, err := dev.ReadAt(b, off); err != nil {
		return buf, c.SendFlush(&wire.Error{Code: wire.CodeInternal, Message: fmt.Sprintf("read data device of %s at %d: %v", m.Resource, off, err)})
	}
	// Chunk answers are flushed when no further request is waiting, so a
	// pipelining client gets full TCP windows.
	if err := c.Send(&wire.ChunkData{Index: m.Index, Data: b}); err != nil {
		return buf, err
	}
	if c.Buffered() {
		return buf, nil
	}
	return buf, c.Flush()
}
