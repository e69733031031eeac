package replicate

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"
)

// Synchronous acknowledgement (TOML ack_secondaries, ack_timeout; README
// "Synchronous acknowledgement"): with AckOptions.Secondaries = k > 0 a
// write, trim or resize of the Primary returns only once its record is
// durable in the primary's log and in the logs of at least k secondaries
// that fetch directly from it (DRBD's protocol C). A fetching secondary
// reports its durable fetched end on the fetch stream (wire.Ack) after each
// fdatasync; the ship server hands it to the primary (AckSink). A write that
// waits longer than Timeout makes the primary fall back to asynchronous:
// every write returns without waiting until k secondaries hold everything
// acknowledged meanwhile, then it is synchronous again. Both switches are
// logged (WARN) and shown in Status.

// DefaultAckTimeout is the ack_timeout of a resource that sets none.
const DefaultAckTimeout = 10 * time.Second

// AckForever as AckOptions.Timeout: a write waits for its k
// acknowledgements however long it takes (ack_timeout = "forever"); the
// primary never falls back to asynchronous.
const AckForever time.Duration = -1

// AckOptions configure synchronous acknowledgement (Options.Ack).
type AckOptions struct {
	// Secondaries is k: a write returns once k secondaries have its record
	// durable in their logs. 0: asynchronous (the default).
	Secondaries int
	// Timeout is how long a write waits for its k acknowledgements before
	// the primary falls back to asynchronous; AckForever: never; 0:
	// DefaultAckTimeout.
	Timeout time.Duration
	// Nodes are the nodes whose acknowledgements count (the other nodes
	// holding the resource); nil: any authenticated fetcher.
	Nodes []string
}

// AckState is where synchronous acknowledgement stands.
type AckState string

// Ack states.
const (
	AckOff         AckState = ""            // ack_secondaries = 0: asynchronous by configuration
	AckSynchronous AckState = "synchronous" // writes wait for k secondaries
	AckFallback    AckState = "fallback"    // fell back to asynchronous after ack_timeout
)

// AckStatus describes synchronous acknowledgement for `tharsis view`, and
// tells secondaries what the primary promises (role core: primary --force).
type AckStatus struct {
	Secondaries int      `json:"secondaries"`
	Timeout     string   `json:"timeout"` // a duration, or "forever"
	State       AckState `json:"state"`
	// Since is when the state was entered (fallback: when it fell back).
	Since time.Time `json:"since,omitzero"`
	// Fallbacks counts the falls back to asynchronous since the primary
	// opened.
	Fallbacks uint64 `json:"fallbacks"`
	// Acked is every counted secondary's durable end as it last
	// acknowledged it, by node.
	Acked map[string]Position `json:"acked,omitempty"`
}

// AckSink takes acknowledgements of fetching peers (a primary's Source).
type AckSink interface {
	// NoteAck records that node's log is durable up to pos.
	NoteAck(node string, pos Position)
}

var errAckClosed = errors.New("the primary closed before enough secondaries acknowledged the write")

// acks counts acknowledgements and holds writers back until they have k.
type acks struct {
	logger *slog.Logger

	mu        sync.Mutex
	opts      AckOptions
	nodes     map[string]Position
	ch        chan struct{} // closed and replaced when acks or the state change
	fallback  bool
	since     time.Time
	maxAsync  uint64 // highest record acknowledged while in fallback
	fallbacks uint64
	closed    bool
}

func newAcks(opts AckOptions, logger *slog.Logger) *acks {
	a := &acks{logger: logger, nodes: map[string]Position{}, ch: make(chan struct{}), since: time.Now()}
	a.opts = normAck(opts)
	return a
}

func normAck(o AckOptions) AckOptions {
	if o.Timeout == 0 {
		o.Timeout = DefaultAckTimeout
	}
	o.Nodes = slices.Clone(o.Nodes)
	return o
}

// set changes the options (live reload). A write waiting already keeps
// its deadline but counts with the new k.
func (a *acks) set(opts AckOptions) {
	a.mu.Lock()
	defer a.mu.Unlock()
	old := a.opts
	a.opts = normAck(opts)
	if old.Secondaries != a.opts.Secondaries || old.Timeout != a.opts.Timeout {
		a.logger.Info("synchronous acknowledgement changed", "ack_secondaries", a.opts.Secondaries, "ack_timeout", timeoutText(a.opts.Timeout))
	}
	if a.opts.Secondaries == 0 && a.fallback {
		a.fallback, a.since = false, time.Now()
	}
	a.maybeLeaveLocked()
	a.wakeLocked()
}

func (a *acks) wakeLocked() {
	close(a.ch)
	a.ch = make(chan struct{})
}

// enabled reports whether writes wait for acknowledgements at all.
func (a *acks) enabled() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.opts.Secondaries > 0
}

// counts reports whether node's acknowledgements count. Call with mu held.
func (a *acks) counts(node string) bool {
	return a.opts.Nodes == nil || slices.Contains(a.opts.Nodes, node)
}

// note records node's acknowledgement of its durable end pos.
func (a *acks) note(node string, pos Position) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.counts(node) || pos.Seq <= a.nodes[node].Seq {
		return
	}
	a.nodes[node] = pos
	a.maybeLeaveLocked()
	a.wakeLocked()
}

// kth returns the record up to which at least k counted secondaries hold
// the log (0 when fewer than k acknowledged anything). Call with mu held.
func (a *acks) kth(k int) uint64 {
	seqs := make([]uint64, 0, len(a.nodes))
	for n, p := range a.nodes {
		if a.counts(n) {
			seqs = append(seqs, p.Seq)
		}
	}
	if k <= 0 || len(seqs) < k {
		return 0
	}
	slices.Sort(seqs)
	return seqs[len(seqs)-k]
}

// maybeLeaveLocked returns to synchronous once k secondaries hold every
// record acknowledged during the fallback.
func (a *acks) maybeLeaveLocked() {
	if !a.fallback || a.opts.Secondaries == 0 || a.kth(a.opts.Secondaries) < a.maxAsync {
		return
	}
	a.fallback, a.since = false, time.Now()
	a.logger.Warn("synchronous acknowledgement again: enough secondaries hold every acknowledged write",
		"ack_secondaries", a.opts.Secondaries, "acked_up_to", a.maxAsync)
}

// wait returns once k secondaries acknowledged record seq (which the
// caller made durable in the local log first: only the durable log is
// shipped), at once when k is 0 or the primary has fallen back to
// asynchronous, or with an error when the primary closes meanwhile. A wait
// longer than the timeout makes the primary fall back.
func (a *acks) wait(seq uint64) error {
	var deadline <-chan time.Time
	for {
		a.mu.Lock()
		switch {
		case a.closed:
			a.mu.Unlock()
			return errAckClosed
		case a.opts.Secondaries == 0 || a.kth(a.opts.Secondaries) >= seq:
			a.mu.Unlock()
			return nil
		case a.fallback:
			a.maxAsync = max(a.maxAsync, seq)
			a.mu.Unlock()
			return nil
		}
		ch, timeout := a.ch, a.opts.Timeout
		a.mu.Unlock()
		if deadline == nil && timeout != AckForever {
			t := time.NewTimer(timeout)
			defer t.Stop()
			deadline = t.C
		}
		select {
		case <-ch:
		case <-deadline:
			a.enterFallback(seq)
		}
	}
}

// enterFallback makes the primary asynchronous: a write waited for record
// seq longer than the timeout.
func (a *acks) enterFallback(seq uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.fallback || a.closed || a.opts.Secondaries == 0 || a.kth(a.opts.Secondaries) >= seq {
		return
	}
	a.fallback, a.since = true, time.Now()
	a.fallbacks++
	a.logger.Warn("FALLBACK to asynchronous acknowledgement: fewer secondaries than ack_secondaries acknowledged a write within ack_timeout; writes are acknowledged without them until they catch up (see `tharsis view`)",
		"ack_secondaries", a.opts.Secondaries, "ack_timeout", timeoutText(a.opts.Timeout), "record", seq, "acked", a.ackedText())
	a.wakeLocked()
}

// ackedText lists the counted acknowledgements for the log. Call with mu
// held.
func (a *acks) ackedText() string {
	s := ""
	for _, n := range slices.Sorted(maps.Keys(a.nodes)) {
		if a.counts(n) {
			s += fmt.Sprintf("%s@%d ", n, a.nodes[n].Seq)
		}
	}
	if s == "" {
		return "none"
	}
	return s[:len(s)-1]
}

// close releases every waiting writer with an error (the write is not
// acknowledged).
func (a *acks) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closed = true
	a.wakeLocked()
}

// status reports the state for view; nil when k is 0 and it never was
// anything else.
func (a *acks) status() *AckStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.opts.Secondaries == 0 && a.fallbacks == 0 && len(a.nodes) == 0 {
		return nil
	}
	st := &AckStatus{Secondaries: a.opts.Secondaries, Timeout: timeoutText(a.opts.Timeout), Since: a.since, Fallbacks: a.fallbacks}
	switch {
	case a.opts.Secondaries == 0:
		st.State = AckOff
	case a.fallback:
		st.State = AckFallback
	default:
		st.State = AckSynchronous
	}
	for n, p := range a.nodes {
		if a.counts(n) {
			if st.Acked == nil {
				st.Acked = map[string]Position{}
			}
			st.Acked[n] = p
		}
	}
	return st
}

// timeoutText formats an ack timeout as TOML spells it.
func timeoutText(d time.Duration) string {
	if d == AckForever {
		return "forever"
	}
	return d.String()
}

// waitAcks is the acknowledgement path's wait for synchronous
// acknowledgement: with ack_secondaries > 0 it makes record seq durable in
// the local log (only the durable log is shipped) and waits for k
// secondaries to hold it (acks.wait).
func (p *Primary) waitAcks(seq uint64) error {
	if !p.acks.enabled() {
		return nil
	}
	if err := p.w.waitDurable(seq); err != nil {
		return err
	}
	return p.acks.wait(seq)
}

// SetAck changes synchronous acknowledgement while the primary runs (live
// reload of ack_secondaries and ack_timeout).
func (p *Primary) SetAck(opts AckOptions) { p.acks.set(opts) }

// Ack reports synchronous acknowledgement (nil when never enabled).
func (p *Primary) Ack() *AckStatus { return p.acks.status() }

// NoteAck implements AckSink.
func (s *primarySource) NoteAck(node string, pos Position) { s.p.acks.note(node, pos) }
