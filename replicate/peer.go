package replicate

import (
	"context"
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

// dialPeer connects to p and runs the handshake as node with secret.
func dialPeer(ctx context.Context, node string, secret []byte, p Peer) (*peerConn, error) {
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
	c := wire.NewConn(nc)
	name, err := clientHandshake(c, node, secret, p.Addr)
	if err != nil {
		nc.Close()
		return nil, err
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
