package replicate

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tharsis/tharsis/blockdev"
	"github.com/tharsis/tharsis/internal/testutil"
)

var testSecret = []byte("cluster secret for tests")

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("THARSIS_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

// node is one in-process node of a test cluster: a ship server on a
// loopback port and either a Primary or a Secondary.
type node struct {
	t    testing.TB
	name string
	addr string
	dir  string
	data *blockdev.Memory
	srv  *ShipServer
	l    net.Listener

	prim   *Primary
	sec    *Secondary
	cancel context.CancelFunc
	done   chan error
	peers  func() []Peer
	logBuf *lockedBuffer
	// tls, if set before listen, is the node's TLS identity (server and
	// secondary).
	tls *TLS
	// beforeRun, if set, is called between OpenSecondary and Run.
	beforeRun func(*Secondary)
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newNode(t testing.TB, name string, size int64) *node {
	n := &node{t: t, name: name, dir: filepath.Join(t.TempDir(), name), data: blockdev.NewMemory(size), logBuf: &lockedBuffer{}}
	n.listen(testSecret)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log of node %s:\n%s", name, n.logBuf.String())
		}
	})
	return n
}

func (n *node) logger() *slog.Logger {
	h := slog.NewTextHandler(n.logBuf, nil)
	if os.Getenv("THARSIS_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", n.name)
	}
	return slog.New(h).With("node", n.name)
}

func (n *node) listen(secret []byte) {
	addr := n.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var l net.Listener
	var err error
	deadline := time.Now().Add(5 * time.Second)
	for {
		l, err = net.Listen("tcp", addr)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond) // the old listener's port is being released
	}
	if err != nil {
		n.t.Fatal(err)
	}
	if n.addr == "" {
		n.addr = l.Addr().String() // kept across restarts (peers read it)
	}
	n.l = l
	n.srv = &ShipServer{Node: n.name, Secret: secret, TLS: n.tls, Logger: n.logger()}
	go n.srv.Serve(l)
	n.t.Cleanup(func() { n.srv.Shutdown(context.Background()) })
}

// stopServer shuts the node's ship server down (the node is unreachable).
func (n *node) stopServer() {
	n.srv.Shutdown(context.Background())
}

func (n *node) peer() Peer { return Peer{Name: n.name, Addr: n.addr} }

func (n *node) startPrimary(segSize int64) {
	p, err := OpenPrimary(noClose{n.data}, Options{Dir: n.dir, Node: n.name, Resource: "r0", SegmentSize: segSize, Logger: n.logger()})
	if err != nil {
		n.t.Fatal(err)
	}
	n.prim = p
	n.srv.AddResource("r0", PrimarySource(p))
	n.t.Cleanup(func() { p.Close() })
}

func (n *node) startSecondary(peers func() []Peer, mod func(*SecondaryOptions)) {
	n.startSecondaryOn(noClose{n.data}, peers, mod)
}

// startSecondaryOn starts the node's secondary on dev (a view of n.data).
func (n *node) startSecondaryOn(dev blockdev.Device, peers func() []Peer, mod func(*SecondaryOptions)) {
	n.peers = peers
	opts := SecondaryOptions{Dir: n.dir, Node: n.name, Resource: "r0", Secret: n.srv.Secret, TLS: n.tls, Peers: peers, Logger: n.logger(),
		RetryInterval: 50 * time.Millisecond, CheckpointInterval: 50 * time.Millisecond, ChunkSize: 64 << 10}
	if mod != nil {
		mod(&opts)
	}
	s, err := OpenSecondary(dev, opts)
	if err != nil {
		n.t.Fatal(err)
	}
	n.sec = s
	if n.beforeRun != nil {
		n.beforeRun(s)
	}
	n.srv.AddResource("r0", s.Source())
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	n.done = make(chan error, 1)
	go func() { n.done <- s.Run(ctx) }()
	n.t.Cleanup(n.stopSecondary)
}

// stopSecondary shuts the secondary down cleanly.
func (n *node) stopSecondary() {
	if n.sec == nil {
		return
	}
	n.cancel()
	select {
	case <-n.done:
	case <-time.After(10 * time.Second):
		n.t.Errorf("secondary %s did not stop", n.name)
	}
	n.srv.RemoveResource("r0")
	n.sec.Close()
	n.sec = nil
}

// crashSecondary stops the secondary as kill -9 would: no final
// checkpoint.
func (n *node) crashSecondary() {
	n.sec.mu.Lock()
	n.sec.crashed = true
	n.sec.mu.Unlock()
	n.stopSecondary()
}

// noClose keeps a memory device usable across a close (a disk survives
// the process).
type noClose struct{ blockdev.Device }

func (noClose) Close() error { return nil }

// Resize passes a resize on to the device.
func (n noClose) Resize(size int64) error { return n.Device.(blockdev.Resizer).Resize(size) }

// caughtUp reports whether sec has fetched and replayed the primary's
// whole log and is consistent.
func caughtUp(prim *Primary, sec *Secondary) bool {
	end := prim.Status().Logged
	f, r := sec.Positions()
	return sec.Consistent() && f.Seq >= end.Seq && r.Seq >= end.Seq
}

func waitCaughtUp(t testing.TB, prim *Primary, secs ...*node) {
	t.Helper()
	for _, s := range secs {
		testutil.WaitFor(t, 20*time.Second, "secondary "+s.name+" to catch up", func() bool { return caughtUp(prim, s.sec) })
	}
}

func sameData(t testing.TB, a, b *node) {
	t.Helper()
	ab, bb := make([]byte, a.data.Size()), make([]byte, b.data.Size())
	if a.prim != nil {
		a.prim.drain() // the primary's data device holds what is acknowledged
	}
	a.data.ReadAt(ab, 0)
	b.data.ReadAt(bb, 0)
	if !bytes.Equal(ab, bb) {
		for i := range ab {
			if ab[i] != bb[i] {
				t.Fatalf("data of %s and %s differ, first at byte %d: %x vs %x; %s", a.name, b.name, i, ab[i:i+8], bb[i:i+8], debugDescribe(int64(i)))
			}
		}
	}
}

// writer writes random data through the primary and records each
// acknowledged write.
type writer struct {
	mu   sync.Mutex
	hist []histEntry
	rng  *rand.Rand
}

type histEntry struct {
	off  int64
	data []byte // nil: trim
	n    int64
}

func (w *writer) write(t testing.TB, p *Primary, n int) {
	t.Helper()
	size := p.Size()
	for range n {
		w.mu.Lock()
		l := int64(512 * (1 + w.rng.IntN(64)))
		off := w.rng.Int64N(size-l) / 512 * 512
		trim := w.rng.IntN(10) == 0
		var b []byte
		if !trim {
			b = make([]byte, l)
			for i := range b {
				b[i] = byte(w.rng.Uint32())
			}
		}
		w.mu.Unlock()
		var err error
		if trim {
			err = p.Trim(off, l)
		} else {
			_, err = p.WriteAt(b, off)
		}
		if err != nil {
			t.Fatal(err)
		}
		w.mu.Lock()
		w.hist = append(w.hist, histEntry{off: off, data: b, n: l})
		w.mu.Unlock()
	}
}

var debugDescribe = func(int64) string { return "" }

func TestReplicateTwoSecondaries(t *testing.T) {
	const size = 4 << 20
	a, b, c := newNode(t, "alpha", size), newNode(t, "beta", size), newNode(t, "gamma", size)
	a.startPrimary(256 << 10)
	w := &writer{rng: rand.New(rand.NewPCG(1, 2))}
	debugDescribe = w.describe
	w.write(t, a.prim, 200) // history before the secondaries join
	peersA := func() []Peer { return []Peer{a.peer()} }
	b.startSecondary(peersA, nil)
	c.startSecondary(peersA, nil)
	w.write(t, a.prim, 300)
	waitCaughtUp(t, a.prim, b, c)
	sameData(t, a, b)
	sameData(t, a, c)
	st := b.sec.Status()
	if st.Source != "alpha" || !st.Consistent || st.Role != RoleSecondary || st.LagBytes != 0 {
		t.Errorf("status of beta: %+v", st)
	}
	// The live tail reaches them with low latency.
	start := time.Now()
	before := a.prim.Status().Written
	w.write(t, a.prim, 1)
	t.Logf("written before %v after %v", before, a.prim.Status().Written)
	waitCaughtUp(t, a.prim, b, c)
	t.Logf("one write reached both secondaries in %v", time.Since(start))
	f, r := b.sec.Positions()
	t.Logf("primary %v beta fetched %v replayed %v; last write %+v", a.prim.Status().Written, f, r, w.describe(457728))
	sameData(t, a, b)
}

func (w *writer) describe(off int64) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := ""
	for i, h := range w.hist {
		if off >= h.off && off < h.off+h.n {
			s += fmt.Sprintf(" #%d[%d,+%d trim=%v %x]", i, h.off, h.n, h.data == nil, h.data[off-h.off:off-h.off+8])
		}
	}
	return s
}

// restartServer brings a node's ship server back on the same address.
func (n *node) restartServer() {
	n.listen(testSecret)
	if n.prim != nil {
		n.srv.AddResource("r0", PrimarySource(n.prim))
	}
	if n.sec != nil {
		n.srv.AddResource("r0", n.sec.Source())
	}
}

func TestPriorityFallbackReturnAndCascade(t *testing.T) {
	const size = 2 << 20
	a, b, c := newNode(t, "alpha", size), newNode(t, "beta", size), newNode(t, "gamma", size)
	a.startPrimary(128 << 10)
	w := &writer{rng: rand.New(rand.NewPCG(5, 6))}
	w.write(t, a.prim, 50)
	b.startSecondary(func() []Peer { return []Peer{a.peer()} }, nil)
	// gamma prefers beta (cascading) and falls back to alpha.
	c.startSecondary(func() []Peer { return []Peer{b.peer(), a.peer()} }, nil)
	w.write(t, a.prim, 50)
	waitCaughtUp(t, a.prim, b, c)
	testutil.WaitFor(t, 10*time.Second, "gamma to fetch from beta", func() bool { return c.sec.Status().Source == "beta" })
	sameData(t, a, c)

	// beta goes away: gamma falls back to alpha.
	b.stopServer()
	w.write(t, a.prim, 50)
	waitCaughtUp(t, a.prim, c)
	if src := c.sec.Status().Source; src != "alpha" {
		t.Errorf("gamma fetches from %q after beta went away, want alpha", src)
	}
	sameData(t, a, c)

	// beta is back: gamma returns to it.
	b.restartServer()
	w.write(t, a.prim, 50)
	testutil.WaitFor(t, 10*time.Second, "gamma to return to beta", func() bool { return c.sec.Status().Source == "beta" })
	w.write(t, a.prim, 20)
	waitCaughtUp(t, a.prim, b, c)
	sameData(t, a, b)
	sameData(t, a, c)
}

func TestSecondaryCrashMidReplay(t *testing.T) {
	const size = 4 << 20
	a, b := newNode(t, "alpha", size), newNode(t, "beta", size)
	a.startPrimary(256 << 10)
	peers := func() []Peer { return []Peer{a.peer()} }
	b.startSecondary(peers, nil)
	w := &writer{rng: rand.New(rand.NewPCG(7, 8))}
	w.write(t, a.prim, 20)
	waitCaughtUp(t, a.prim, b)
	for cycle := range 3 {
		// Fetch a backlog with replay paused, then crash while it replays.
		b.sec.SetReplayPaused(true)
		w.write(t, a.prim, 300)
		testutil.WaitFor(t, 10*time.Second, "beta to fetch the backlog", func() bool {
			f, _ := b.sec.Positions()
			return f.Seq >= a.prim.Status().Logged.Seq
		})
		_, r0 := b.sec.Positions()
		b.sec.SetReplayPaused(false)
		testutil.WaitFor(t, 10*time.Second, "beta to start replaying", func() bool {
			_, r := b.sec.Positions()
			return r.Seq > r0.Seq
		})
		b.crashSecondary()
		persisted, err := ReadApplied(OSFS{}, b.dir)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("cycle %d: crashed; persisted replay position %v", cycle, persisted)
		b.startSecondary(peers, nil)
		w.write(t, a.prim, 10)
		waitCaughtUp(t, a.prim, b)
		sameData(t, a, b)
	}
}

func TestPrimaryCrashMidStream(t *testing.T) {
	const size = 4 << 20
	a, b := newNode(t, "alpha", size), newNode(t, "beta", size)
	a.startPrimary(256 << 10)
	b.startSecondary(func() []Peer { return []Peer{a.peer()} }, nil)
	w := &writer{rng: rand.New(rand.NewPCG(9, 10))}
	for cycle := range 3 {
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				// Writes fail once the primary is gone.
				if err := func() (err error) {
					defer func() {
						if recover() != nil {
							err = errClosed
						}
					}()
					w.mu.Lock()
					off := w.rng.Int64N(size/512-64) * 512
					b := make([]byte, 512*(1+w.rng.IntN(63)))
					for i := range b {
						b[i] = byte(w.rng.Uint32())
					}
					w.mu.Unlock()
					_, err = a.prim.WriteAt(b, off)
					return err
				}(); err != nil {
					return
				}
			}
		}()
		testutil.WaitFor(t, 10*time.Second, "beta to receive some of the stream", func() bool {
			f, _ := b.sec.Positions()
			return f.Seq > a.prim.Status().Written.Seq/2 && f.Seq > 0
		})
		// kill -9 of the primary: no checkpoint, segment left unsealed.
		a.stopServer()
		a.prim.crash()
		<-done
		p, err := OpenPrimary(noClose{a.data}, Options{Dir: a.dir, Node: "alpha", Resource: "r0", SegmentSize: 256 << 10})
		if err != nil {
			t.Fatalf("cycle %d: reopen primary: %v", cycle, err)
		}
		a.prim = p
		t.Cleanup(func() { p.Close() })
		a.restartServer()
		w.write(t, a.prim, 10)
		waitCaughtUp(t, a.prim, b)
		sameData(t, a, b)
	}
}

// Fast full sync: a joining node whose disk differs from the primary in
// about 1 % of its chunks transfers about 1 % of the bytes.
func TestJoinSyncTransfersDifferingChunks(t *testing.T) {
	const size = 32 << 20
	const chunk = 64 << 10
	a, b := newNode(t, "alpha", size), newNode(t, "beta", size)
	rng := rand.New(rand.NewPCG(11, 12))
	buf := make([]byte, size)
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	a.data.WriteAt(buf, 0)
	a.startPrimary(1 << 20)
	w := &writer{rng: rand.New(rand.NewPCG(13, 14))}
	w.write(t, a.prim, 20)
	// beta's disk: the same but 5 chunks of 512 (≈1 %).
	a.prim.ReadAt(buf, 0)
	for _, c := range []int64{3, 100, 101, 300, 511} {
		for i := c * chunk; i < c*chunk+chunk; i += 4096 {
			buf[i] ^= 0xff
		}
	}
	b.data.WriteAt(buf, 0)
	b.startSecondary(func() []Peer { return []Peer{a.peer()} }, func(o *SecondaryOptions) { o.ChunkSize = chunk })
	if b.sec.Consistent() {
		t.Fatal("a fresh secondary says it is consistent")
	}
	waitCaughtUp(t, a.prim, b)
	sameData(t, a, b)
	st := b.sec.Status()
	if st.LastSync == nil {
		t.Fatalf("no sync outcome in the status: %+v", st)
	}
	ls := st.LastSync
	t.Logf("sync compared %d bytes, transferred %d (%.2f%%)", ls.Compared, ls.Transferred, 100*float64(ls.Transferred)/float64(size))
	if ls.Compared != size || ls.Transferred != 5*chunk {
		t.Errorf("sync compared %d, transferred %d bytes; want %d compared and about %d transferred", ls.Compared, ls.Transferred, size, 5*chunk)
	}
	// Invalidate forces another sync, which now transfers (almost) nothing.
	if err := b.sec.Invalidate(); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 20*time.Second, "the second sync", func() bool {
		st := b.sec.Status()
		return st.Consistent && st.LastSync != nil && !st.LastSync.Started.Equal(ls.Started)
	})
	w.write(t, a.prim, 5)
	waitCaughtUp(t, a.prim, b)
	sameData(t, a, b)
	if tr := b.sec.Status().LastSync.Transferred; tr > 2*chunk {
		t.Errorf("second sync transferred %d bytes of identical disks", tr)
	}
}

// The consistency promise: at any moment (between two applied records) a
// consistent secondary's data equals the primary's state after some prefix
// of the acknowledged writes.
func TestSecondaryPrefixProperty(t *testing.T) {
	const size = 1 << 20
	a, b := newNode(t, "alpha", size), newNode(t, "beta", size)
	a.startPrimary(64 << 10)
	b.startSecondary(func() []Peer { return []Peer{a.peer()} }, nil)
	if err := b.sec.FakeSync(); err != nil { // both start zeroed
		t.Fatal(err)
	}
	w := &writer{rng: rand.New(rand.NewPCG(15, 16))}
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.write(t, a.prim, 1500)
	}()
	img := make([]byte, size)
	model := make([]byte, size)
	checks, matched := 0, 0
	deadline := time.Now().Add(30 * time.Second)
	for finished := false; !finished && time.Now().Before(deadline); {
		select {
		case <-done:
			finished = true
		default:
		}
		b.sec.applyMu.Lock()
		b.data.ReadAt(img, 0)
		b.sec.applyMu.Unlock()
		w.mu.Lock()
		hist := w.hist
		w.mu.Unlock()
		// Find the prefix: apply the history step by step.
		clear(model)
		ok := bytes.Equal(model, img)
		for i := 0; i < len(hist) && !ok; i++ {
			h := hist[i]
			if h.data == nil {
				clear(model[h.off : h.off+h.n])
			} else {
				copy(model[h.off:], h.data)
			}
			// Only the touched range can newly match; compare fully
			// when it does.
			if bytes.Equal(model[h.off:h.off+h.n], img[h.off:h.off+h.n]) {
				ok = bytes.Equal(model, img)
			}
		}
		// Writes acknowledged after hist was copied may be in img too.
		if !ok {
			w.mu.Lock()
			more := w.hist[len(hist):]
			w.mu.Unlock()
			for _, h := range more {
				if h.data == nil {
					clear(model[h.off : h.off+h.n])
				} else {
					copy(model[h.off:], h.data)
				}
				if ok = bytes.Equal(model, img); ok {
					break
				}
			}
		}
		checks++
		if !ok {
			t.Fatalf("check %d: beta's data is not the primary's state after any prefix of the writes", checks)
		}
		matched++
		time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond) // random moments, not synchronisation
	}
	<-done
	waitCaughtUp(t, a.prim, b)
	sameData(t, a, b)
	t.Logf("%d checks of the prefix property passed", matched)
	if checks < 3 {
		t.Errorf("only %d checks ran", checks)
	}
}

func TestSwitchesPersist(t *testing.T) {
	const size = 1 << 20
	a, b := newNode(t, "alpha", size), newNode(t, "beta", size)
	a.startPrimary(0)
	peers := func() []Peer { return []Peer{a.peer()} }
	b.beforeRun = func(s *Secondary) {
		for _, err := range []error{s.SetSyncPaused(true), s.SetFetchPaused(true), s.SetReplayPaused(true)} {
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	b.startSecondary(peers, nil)
	b.stopSecondary()
	b.beforeRun = nil
	b.startSecondary(peers, nil)
	st := b.sec.Status()
	if !st.SyncPaused || !st.FetchPaused || !st.ReplayPaused || st.Consistent || st.Sync == nil || st.Sync.State != SyncNeeded {
		t.Fatalf("after restart: %+v (sync %+v)", st, st.Sync)
	}
	w := &writer{rng: rand.New(rand.NewPCG(19, 20))}
	w.write(t, a.prim, 20)
	// Sync resumes; fetch and replay stay paused.
	b.sec.SetSyncPaused(false)
	testutil.WaitFor(t, 10*time.Second, "the sync to copy the chunks", func() bool {
		return b.sec.Status().LastSync != nil
	})
	start := b.sec.Status().LastSync.Start
	w.write(t, a.prim, 20)
	if f, _ := b.sec.Positions(); f.Seq != 0 {
		t.Fatalf("fetched %v while fetching is paused", f)
	}
	b.sec.SetFetchPaused(false)
	testutil.WaitFor(t, 10*time.Second, "beta to fetch", func() bool {
		f, _ := b.sec.Positions()
		return f.Seq >= a.prim.Status().Logged.Seq
	})
	if _, r := b.sec.Positions(); r.Seq > start.Seq {
		t.Fatalf("replayed to %v while replay is paused", r)
	}
	b.sec.SetReplayPaused(false)
	waitCaughtUp(t, a.prim, b)
	sameData(t, a, b)
	if st := b.sec.Status(); st.LagBytes != 0 || st.LagSeconds != 0 || st.Source != "alpha" {
		t.Errorf("caught up but status says %+v", st)
	}
}

// While the primary writes steadily, a secondary's lag stays bounded, and
// is reported as 0 once it caught up.
func TestSteadyLag(t *testing.T) {
	const size = 8 << 20
	a, b := newNode(t, "alpha", size), newNode(t, "beta", size)
	a.startPrimary(1 << 20)
	b.startSecondary(func() []Peer { return []Peer{a.peer()} }, nil)
	b.sec.FakeSync()
	w := &writer{rng: rand.New(rand.NewPCG(23, 24))}
	stop := time.Now().Add(1500 * time.Millisecond)
	var maxLag float64
	var maxBytes int64
	writes := 0
	for next := time.Now(); time.Now().Before(stop); next = next.Add(2 * time.Millisecond) {
		w.write(t, a.prim, 1)
		writes++
		if writes%10 == 0 {
			st := b.sec.Status()
			maxLag = max(maxLag, st.LagSeconds)
			maxBytes = max(maxBytes, st.LagBytes)
		}
		time.Sleep(time.Until(next)) // pacing of the load, not synchronisation
	}
	waitCaughtUp(t, a.prim, b)
	sameData(t, a, b)
	t.Logf("%d writes in 1.5 s: max lag %.3f s, %d bytes", writes, maxLag, maxBytes)
	if maxLag > 2 {
		t.Errorf("lag reached %.3f s under a light steady load", maxLag)
	}
	testutil.WaitFor(t, 5*time.Second, "the lag to drop to 0", func() bool {
		st := b.sec.Status()
		return st.LagSeconds == 0 && st.LagBytes == 0
	})
}
