package replicate

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tharsis/tharsis/blockdev"
	"github.com/tharsis/tharsis/internal/testutil"
)

// heldDevice is a data device whose writes (WriteAt, Trim, WriteZeroes)
// can be held (they wait until released), slowed or failed, so the
// applier lags behind the log as a slow or broken disk makes it.
type heldDevice struct {
	*blockdev.Memory
	mu      sync.Mutex
	gate    chan struct{} // nil: writes pass
	waiting atomic.Int32  // writes waiting at the gate
	fail    atomic.Bool   // writes fail with errDisk
	jitter  atomic.Bool   // writes yield the CPU first, so the window fills
}

var errDisk = errors.New("injected disk failure")

func newHeldDevice(size int64) *heldDevice { return &heldDevice{Memory: blockdev.NewMemory(size)} }

func (d *heldDevice) hold() {
	d.mu.Lock()
	d.gate = make(chan struct{})
	d.mu.Unlock()
}

func (d *heldDevice) release() {
	d.mu.Lock()
	if d.gate != nil {
		close(d.gate)
		d.gate = nil
	}
	d.mu.Unlock()
}

func (d *heldDevice) pass() error {
	d.mu.Lock()
	g := d.gate
	d.mu.Unlock()
	if g != nil {
		d.waiting.Add(1)
		<-g
		d.waiting.Add(-1)
	}
	if d.jitter.Load() {
		time.Sleep(20 * time.Microsecond) // a slow disk, not a synchronisation
	}
	if d.fail.Load() {
		return errDisk
	}
	return nil
}

func (d *heldDevice) WriteAt(b []byte, off int64) (int, error) {
	if err := d.pass(); err != nil {
		return 0, err
	}
	return d.Memory.WriteAt(b, off)
}

func (d *heldDevice) Trim(off, n int64) error {
	if err := d.pass(); err != nil {
		return err
	}
	return d.Memory.Trim(off, n)
}

func (d *heldDevice) WriteZeroes(off, n int64) error {
	if err := d.pass(); err != nil {
		return err
	}
	return d.Memory.WriteZeroes(off, n)
}

// waitHeld waits until the applier waits at d's gate.
func waitHeld(t *testing.T, d *heldDevice) {
	t.Helper()
	testutil.WaitFor(t, waitLimit, "the applier to reach the held disk", func() bool { return d.waiting.Load() > 0 })
}

// The model test: goroutines write, trim and zero overlapping ranges and
// read concurrently while the applier lags; no read may return an older
// version of a sector than a write acknowledged before the read began, nor
// data nobody wrote; at the end the data device holds the log's order.
func TestApplyBehindModel(t *testing.T) {
	for _, tc := range []struct {
		name   string
		window int64
	}{{"default window", 0}, {"tiny window", 3 * (HeaderSize + 4096)}} {
		t.Run(tc.name, func(t *testing.T) { modelRun(t, tc.window) })
	}
}

const (
	modelSector = 512
	modelSize   = 256 << 10
)

// modelOp is one write, trim or write-zeroes with its logical start and end
// times (a counter taken before the call and after its return).
type modelOp struct {
	id         uint64 // written into every 8 bytes of its sectors; 0 for zeroing ops
	zero       bool
	off, n     int64
	start, end int64
}

// modelRead is one read: its sectors' content and its logical times.
type modelRead struct {
	off        int64
	b          []byte
	start, end int64
}

func modelRun(t *testing.T, window int64) {
	logDir := t.TempDir()
	dev := newHeldDevice(modelSize)
	dev.jitter.Store(true)
	p := openTest(t, dev, logDir, func(o *Options) { o.ApplyWindow = window })
	var clock atomic.Int64
	var nextID atomic.Uint64
	const workers, opsEach = 6, 150
	ops := make([][]modelOp, workers)
	reads := make([][]modelRead, workers)
	var wg sync.WaitGroup
	for g := range workers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 77))
			buf := make([]byte, 16*modelSector) // reused: the window must own its copy
			for range opsEach {
				off := r.Int64N(modelSize/modelSector-16) * modelSector
				n := (1 + r.Int64N(16)) * modelSector
				switch k := r.IntN(10); {
				case k < 4: // read
					rd := modelRead{off: off, b: make([]byte, n), start: clock.Add(1)}
					if _, err := p.ReadAt(rd.b, off); err != nil {
						t.Error(err)
						return
					}
					rd.end = clock.Add(1)
					reads[g] = append(reads[g], rd)
				default:
					op := modelOp{off: off, n: n, zero: k == 9}
					var err error
					if op.zero {
						op.start = clock.Add(1)
						if r.IntN(2) == 0 {
							err = p.Trim(off, n)
						} else {
							err = p.WriteZeroes(off, n)
						}
					} else {
						op.id = nextID.Add(1)
						b := buf[:n]
						for i := 0; i < len(b); i += 8 {
							binary.LittleEndian.PutUint64(b[i:], op.id)
						}
						op.start = clock.Add(1)
						_, err = p.WriteAt(b, off)
						clear(buf) // the caller's buffer is its own again
					}
					op.end = clock.Add(1)
					if err != nil {
						t.Error(err)
						return
					}
					ops[g] = append(ops[g], op)
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}

	// Per sector, the ops that touched it.
	bySector := make([][]modelOp, modelSize/modelSector)
	for _, l := range ops {
		for _, op := range l {
			for s := op.off / modelSector; s < (op.off+op.n)/modelSector; s++ {
				bySector[s] = append(bySector[s], op)
			}
		}
	}
	checked := 0
	for _, l := range reads {
		for _, rd := range l {
			for i := int64(0); i < int64(len(rd.b)); i += modelSector {
				checkSector(t, bySector[(rd.off+i)/modelSector], rd, rd.b[i:i+modelSector], (rd.off+i)/modelSector)
				checked++
			}
		}
	}
	t.Logf("%d sector reads checked", checked)

	// Everything acknowledged reads back through p, and once applied the
	// data device holds exactly the log's order.
	got := readAll(t, p)
	if err := p.drain(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, dev.Bytes()) {
		t.Fatal("reads through the primary differ from the applied data device")
	}
	p.crash()
	fresh := blockdev.NewMemory(modelSize)
	if _, _, err := Replay(logDir, fresh, Position{}, ReplayOptions{}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(fresh.Bytes(), dev.Bytes()) {
		t.Fatal("the applied data device differs from the log order")
	}
}

// checkSector checks one sector b of read rd against the ops on it.
func checkSector(t *testing.T, ops []modelOp, rd modelRead, b []byte, sector int64) {
	t.Helper()
	id := binary.LittleEndian.Uint64(b)
	for i := 8; i < len(b); i += 8 {
		if binary.LittleEndian.Uint64(b[i:]) != id {
			t.Fatalf("sector %d read torn inside itself", sector)
		}
	}
	// The version read: the write with that id, or (zeros) the zeroing op
	// that ended last among those begun before the read ended (or the
	// initial zeros).
	var v *modelOp
	for i := range ops {
		op := &ops[i]
		switch {
		case id != 0 && op.id == id:
			v = op
		case id == 0 && op.zero && op.start < rd.end && (v == nil || op.end > v.end):
			v = op
		}
	}
	if id != 0 && (v == nil || v.start > rd.end) {
		t.Fatalf("sector %d read data of write %d, which never wrote it before the read ended", sector, id)
	}
	vEnd := int64(-1) // the initial zeros precede everything
	if v != nil {
		vEnd = v.end
	}
	for _, op := range ops {
		if op.end < rd.start && vEnd < op.start {
			t.Fatalf("sector %d: a read begun at %d returned a version (write %d, ended at %d) older than a write acknowledged before it (write %d zero=%v, %d..%d)",
				sector, rd.start, id, vEnd, op.id, op.zero, op.start, op.end)
		}
	}
}

// A full window holds writers back until the applier catches up; reads
// and Extents meanwhile see the acknowledged writes it holds; Status
// says what is unapplied.
func TestApplyWindowBackPressure(t *testing.T) {
	dev := newHeldDevice(1 << 20)
	window := int64(2 * (HeaderSize + 4096))
	p := openTest(t, dev, t.TempDir(), func(o *Options) { o.ApplyWindow = window })
	t.Cleanup(func() { dev.release(); p.Close() })
	dev.hold()
	a, b := bytes.Repeat([]byte{'a'}, 4096), bytes.Repeat([]byte{'b'}, 4096)
	waitDone(t, async(write(p, string(a), 0)), "first write")
	waitHeld(t, dev)
	waitDone(t, async(write(p, string(b), 64<<10)), "second write")
	third := async(write(p, strings.Repeat("c", 4096), 128<<10))
	testutil.WaitFor(t, waitLimit, "the third write to wait for room", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.winWait > 0
	})
	notDone(t, third, "a write into the full window")
	st := p.Status()
	if st.UnappliedRecords != 2 || st.UnappliedBytes != window || st.ApplyWindow != window || st.Applied.Seq >= st.Logged.Seq {
		t.Fatalf("status with a full window: %+v", st)
	}
	got := make([]byte, 4096)
	if _, err := p.ReadAt(got, 64<<10); err != nil || !bytes.Equal(got, b) {
		t.Fatalf("read of an unapplied write: %v %q…", err, got[:8])
	}
	if dev.Bytes()[64<<10] != 0 {
		t.Fatal("the held disk has the second write already")
	}
	es, err := p.Extents(nil, 0, 1<<20, 16)
	if err != nil {
		t.Fatal(err)
	}
	// (blockdev.Memory reports zeros, never holes.)
	want := []blockdev.Extent{{Offset: 0, Length: 4096}, {Offset: 4096, Length: 64<<10 - 4096, Zero: true},
		{Offset: 64 << 10, Length: 4096}, {Offset: 64<<10 + 4096, Length: 1<<20 - 64<<10 - 4096, Zero: true}}
	if !equalExtents(es, want) {
		t.Fatalf("extents with unapplied writes %+v, want %+v", es, want)
	}
	dev.release()
	waitDone(t, third, "the third write once the disk moves")
	if err := p.drain(); err != nil {
		t.Fatal(err)
	}
	if st := p.Status(); st.UnappliedRecords != 0 || st.UnappliedBytes != 0 || st.Applied.Seq != st.Logged.Seq {
		t.Fatalf("status once applied: %+v", st)
	}
	if dev.Bytes()[128<<10] != 'c' {
		t.Fatal("the third write is not on the disk")
	}
}

func equalExtents(a, b []blockdev.Extent) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Extents lay the window over the device: unapplied writes are data, an
// unapplied trim of data reads as zeros, a write after it is data again.
func TestExtentsUnappliedTrim(t *testing.T) {
	dev := newHeldDevice(1 << 20)
	p := openTest(t, dev, t.TempDir(), nil)
	t.Cleanup(func() { dev.release(); p.Close() })
	if _, err := p.WriteAt(bytes.Repeat([]byte{1}, 64<<10), 0); err != nil {
		t.Fatal(err)
	}
	p.drain()
	dev.hold()
	if err := p.Trim(0, 64<<10); err != nil {
		t.Fatal(err)
	}
	waitHeld(t, dev)
	if _, err := p.WriteAt(bytes.Repeat([]byte{2}, 4096), 8192); err != nil {
		t.Fatal(err)
	}
	es, err := p.Extents(nil, 0, 1<<20, 16)
	if err != nil {
		t.Fatal(err)
	}
	want := []blockdev.Extent{{Offset: 0, Length: 8192, Zero: true}, {Offset: 8192, Length: 4096}, {Offset: 12288, Length: 1<<20 - 12288, Zero: true}}
	if !equalExtents(es, want) {
		t.Fatalf("extents %+v, want %+v", es, want)
	}
	if es, _ := p.Extents(nil, 0, 1<<20, 2); !equalExtents(es, want[:2]) {
		t.Fatalf("extents limited to 2: %+v", es)
	}
}

// A data device that fails under the applier: writes are refused from
// then on, reads still see the unapplied writes (never stale data), and
// the log replays them on the next open.
func TestApplierFailure(t *testing.T) {
	logDir := t.TempDir()
	dev := newHeldDevice(1 << 20)
	p := openTest(t, dev, logDir, nil)
	dev.hold()
	if _, err := p.WriteAt([]byte("acknowledged"), 4096); err != nil {
		t.Fatal(err)
	}
	waitHeld(t, dev)
	dev.fail.Store(true)
	dev.release()
	testutil.WaitFor(t, waitLimit, "the applier to fail", func() bool { return p.Status().Err != "" })
	if _, err := p.WriteAt([]byte("refused"), 0); err == nil || !errors.Is(err, errDisk) {
		t.Fatalf("write after the data device failed: %v", err)
	}
	if err := p.Flush(); !errors.Is(err, errDisk) {
		t.Fatalf("Flush after the data device failed: %v", err)
	}
	got := make([]byte, 12)
	if _, err := p.ReadAt(got, 4096); err != nil || string(got) != "acknowledged" {
		t.Fatalf("read after the applier failed: %v %q", err, got)
	}
	if st := p.Status(); st.UnappliedRecords != 1 || !strings.Contains(st.Err, "replayed on restart") {
		t.Fatalf("status: %+v", st)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	dev.fail.Store(false)
	p = openTest(t, dev, logDir, nil)
	defer p.Close()
	if p.Replayed() != 1 || string(dev.Bytes()[4096:4108]) != "acknowledged" {
		t.Fatalf("replayed %d records; disk %q", p.Replayed(), dev.Bytes()[4096:4108])
	}
}

// Entering emergency mode with a full window: the emergency write (straight
// to the disk) does not overtake the unapplied logged write of its range.
func TestEmergencyAfterUnappliedWrites(t *testing.T) {
	fsys := newFaultFS()
	dev := newHeldDevice(16 << 20)
	p := openTest(t, dev, t.TempDir(), func(o *Options) {
		o.FS = fsys
		o.MinAppliedByPeers = func() Position { return Position{} }
		o.ZeroAhead = noZeroAhead
	})
	p.w.mu.Lock()
	p.w.statfsMaxAge = 0
	p.w.mu.Unlock()
	t.Cleanup(func() { dev.release(); p.Close() })
	dev.hold()
	if _, err := p.WriteAt([]byte("logged old"), 1<<20); err != nil {
		t.Fatal(err)
	}
	waitHeld(t, dev)
	fsys.set(func(f *faultFS) { f.avail = 1000 })
	em := async(write(p, "emergency!", 1<<20))
	got := make([]byte, 10)
	if _, err := p.ReadAt(got, 1<<20); err != nil || string(got) != "logged old" && string(got) != "emergency!" {
		t.Fatalf("read while entering emergency mode: %v %q", err, got)
	}
	dev.release()
	waitDone(t, em, "the emergency write")
	if !p.Emergency().Active {
		t.Fatal("not in emergency mode")
	}
	if _, err := p.ReadAt(got, 1<<20); err != nil || string(got) != "emergency!" || string(dev.Bytes()[1<<20:1<<20+10]) != "emergency!" {
		t.Fatalf("after the emergency write: read %q (%v), disk %q", got, err, dev.Bytes()[1<<20:1<<20+10])
	}
}

// CloseSealed (handover) applies the window before it seals: the data
// device holds every acknowledged write, the applied position is the end.
func TestCloseSealedAppliesWindow(t *testing.T) {
	logDir := t.TempDir()
	dev := newHeldDevice(1 << 20)
	p := openTest(t, dev, logDir, nil)
	dev.hold()
	want := make([]byte, 1<<20)
	for i := range 20 {
		b := bytes.Repeat([]byte{byte(i + 1)}, 3000)
		if _, err := p.WriteAt(b, int64(i)*2000); err != nil {
			t.Fatal(err)
		}
		copy(want[i*2000:], b)
	}
	waitHeld(t, dev)
	done := make(chan Position, 1)
	errc := async(func() error {
		end, err := p.CloseSealed()
		done <- end
		return err
	})
	dev.release()
	waitDone(t, errc, "CloseSealed")
	end := <-done
	if !bytes.Equal(dev.Bytes(), want) {
		t.Fatal("the data device lacks acknowledged writes after CloseSealed")
	}
	if applied, err := ReadApplied(nil, logDir); err != nil || applied != end {
		t.Fatalf("persisted applied position %v (%v), want the sealed end %v", applied, err, end)
	}
}
