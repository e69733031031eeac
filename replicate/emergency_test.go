package replicate

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/tharsis/tharsis/blockdev"
	"github.com/tharsis/tharsis/internal/testutil"
)

// A full log with nothing to delete: writes go to the disk without the log
// (never refused), the chunks are recorded, a crash keeps both, and when
// space is back the mark is logged first and the log goes on after it.
func TestEmergencyMode(t *testing.T) {
	logDir := t.TempDir()
	fsys := newFaultFS()
	mem := blockdev.NewMemory(16 << 20)
	held := func() Position { return Position{} } // a peer that replayed nothing
	open := func() *Primary {
		p := openTest(t, mem, logDir, func(o *Options) { o.FS = fsys; o.MinAppliedByPeers = held; o.ZeroAhead = noZeroAhead })
		p.w.mu.Lock()
		p.w.statfsMaxAge = 0
		p.w.mu.Unlock()
		return p
	}
	p := open()
	if _, err := p.WriteAt([]byte("logged"), 0); err != nil {
		t.Fatal(err)
	}
	before := p.Status().Logged
	fsys.set(func(f *faultFS) { f.avail = 1000 })
	writes := map[int64][]byte{3 << 20: []byte("emergency one"), 5<<20 + 100: []byte("emergency two"), 3<<20 + 4096: []byte("same chunk")}
	for off, b := range writes {
		if _, err := p.WriteAt(b, off); err != nil {
			t.Fatalf("write with a full log: %v", err)
		}
	}
	if err := p.WriteZeroes(7<<20, 8192); err != nil {
		t.Fatal(err)
	}
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	em := p.Emergency()
	if !em.Active || em.At != before || em.Chunks != 3 {
		t.Fatalf("emergency state %+v, want active at %v with 3 chunks", em, before)
	}
	if got := p.EmergencyChunks(); len(got) != 3 || got[0] != 3 || got[1] != 5 || got[2] != 7 {
		t.Errorf("emergency chunks %v, want [3 5 7]", got)
	}
	if p.Status().Logged != before {
		t.Errorf("the log grew in emergency mode: %v -> %v", before, p.Status().Logged)
	}
	// Still full: it stays in emergency mode.
	if left, err := p.MaybeLeaveEmergency(false); left || err != nil {
		t.Fatalf("left emergency mode with a full log: %v %v", left, err)
	}

	// A crash in emergency mode: the disk keeps the writes, the state
	// survives, nothing older is replayed over them.
	p.crash()
	p = open()
	for off, b := range writes {
		got := make([]byte, len(b))
		p.ReadAt(got, off)
		if !bytes.Equal(got, b) {
			t.Fatalf("after a crash in emergency mode, %q at %d reads %q", b, off, got)
		}
	}
	if !p.Emergency().Active {
		t.Fatal("emergency mode forgotten after a crash")
	}

	// Space is back: the mark is the next record, then the log goes on.
	fsys.set(func(f *faultFS) { f.avail = -1 })
	left, err := p.MaybeLeaveEmergency(false)
	if !left || err != nil {
		t.Fatalf("leave emergency mode: %v %v", left, err)
	}
	em = p.Emergency()
	if em.Active || len(em.Marks) != 1 {
		t.Fatalf("after leaving: %+v", em)
	}
	if _, err := p.WriteAt([]byte("logged again"), 100); err != nil {
		t.Fatal(err)
	}
	if got := p.Status().Logged; got.Seq != em.Marks[0].Seq+1 {
		t.Errorf("the first record after the mark is %d, want %d", got.Seq, em.Marks[0].Seq+1)
	}
	// Every node past the mark: the bitmap is forgotten.
	held = func() Position { return Position{Seq: 1 << 40} }
	p.opts.MinAppliedByPeers = held
	p.maybeForgetEmergency()
	if st := p.Emergency(); len(st.Marks) != 0 || st.Chunks != 0 || len(p.EmergencyChunks()) != 0 {
		t.Errorf("emergency state not cleared: %+v", st)
	}
	p.Close()
}

// The secondary stops before the mark, consistent with the primary's state
// when emergency mode began; invalidate copies only the chunks written
// without the log and replays the log after the mark.
func TestEmergencySecondaryResync(t *testing.T) {
	const size = 16 << 20
	a, b := newNode(t, "alpha", size), newNode(t, "beta", size)
	fsys := newFaultFS()
	p, err := OpenPrimary(noClose{a.data}, Options{Dir: a.dir, Node: "alpha", Resource: "r0", SegmentSize: 1 << 20, FS: fsys, ZeroAhead: noZeroAhead,
		CheckpointInterval: time.Hour, Logger: a.logger(), MinAppliedByPeers: func() Position {
			if b.sec == nil {
				return Position{}
			}
			_, r := b.sec.Positions()
			return r
		}})
	if err != nil {
		t.Fatal(err)
	}
	p.w.mu.Lock()
	p.w.statfsMaxAge = 0
	p.w.mu.Unlock()
	a.prim = p
	a.srv.AddResource("r0", PrimarySource(p))
	t.Cleanup(func() { p.Close() })
	w := &writer{rng: rand.New(rand.NewPCG(71, 72))}
	w.write(t, p, 30)
	b.startSecondary(func() []Peer { return []Peer{a.peer()} }, nil)
	waitCaughtUp(t, p, b)
	atMark := bytes.Clone(a.data.Bytes())

	fsys.set(func(f *faultFS) { f.avail = 1000 })
	w.write(t, p, 40)
	if !p.Emergency().Active {
		t.Fatal("no emergency mode with a full log")
	}
	chunks := len(p.EmergencyChunks())
	fsys.set(func(f *faultFS) { f.avail = -1 })
	if left, err := p.MaybeLeaveEmergency(false); !left || err != nil {
		t.Fatalf("leave emergency mode: %v %v", left, err)
	}
	w.write(t, p, 10)

	testutil.WaitFor(t, 20*time.Second, "beta to stop at the emergency mark", func() bool {
		st := b.sec.Status()
		return st.StoppedAtMark != nil && st.Consistent
	})
	if got := b.data.Bytes(); !bytes.Equal(got, atMark) {
		t.Fatal("beta stopped at the mark does not hold the primary's state when emergency mode began")
	}
	if err := b.sec.Invalidate(); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, p, b)
	sameData(t, a, b)
	ls := b.sec.Status().LastSync
	if ls == nil || ls.Transferred != int64(chunks)*EmergencyChunk {
		t.Fatalf("emergency sync transferred %+v, want %d chunks of %d", ls, chunks, EmergencyChunk)
	}
	t.Logf("emergency sync: %d chunks, %d bytes of a %d-byte disk", chunks, ls.Transferred, size)
	w.write(t, p, 10)
	waitCaughtUp(t, p, b)
	sameData(t, a, b)
	p.maybeForgetEmergency()
	if st := p.Emergency(); len(st.Marks) != 0 {
		t.Errorf("emergency state kept after every node passed the mark: %+v", st)
	}
}
