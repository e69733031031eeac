package replicate

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/tharsis/tharsis/replicate/wire"
)

// statusTimeout bounds one status request.
const statusTimeout = 5 * time.Second

// fetchNodeStatus asks peer p for its status over a fresh connection.
func fetchNodeStatus(ctx context.Context, node string, auth Auth, p Peer) (NodeStatus, error) {
	pc, err := dialPeer(ctx, node, auth, p)
	if err != nil {
		return NodeStatus{}, err
	}
	defer pc.close()
	return pc.status(ctx)
}

func (pc *peerConn) status(ctx context.Context) (NodeStatus, error) {
	m, err := pc.request(ctx, &wire.StatusRequest{}, statusTimeout)
	if err != nil {
		return NodeStatus{}, err
	}
	sm, ok := m.(*wire.Status)
	if !ok {
		return NodeStatus{}, fmt.Errorf("peer %s answered a status request with %s", pc.peer, m.Type())
	}
	var st NodeStatus
	if err := json.Unmarshal(sm.JSON, &st); err != nil {
		return NodeStatus{}, fmt.Errorf("peer %s sent an unreadable status: %w", pc.peer, err)
	}
	return st, nil
}

// ClusterOptions configure NewCluster.
type ClusterOptions struct {
	Node   string // this node's name
	Secret []byte
	TLS    *TLS // see Auth
	// Peers returns every other node of the cluster (called on each poll).
	Peers    func() []Peer
	Interval time.Duration // between polls; 0 means 2 s
	Logger   *slog.Logger
	// OnPoll, if set, is called with the outcome of every poll of a peer.
	OnPoll func(PeerState)
}

// PeerState is the latest that is known of a peer.
type PeerState struct {
	Peer   Peer       `json:"peer"`
	Status NodeStatus `json:"status"`
	// Updated is when Status was received (zero: never); Err is the error
	// of the last poll ("" when it succeeded).
	Updated time.Time `json:"updated,omitzero"`
	Err     string    `json:"error,omitempty"`
	fails   int       // polls failed in a row
}

// peerStartPolls is how many polls in a row a peer that never answered may
// fail before that is a WARN.
const peerStartPolls = 3

// Cluster polls every peer's status and keeps the latest. It keeps one
// authenticated connection per peer and reconnects as needed.
type Cluster struct {
	opts ClusterOptions

	mu    sync.Mutex
	state map[string]*PeerState
	conns map[string]*peerConn
	kick  chan struct{}
}

// NewCluster returns a poller; call Run to start polling.
func NewCluster(opts ClusterOptions) *Cluster {
	if opts.Interval <= 0 {
		opts.Interval = 2 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Peers == nil {
		opts.Peers = func() []Peer { return nil }
	}
	return &Cluster{opts: opts, state: map[string]*PeerState{}, conns: map[string]*peerConn{}, kick: make(chan struct{}, 1)}
}

// Run polls until ctx is done.
func (c *Cluster) Run(ctx context.Context) error {
	defer func() {
		c.mu.Lock()
		for _, pc := range c.conns {
			pc.close()
		}
		clear(c.conns)
		c.mu.Unlock()
	}()
	for {
		c.Poll(ctx)
		t := time.NewTimer(c.opts.Interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		case <-c.kick:
			t.Stop()
		}
	}
}

// Refresh asks Run to poll now.
func (c *Cluster) Refresh() { kick(c.kick) }

// Poll asks every peer for its status once (concurrently) and records the
// answers.
func (c *Cluster) Poll(ctx context.Context) {
	var wg sync.WaitGroup
	peers := c.opts.Peers()
	for _, p := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.pollOne(ctx, p)
		}()
	}
	wg.Wait()
}

func (c *Cluster) pollOne(ctx context.Context, p Peer) {
	c.mu.Lock()
	pc := c.conns[p.Name]
	delete(c.conns, p.Name)
	c.mu.Unlock()
	var st NodeStatus
	var err error
	if pc != nil && pc.peer.Addr == p.Addr {
		st, err = pc.status(ctx)
		if err != nil {
			pc.close()
			pc = nil
		}
	}
	if pc == nil {
		pc, err = dialPeer(ctx, c.opts.Node, Auth{c.opts.Secret, c.opts.TLS}, p)
		if err == nil {
			st, err = pc.status(ctx)
			if err != nil {
				pc.close()
				pc = nil
			}
		}
	}
	c.mu.Lock()
	ps := c.state[p.Name]
	if ps == nil {
		ps = &PeerState{}
		c.state[p.Name] = ps
	}
	ps.Peer = p
	if err != nil {
		ps.fails++
		// A peer that never answered may still be starting (nodes start
		// in any order): INFO first, WARN once it stays silent.
		switch never := ps.Updated.IsZero(); {
		case never && ps.fails == 1:
			c.opts.Logger.Info("a peer does not answer yet (it may still be starting)", "peer", p.String(), "err", err)
		case never && ps.fails == peerStartPolls, !never && ps.Err == "":
			c.opts.Logger.Warn("cannot get the status of a peer", "peer", p.String(), "err", err, "failed_polls", ps.fails)
		}
		ps.Err = err.Error()
	} else {
		switch {
		case ps.Err != "" && ps.Updated.IsZero():
			c.opts.Logger.Info("a peer answers", "peer", p.String(), "failed_polls", ps.fails)
		case ps.Err != "":
			c.opts.Logger.Info("a peer answers again", "peer", p.String(), "failed_polls", ps.fails, "last_err", ps.Err)
		}
		ps.fails = 0
		ps.Status, ps.Updated, ps.Err = st, time.Now(), ""
		if pc != nil {
			if old := c.conns[p.Name]; old != nil {
				old.close()
			}
			c.conns[p.Name] = pc
		}
	}
	out := *ps
	c.mu.Unlock()
	if c.opts.OnPoll != nil {
		c.opts.OnPoll(out)
	}
}

// Peers returns the latest known state of every peer polled, by name.
func (c *Cluster) Peers() map[string]PeerState {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]PeerState, len(c.state))
	for n, ps := range c.state {
		out[n] = *ps
	}
	return out
}

// MinApplied returns the lowest position that every node in members (the
// other nodes that joined resource res) has fetched and replayed, for
// Options.MinAppliedByPeers: a segment is deleted only when all of them are
// past it. A member whose status is unknown, or which does not report the
// resource, holds everything back (the zero Position).
func (c *Cluster) MinApplied(res string, members []string) Position {
	c.mu.Lock()
	defer c.mu.Unlock()
	var low Position
	first := true
	for _, m := range members {
		ps := c.state[m]
		if ps == nil || ps.Updated.IsZero() {
			return Position{}
		}
		rs, ok := ps.Status.Resource(res)
		if !ok {
			return Position{}
		}
		if rs.Phase == PhaseLeft || rs.Diverged {
			// It left, or needs a full sync anyway: nothing to keep for it.
			continue
		}
		p := minPos(rs.Applied, rs.End)
		if first || p.Seq < low.Seq {
			low, first = p, false
		}
	}
	if first {
		return Position{Seq: ^uint64(0) >> 1, Segment: ^uint64(0) >> 1}
	}
	return low
}

// MinAppliedFunc returns MinApplied(res, members()) as a function for
// Options.MinAppliedByPeers.
func (c *Cluster) MinAppliedFunc(res string, members func() []string) func() Position {
	return func() Position { return c.MinApplied(res, members()) }
}
