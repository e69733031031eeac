package replicate

import (
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tharsis/tharsis/internal/testutil"
)

const verifyChunk = 64 << 10

// verifyPair starts a primary (alpha, small segments: rotations during the
// verify) with some history and a caught-up secondary (beta, 64 KiB chunks)
// fetching from peer (alpha's address when empty).
func verifyPair(t *testing.T, size int64, peer func(a *node) Peer) (a, b *node) {
	a, b = newNode(t, "alpha", size), newNode(t, "beta", size)
	a.startPrimary(1 << 20)
	w := &writer{rng: rand.New(rand.NewPCG(7, 8))}
	w.write(t, a.prim, 300)
	p := a.peer()
	if peer != nil {
		p = peer(a)
	}
	b.startSecondary(func() []Peer { return []Peer{p} }, func(o *SecondaryOptions) { o.ChunkSize = verifyChunk })
	waitCaughtUp(t, a.prim, b)
	return a, b
}

// flipChunks changes a few bytes in each of the chunks behind replication's
// back (straight on beta's disk).
func flipChunks(t *testing.T, n *node, chunks []uint64) {
	t.Helper()
	for i, c := range chunks {
		off := int64(c)*verifyChunk + int64(i*4099)%verifyChunk
		b := make([]byte, 3)
		n.data.ReadAt(b, off)
		for j := range b {
			b[j] ^= 0x5a
		}
		n.data.WriteAt(b, off)
	}
}

// keepWriting writes (and trims) through p until stop is called, never
// touching the chunks in avoid, half of the time into the first hot chunks
// (so the scan meets chunks that change under it). stop returns the writes
// done.
func keepWriting(t *testing.T, p *Primary, hot int64, avoid []uint64) (stop func() int) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	var n int
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(uint64(len(avoid)), 99))
		size := p.Size()
		buf := make([]byte, 24<<10)
		for {
			select {
			case <-done:
				return
			default:
			}
			l := int64(512 * (1 + rng.IntN(len(buf)/512)))
			span := size
			if rng.IntN(2) == 0 {
				span = hot * verifyChunk
			}
			off := rng.Int64N(span-l) / 512 * 512
			if slices.ContainsFunc(avoid, func(c uint64) bool {
				return off < int64(c+1)*verifyChunk && int64(c)*verifyChunk < off+l
			}) {
				continue
			}
			var err error
			if rng.IntN(8) == 0 {
				err = p.Trim(off, l)
			} else {
				for i := range buf[:l] {
					buf[i] = byte(rng.Uint32())
				}
				_, err = p.WriteAt(buf[:l], off)
			}
			if err != nil {
				t.Error(err)
				return
			}
			n++
		}
	}()
	var once sync.Once
	return func() int {
		once.Do(func() { close(done) })
		wg.Wait()
		return n
	}
}

// verifyNow starts a verify on n and waits for its end.
func verifyNow(t *testing.T, n *node, opts VerifyOptions) VerifyReport {
	t.Helper()
	r, err := n.sec.StartVerify(opts)
	if err != nil {
		t.Fatal(err)
	}
	return waitVerify(t, n, r.ID)
}

// waitVerify waits until verify id of n has ended.
func waitVerify(t *testing.T, n *node, id uint64) VerifyReport {
	t.Helper()
	var r *VerifyReport
	testutil.WaitFor(t, time.Minute, "the verify to end", func() bool {
		r = n.sec.Verify()
		return r != nil && r.ID == id && r.State != VerifyRunning
	})
	return *r
}

// A secondary whose disk has a few chunks changed behind replication's back:
// while a writer keeps writing through the primary (and the secondary
// lags), verify reports exactly those chunks, none of those written
// meanwhile; --repair rewrites them under the same load; a second verify
// reports none, and once the load stops the disks are byte-identical.
func TestVerifyFindsAndRepairsFlippedChunks(t *testing.T) {
	const size = 8 << 20
	a, b := verifyPair(t, size, nil)
	flipped := []uint64{3, 40, 41, 127}
	flipChunks(t, b, flipped)
	stop := keepWriting(t, a.prim, 8, flipped)
	defer stop()

	r := verifyNow(t, b, VerifyOptions{Rate: 1 << 40})
	if r.State != VerifyDone || !slices.Equal(r.Differ, flipped) || r.DifferCount != len(flipped) || r.Repaired != 0 {
		t.Fatalf("verify: %+v; want done, differing chunks %v, nothing repaired", r, flipped)
	}
	if r.Compared != size || r.Source != "alpha" || r.ChunkSize != verifyChunk {
		t.Errorf("verify report: %+v", r)
	}
	t.Logf("verify under load: %d chunks rechecked, differing %v", r.Rechecked, r.Differ)

	r = verifyNow(t, b, VerifyOptions{Repair: true, Rate: 1 << 40})
	if r.State != VerifyDone || !slices.Equal(r.Differ, flipped) || r.Repaired != len(flipped) {
		t.Fatalf("verify --repair: %+v; want the chunks %v repaired", r, flipped)
	}
	if !b.sec.Consistent() {
		t.Error("the secondary is not consistent after the repair")
	}
	r = verifyNow(t, b, VerifyOptions{Rate: 1 << 40})
	if r.State != VerifyDone || r.DifferCount != 0 {
		t.Fatalf("verify after the repair: %+v; want no differing chunk", r)
	}
	writes := stop()
	waitCaughtUp(t, a.prim, b)
	sameData(t, a, b)
	t.Logf("%d writes during the verifies", writes)
	if r.ID != 3 {
		t.Errorf("third verify has id %d", r.ID)
	}
}

// Verify of identical disks while a writer keeps writing (chunks change
// under the scan on both sides at different times) reports nothing; the
// chunks whose checksums differed at first sight were rechecked exactly.
func TestVerifyIdenticalUnderWrites(t *testing.T) {
	const size = 4 << 20
	a, b := verifyPair(t, size, nil)
	stop := keepWriting(t, a.prim, 4, nil)
	defer stop()
	var rechecked int
	for range 3 {
		r := verifyNow(t, b, VerifyOptions{Rate: 1 << 40})
		if r.State != VerifyDone || r.DifferCount != 0 || r.Compared != size {
			t.Fatalf("verify of identical disks under writes: %+v", r)
		}
		rechecked += r.Rechecked
	}
	writes := stop()
	if rechecked == 0 {
		t.Errorf("no chunk was rechecked in three verifies during %d writes: the test did not exercise the recheck", writes)
	}
	t.Logf("%d writes, %d chunks rechecked", writes, rechecked)
	waitCaughtUp(t, a.prim, b)
	sameData(t, a, b)
}

// cutProxy forwards TCP connections to target; cut closes those open.
type cutProxy struct {
	l      net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{l: l, target: target}
	t.Cleanup(func() { l.Close(); p.cut() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { io.Copy(u, c); u.Close() }()
			go func() { io.Copy(c, u); c.Close() }()
		}
	}()
	return p
}

func (p *cutProxy) cut() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	n := len(p.conns)
	p.conns = nil
	return n
}

// A verify survives its connection being cut (it dials again and goes on
// where it was), refuses a second verify while it runs, is cancelled by
// StopVerify, and its report is kept in the log directory.
func TestVerifyConnectionDropAndStop(t *testing.T) {
	const size = 8 << 20
	var px *cutProxy
	a, b := verifyPair(t, size, func(a *node) Peer {
		px = newCutProxy(t, a.addr)
		return Peer{Name: a.name, Addr: px.l.Addr().String()}
	})
	flipped := []uint64{2, 100}
	flipChunks(t, b, flipped)

	// 8 MiB at 4 MiB/s: two seconds to cut it in the middle.
	r, err := b.sec.StartVerify(VerifyOptions{Rate: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.sec.StartVerify(VerifyOptions{}); err == nil || !strings.Contains(err.Error(), "runs already") {
		t.Errorf("a second verify while one runs: %v", err)
	}
	testutil.WaitFor(t, 20*time.Second, "the verify to compare a first batch", func() bool { return b.sec.Verify().Compared > 0 })
	px.cut()
	r = waitVerify(t, b, r.ID)
	if r.State != VerifyDone || !slices.Equal(r.Differ, flipped) || r.Reconnects == 0 {
		t.Fatalf("verify with a cut connection: %+v; want done, chunks %v, a reconnect", r, flipped)
	}
	waitCaughtUp(t, a.prim, b) // the fetch stream was cut too

	r, err = b.sec.StartVerify(VerifyOptions{Rate: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 20*time.Second, "the verify to compare a first batch", func() bool { return b.sec.Verify().Compared > 0 })
	if err := b.sec.StopVerify(); err != nil {
		t.Fatal(err)
	}
	r = waitVerify(t, b, r.ID)
	if r.State != VerifyCancelled || r.Compared == size {
		t.Fatalf("stopped verify: %+v", r)
	}
	if err := b.sec.StopVerify(); err == nil {
		t.Error("StopVerify with no verify running succeeded")
	}
	// The report survives a restart of the secondary.
	b.stopSecondary()
	b.startSecondary(func() []Peer { return []Peer{{Name: a.name, Addr: px.l.Addr().String()}} }, func(o *SecondaryOptions) { o.ChunkSize = verifyChunk })
	if got := b.sec.Verify(); got == nil || got.ID != r.ID || got.State != VerifyCancelled {
		t.Errorf("report after a restart: %+v (file %s)", got, filepath.Join(b.dir, verifyFile))
	}
}

// A scheduled verify runs by itself every VerifyInterval.
func TestVerifyScheduled(t *testing.T) {
	a, b := newNode(t, "alpha", 1<<20), newNode(t, "beta", 1<<20)
	a.startPrimary(1 << 20)
	b.startSecondary(func() []Peer { return []Peer{a.peer()} }, func(o *SecondaryOptions) {
		o.ChunkSize, o.VerifyInterval = verifyChunk, 100*time.Millisecond
	})
	waitCaughtUp(t, a.prim, b)
	flipChunks(t, b, []uint64{5})
	testutil.WaitFor(t, 20*time.Second, "a scheduled verify to find chunk 5", func() bool {
		r := b.sec.Verify()
		return r != nil && r.Scheduled && r.State == VerifyDone && slices.Equal(r.Differ, []uint64{5})
	})
	if st := b.sec.Status(); st.Verify == nil || st.Verify.DifferCount != 1 {
		t.Errorf("status shows verify %+v", st.Verify)
	}
}
