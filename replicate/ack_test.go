package replicate

import (
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/tharsis/tharsis/internal/testutil"
)

// startAckPrimary starts n as primary with synchronous acknowledgement.
func (n *node) startAckPrimary(ack AckOptions) {
	p, err := OpenPrimary(noClose{n.data}, Options{Dir: n.dir, Node: n.name, Resource: "r0", SegmentSize: 256 << 10, Logger: n.logger(), Ack: ack})
	if err != nil {
		n.t.Fatal(err)
	}
	n.prim = p
	n.srv.AddResource("r0", PrimarySource(p))
	n.t.Cleanup(func() { p.Close() })
}

// startConsistentSecondary starts n as a secondary fetching from peers,
// marked consistent (both disks start zeroed).
func (n *node) startConsistentSecondary(peers ...*node) {
	n.beforeRun = func(s *Secondary) {
		if err := s.FakeSync(); err != nil {
			n.t.Fatal(err)
		}
	}
	n.startSecondary(func() []Peer {
		var ps []Peer
		for _, p := range peers {
			ps = append(ps, p.peer())
		}
		return ps
	}, nil)
}

func ackState(p *Primary) AckState {
	if st := p.Ack(); st != nil {
		return st.State
	}
	return AckOff
}

// TestAckWaitsForSecondary: with ack_secondaries = 1 a write returns only
// once a secondary holds its record durably; it waits while none is there.
func TestAckWaitsForSecondary(t *testing.T) {
	const size = 1 << 20
	a, b := newNode(t, "alpha", size), newNode(t, "beta", size)
	a.startAckPrimary(AckOptions{Secondaries: 1, Timeout: AckForever, Nodes: []string{"beta", "gamma"}})
	done := make(chan error, 1)
	go func() {
		_, err := a.prim.WriteAt(make([]byte, 4096), 0)
		done <- err
	}()
	// The record is durable in the primary's log, and yet the write waits.
	testutil.WaitFor(t, 10*time.Second, "the record to be durable on the primary", func() bool { return a.prim.Status().Written.Seq >= 1 })
	select {
	case err := <-done:
		t.Fatalf("the write returned (%v) with no secondary to acknowledge it", err)
	default:
	}
	b.startConsistentSecondary(a)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the write did not return after the secondary fetched it")
	}
	w := &writer{rng: rand.New(rand.NewPCG(3, 3))}
	for i := range 50 {
		w.write(t, a.prim, 1)
		// One writer: the newest record is the write just acknowledged.
		want := a.prim.Status().Logged.Seq
		if f, _ := b.sec.Positions(); f.Seq < want {
			t.Fatalf("write %d acknowledged at record %d, but beta holds the log only up to %d", i, want, f.Seq)
		}
	}
	if st := a.prim.Ack(); st.State != AckSynchronous || st.Fallbacks != 0 || st.Acked["beta"].Seq == 0 {
		t.Errorf("ack status %+v", st)
	}
}

// TestAckTimeoutFallback: fewer than k secondaries → the write waits for
// ack_timeout, then the primary falls back to asynchronous (logged, in the
// status); a secondary back in step makes it synchronous again.
func TestAckTimeoutFallback(t *testing.T) {
	const size = 1 << 20
	a, b := newNode(t, "alpha", size), newNode(t, "beta", size)
	a.startAckPrimary(AckOptions{Secondaries: 1, Timeout: 200 * time.Millisecond})
	w := &writer{rng: rand.New(rand.NewPCG(4, 4))}
	w.write(t, a.prim, 1) // returns after the timeout
	st := a.prim.Ack()
	if st.State != AckFallback || st.Fallbacks != 1 || st.Timeout != "200ms" {
		t.Fatalf("after a write nobody acknowledged: %+v", st)
	}
	if !strings.Contains(a.logBuf.String(), "FALLBACK to asynchronous") {
		t.Errorf("no WARN about the fallback in the log:\n%s", a.logBuf.String())
	}
	w.write(t, a.prim, 5) // asynchronous: no wait
	b.startConsistentSecondary(a)
	testutil.WaitFor(t, 20*time.Second, "synchronous acknowledgement again", func() bool { return ackState(a.prim) == AckSynchronous })
	if !strings.Contains(a.logBuf.String(), "synchronous acknowledgement again") {
		t.Errorf("no WARN about the return in the log")
	}
	// Back in step: every write waits for beta again.
	for range 10 {
		w.write(t, a.prim, 1)
		if f, _ := b.sec.Positions(); f.Seq < a.prim.Status().Logged.Seq {
			t.Fatalf("acknowledged at %d, beta holds %d", a.prim.Status().Logged.Seq, f.Seq)
		}
	}
	b.stopSecondary()
	w.write(t, a.prim, 1)
	if st := a.prim.Ack(); st.State != AckFallback || st.Fallbacks != 2 {
		t.Errorf("after beta left: %+v", st)
	}
	// Live reload to 0: asynchronous by configuration.
	a.prim.SetAck(AckOptions{})
	if st := a.prim.Ack(); st.State != AckOff {
		t.Errorf("after ack_secondaries = 0: %+v", st)
	}
}

// TestAckCloseReleasesWriters: a write waiting for acknowledgements fails
// (is not acknowledged) when the primary closes.
func TestAckCloseReleasesWriters(t *testing.T) {
	a := newNode(t, "alpha", 1<<20)
	a.startAckPrimary(AckOptions{Secondaries: 1, Timeout: AckForever})
	done := make(chan error, 1)
	go func() {
		_, err := a.prim.WriteAt(make([]byte, 512), 0)
		done <- err
	}()
	testutil.WaitFor(t, 10*time.Second, "the record to be durable", func() bool { return a.prim.Status().Written.Seq >= 1 })
	if err := a.prim.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, errAckClosed) {
		t.Fatalf("write returned %v, want %v", err, errAckClosed)
	}
}

// TestAckCounting: only the named nodes count, each with its best
// acknowledgement, and k of them must hold a record.
func TestAckCounting(t *testing.T) {
	a := newAcks(AckOptions{Secondaries: 2, Timeout: AckForever, Nodes: []string{"b", "c", "d"}}, testLogger(t))
	a.note("b", Position{Seq: 10})
	a.note("x", Position{Seq: 50}) // not a member
	a.note("c", Position{Seq: 7})
	a.note("b", Position{Seq: 3}) // older: ignored
	a.mu.Lock()
	got := a.kth(2)
	a.mu.Unlock()
	if got != 7 {
		t.Errorf("kth(2) = %d, want 7", got)
	}
	var b ackBound
	if b.covers(Position{Segment: 1, Offset: 10}) {
		t.Error("an acknowledgement counts before anything was shipped")
	}
	b.set(Position{Segment: 2, Offset: 100})
	for p, want := range map[Position]bool{{Segment: 1, Offset: 1 << 20}: true, {Segment: 2, Offset: 100}: true, {Segment: 2, Offset: 101}: false, {Segment: 3}: false} {
		if b.covers(p) != want {
			t.Errorf("covers(%v) = %v", p, !want)
		}
	}
}
