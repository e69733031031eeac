package replicate

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/tharsis/tharsis/replicate/wire"
)

// Peer is another node of the cluster as seen by replication: its node
// name and its replication address (host:port).
type Peer struct {
	Name string `json:"name"`
	Addr string `json:"addr"` // replication address, host:port
}

// String formats the peer for logs.
func (p Peer) String() string { return fmt.Sprintf("%s (%s)", p.Name, p.Addr) }

// dialTimeout bounds connecting and authenticating to a peer.
const dialTimeout = 5 * time.Second

// peerConn is an authenticated connection to a peer.
type peerConn struct {
	nc   net.Conn
	c    *wire.Conn
	peer Peer
}

// Auth is what a node authenticates itself and its peers with: the cluster
// secret, TLS, or both. With TLS, every connection runs TLS 1.3 with mutual
// certificate authentication first and the secret (optional then) is an
// extra proof inside it; without TLS, the secret is required.
type Auth struct {
	Secret []byte // the cluster secret (contents of secret_file), or nil
	TLS    *TLS   // nil: replication in clear text
}

// errNoAuth refuses to run replication with neither a secret nor TLS.
var errNoAuth = errors.New("replication needs a cluster secret (secret_file) or TLS (tls_dir); neither is configured")

func (a Auth) check() error {
	if len(a.Secret) == 0 && a.TLS == nil {
		return errNoAuth
	}
	return nil
}

// dialPeer connects to p and authenticates as node.
func dialPeer(ctx context.Context, node string, auth Auth, p Peer) (*peerConn, error) {
	if err := auth.check(); err != nil {
		return nil, err
	}
	d := net.Dialer{Timeout: dialTimeout}
	nc, err := d.DialContext(ctx, "tcp", p.Addr)
	if err != nil {
		return nil, fmt.Errorf("connect to peer %s: %w", p, err)
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Now()) })
	defer stop()
	nc.SetDeadline(time.Now().Add(dialTimeout))
	certNode := ""
	if auth.TLS != nil {
		tc, err := auth.TLS.client(ctx, nc, p)
		if err != nil {
			nc.Close()
			return nil, err
		}
		certNode = CertNode(tc.ConnectionState().PeerCertificates[0])
		nc = tc
	}
	c := wire.NewConn(nc)
	name, err := clientHandshake(c, node, auth.Secret, p.Addr)
	if err != nil {
		nc.Close()
		return nil, err
	}
	if certNode != "" && name != certNode {
		nc.Close()
		return nil, authErr("peer %s says it is node %q, but its certificate names node %q", p, name, certNode)
	}
	if p.Name != "" && name != p.Name {
		nc.Close()
		return nil, fmt.Errorf("peer at %s says it is node %q, not %q; check the replication addresses in the config", p.Addr, name, p.Name)
	}
	nc.SetDeadline(time.Time{})
	c.Max = wire.MaxFrame
	return &peerConn{nc: nc, c: c, peer: p}, nil
}

// request sends m and returns the answer; an Error answer is returned as
// a *wire.Error error.
func (pc *peerConn) request(ctx context.Context, m wire.Message, timeout time.Duration) (wire.Message, error) {
	stop := context.AfterFunc(ctx, func() { pc.nc.SetDeadline(time.Now()) })
	defer stop()
	pc.nc.SetDeadline(time.Now().Add(timeout))
	defer pc.nc.SetDeadline(time.Time{})
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := pc.c.SendFlush(m); err != nil {
		return nil, fmt.Errorf("send %s to peer %s: %w", m.Type(), pc.peer, err)
	}
	a, err := pc.c.Recv()
	if err != nil {
		return nil, fmt.Errorf("read answer to %s from peer %s: %w", m.Type(), pc.peer, err)
	}
	if e, ok := a.(*wire.Error); ok {
		return nil, &wire.Error{Code: e.Code, Message: e.Message}
	}
	return a, nil
}

func (pc *peerConn) close() { pc.nc.Close() }

func toWire(p Position) wire.Position {
	return wire.Position{Segment: p.Segment, Offset: p.Offset, Seq: p.Seq}
}
func fromWire(p wire.Position) Position {
	return Position{Segment: p.Segment, Offset: p.Offset, Seq: p.Seq}
}
