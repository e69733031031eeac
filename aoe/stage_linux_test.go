package aoe_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tharsis/tharsis/aoe"
	"github.com/tharsis/tharsis/aoe/aoetest"
	"github.com/tharsis/tharsis/blockdev"
	"github.com/tharsis/tharsis/internal/testutil"
)

// fakeDev is a memory device whose WriteAt and Flush can wait (for a
// number of writes in flight, or for a gate to open) and fail, and which
// records how many writes were in flight at once.
type fakeDev struct {
	*blockdev.Memory
	mu        sync.Mutex
	need      int           // WriteAt waits until this many are in flight (at most 2 s); 0: no wait
	reached   chan struct{} // closed when need was reached
	gate      chan struct{} // WriteAt (or Flush, with gateFlush) waits until closed (at most 20 s)
	gateFlush bool
	flushNeed int // the first Flush waits until this many writes returned (at most 2 s)
	flushed   chan struct{}
	writeErr  error
	flushErr  error
	inflight  int
	maxIn     int
	writes    int // WriteAt calls returned
	flushes   int
}

func newFakeDev() *fakeDev {
	return &fakeDev{Memory: blockdev.NewMemory(diskSize), reached: make(chan struct{}), flushed: make(chan struct{})}
}

func (d *fakeDev) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	d.inflight++
	d.maxIn = max(d.maxIn, d.inflight)
	if d.need > 0 && d.inflight >= d.need {
		d.need = 0
		close(d.reached)
	}
	wait, gate, werr := d.need > 0, d.gate, d.writeErr
	if d.gateFlush {
		gate = nil
	}
	d.mu.Unlock()
	if wait {
		select {
		case <-d.reached:
		case <-time.After(2 * time.Second):
		}
	}
	if gate != nil {
		select {
		case <-gate:
		case <-time.After(20 * time.Second):
		}
	}
	n, err := 0, werr
	if err == nil {
		n, err = d.Memory.WriteAt(p, off)
	}
	d.mu.Lock()
	d.inflight--
	d.writes++
	if d.flushNeed > 0 && d.writes >= d.flushNeed {
		d.flushNeed = 0
		close(d.flushed)
	}
	d.mu.Unlock()
	return n, err
}

func (d *fakeDev) Flush() error {
	d.mu.Lock()
	d.flushes++
	first := d.flushes == 1 && d.flushNeed > 0
	gate, ferr := d.gate, d.flushErr
	if !d.gateFlush {
		gate = nil
	}
	d.mu.Unlock()
	if first {
		select {
		case <-d.flushed:
		case <-time.After(2 * time.Second):
		}
	}
	if gate != nil {
		select {
		case <-gate:
		case <-time.After(20 * time.Second):
		}
	}
	return ferr
}

func (d *fakeDev) get(f func(d *fakeDev) int) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return f(d)
}

// live is a Server serving one target (e1.1) in a netns pair and an
// initiator facing it.
type live struct {
	t   *testing.T
	p   *aoetest.Pair
	srv *aoe.Server
	in  *aoe.Initiator
	tgt aoe.TargetInfo
}

func serveLive(t *testing.T, cfg aoe.TargetConfig) *live {
	t.Helper()
	p := aoetest.NewPair(t, 1500)
	cfg.Shelf, cfg.Slot = 1, 1
	l := &live{t: t, p: p}
	if err := aoetest.Do(p.TargetNS, func() (err error) {
		l.srv, err = aoe.NewServer(p.TargetIf, []aoe.TargetConfig{cfg}, slog.New(slog.DiscardHandler))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("Serve did not return within 30s of cancel")
		}
	})
	l.in = l.initiator()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ts, err := l.in.Discover(context.Background(), 200*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if len(ts) == 1 {
			l.tgt = ts[0]
			// Requests that a test holds up must not be retransmitted.
			l.in.Timeout = 20 * time.Second
			return l
		}
	}
	t.Fatal("target did not answer discovery within 10s")
	return nil
}

func (l *live) initiator() *aoe.Initiator {
	var in *aoe.Initiator
	if err := aoetest.Do(l.p.InitNS, func() (err error) {
		in, err = aoe.NewInitiator(l.p.InitIf)
		return err
	}); err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { in.Close() })
	return in
}

// writes runs count full-frame writes of random data at window w through
// Pipe and returns what was written (frame i at sector i*sectors).
func (l *live) writes(count, w int) ([]byte, error) {
	size := l.tgt.Payload
	data := make([]byte, count*size)
	rand.Read(data)
	next := 0
	var firstErr error
	err := l.in.Pipe(context.Background(), &l.tgt, w, func() *aoe.IO {
		if next == count {
			return nil
		}
		io := &aoe.IO{Write: true, LBA: uint64(next * size / aoe.SectorSize), Buf: data[next*size : (next+1)*size]}
		next++
		return io
	}, func(io *aoe.IO) {
		if io.Err != nil && firstErr == nil {
			firstErr = fmt.Errorf("write at sector %d: %w", io.LBA, io.Err)
		}
	})
	return data, errors.Join(err, firstErr)
}

func (l *live) checkData(want []byte) {
	l.t.Helper()
	got := make([]byte, len(want))
	if err := l.in.ReadAt(context.Background(), &l.tgt, got, 0, 16); err != nil {
		l.t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		l.t.Fatal("data read back differs from what was written")
	}
}

// ata sends one ATA command from in and returns the response.
func (l *live) ata(in *aoe.Initiator, cmd uint8, lba uint64, sectors uint8, data []byte, wait time.Duration) (aoe.Response, aoe.ATA, error) {
	a := aoe.ATA{Flags: aoe.ATAExtended, CmdStat: cmd, LBA: lba, Sectors: sectors, Data: data}
	if data != nil {
		a.Flags |= aoe.ATAWrite
	}
	arg, _ := a.AppendBinary(nil)
	rs, err := in.Exchange(context.Background(), l.tgt.MAC, 1, 1, aoe.CmdATA, arg, wait, true)
	if err != nil {
		return aoe.Response{}, aoe.ATA{}, err
	}
	var out aoe.ATA
	err = out.Decode(rs[0].Arg)
	return rs[0], out, err
}

// TestWritesInFlightTogether: the writes of one window reach a device
// whose WriteAt blocks (like replicate.Primary, which waits for the log's
// fdatasync) all at once, so that they can share one sync.
func TestWritesInFlightTogether(t *testing.T) {
	const window = 32
	dev := newFakeDev()
	dev.need = window
	l := serveLive(t, aoe.TargetConfig{Device: dev})
	start := time.Now()
	data, err := l.writes(window, window)
	if err != nil {
		t.Fatal(err)
	}
	if got := dev.get(func(d *fakeDev) int { return d.maxIn }); got < window {
		t.Fatalf("at most %d writes of a window of %d were in flight at once (took %v)", got, window, time.Since(start))
	}
	l.checkData(data)
}

// TestInlineWritesShareFlush: with a device whose WriteAt is quick (like
// blockdev.File), the writes of one window share a few flushes, not one
// each, and are acknowledged only after one.
func TestInlineWritesShareFlush(t *testing.T) {
	const window = 32
	dev := newFakeDev()
	aoe.SetInlineDevice(t, func(d blockdev.Device) bool { return d == blockdev.Device(dev) })
	dev.flushNeed = window // the first flush lasts until every write returned
	l := serveLive(t, aoe.TargetConfig{Device: dev})
	data, err := l.writes(window, window)
	if err != nil {
		t.Fatal(err)
	}
	if got := dev.get(func(d *fakeDev) int { return d.flushes }); got > 4 || got < 1 {
		t.Fatalf("%d flushes for %d writes of one window, want 1..4", got, window)
	}
	l.checkData(data)
}

// TestReadsPassBlockedWrites: a read is answered while every outstanding
// write waits for the device, whether writes wait in WriteAt (written by
// the write stage) or in Flush (written inline, flushed by the committer).
func TestReadsPassBlockedWrites(t *testing.T) {
	for _, inline := range []bool{false, true} {
		t.Run(fmt.Sprintf("inline=%v", inline), func(t *testing.T) {
			const window = 16
			dev := newFakeDev()
			dev.gate, dev.gateFlush = make(chan struct{}), inline
			if inline {
				aoe.SetInlineDevice(t, func(d blockdev.Device) bool { return d == blockdev.Device(dev) })
			}
			l := serveLive(t, aoe.TargetConfig{Device: dev})
			res := make(chan error, 1)
			go func() {
				_, err := l.writes(window, window)
				res <- err
			}()
			var once sync.Once
			open := func() { once.Do(func() { close(dev.gate) }) }
			defer open()
			if inline {
				testutil.WaitFor(t, 5*time.Second, "writes waiting in Flush", func() bool {
					return dev.get(func(d *fakeDev) int { return d.flushes }) >= 1
				})
			} else {
				testutil.WaitFor(t, 5*time.Second, "every write of the window in WriteAt", func() bool {
					return dev.get(func(d *fakeDev) int { return d.inflight }) == window
				})
			}
			in2 := l.initiator()
			_, a, err := l.ata(in2, aoe.ATAReadSectorsExt, 0, 2, nil, 2*time.Second)
			if err != nil {
				t.Fatalf("read while writes wait for the device: %v", err)
			}
			if a.CmdStat != aoe.ATAStatusDRDY {
				t.Fatalf("read while writes wait: %+v", a)
			}
			select {
			case err := <-res:
				t.Fatalf("writes completed before the device let them: %v", err)
			default:
			}
			open()
			select {
			case err := <-res:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("writes did not complete within 20s of the device letting them")
			}
		})
	}
}

// TestWriteStageBounded: with more writes outstanding than the write stage
// has frames, the receiving workers handle the excess themselves, so the
// writes in flight (and the memory) stay bounded, and all complete.
func TestWriteStageBounded(t *testing.T) {
	dev := newFakeDev()
	dev.gate = make(chan struct{})
	l := serveLive(t, aoe.TargetConfig{Device: dev, BufCnt: 8})
	frames, workers := aoe.StageSizes(l.srv)
	window := frames + workers + 20
	res := make(chan error, 1)
	var data []byte
	go func() {
		var err error
		data, err = l.writes(window, window)
		res <- err
	}()
	var once sync.Once
	open := func() { once.Do(func() { close(dev.gate) }) }
	defer open()
	testutil.WaitFor(t, 10*time.Second, "every frame of the write stage and a worker holding a write", func() bool {
		return dev.get(func(d *fakeDev) int { return d.inflight }) > frames
	})
	open()
	select {
	case err := <-res:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("writes did not complete within 30s")
	}
	if got := dev.get(func(d *fakeDev) int { return d.maxIn }); got > frames+workers {
		t.Fatalf("%d writes in flight at most, want at most %d frames + %d workers", got, frames, workers)
	}
	l.checkData(data)
}

// TestIOErrorsLive: a failing WriteAt or Flush is reported as ATA status
// ERR|DRDY with UNC (never with the AoE Error flag), on both write paths,
// and the target keeps serving.
func TestIOErrorsLive(t *testing.T) {
	for _, inline := range []bool{false, true} {
		t.Run(fmt.Sprintf("inline=%v", inline), func(t *testing.T) {
			dev := newFakeDev()
			if inline {
				aoe.SetInlineDevice(t, func(d blockdev.Device) bool { return d == blockdev.Device(dev) })
			}
			l := serveLive(t, aoe.TargetConfig{Device: dev})
			set := func(w, f error) {
				dev.mu.Lock()
				dev.writeErr, dev.flushErr = w, f
				dev.mu.Unlock()
			}
			sector := bytes.Repeat([]byte{0x5a}, 512)
			check := func(what string, cmd uint8, data []byte, wantStat, wantErr uint8) {
				t.Helper()
				r, a, err := l.ata(l.in, cmd, 3, uint8(len(data)/512), data, time.Second)
				if err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				if r.Header.Flags&aoe.FlagError != 0 {
					t.Fatalf("%s: AoE error flag set (error %v)", what, r.Header.Error)
				}
				if a.CmdStat != wantStat || a.ErrFeat != wantErr {
					t.Fatalf("%s: status %#x error %#x, want %#x %#x", what, a.CmdStat, a.ErrFeat, wantStat, wantErr)
				}
			}
			ok, bad := uint8(aoe.ATAStatusDRDY), uint8(aoe.ATAStatusDRDY|aoe.ATAStatusERR)
			eio := errors.New("injected I/O error")
			set(eio, nil)
			check("write with WriteAt failing", aoe.ATAWriteSectorsExt, sector, bad, aoe.ATAErrUNC)
			set(nil, eio)
			check("write with Flush failing", aoe.ATAWriteSectorsExt, sector, bad, aoe.ATAErrUNC)
			check("FLUSH CACHE EXT failing", aoe.ATAFlushCacheExt, nil, bad, aoe.ATAErrUNC)
			check("FLUSH CACHE failing", aoe.ATAFlushCache, nil, bad, aoe.ATAErrUNC)
			set(nil, nil)
			check("write", aoe.ATAWriteSectorsExt, sector, ok, 0)
			check("FLUSH CACHE EXT", aoe.ATAFlushCacheExt, nil, ok, 0)
			got := make([]byte, 512)
			if err := l.in.ReadAt(context.Background(), &l.tgt, got, 3, 1); err != nil || !bytes.Equal(got, sector) {
				t.Fatalf("read back after errors: %v", err)
			}
		})
	}
}

// TestLiveAllocs measures heap allocations per request of the whole
// exchange (initiator and target in this process): reads, durable writes
// written inline (memory device) and durable writes through the write
// stage (a device that is not inline). None may allocate.
func TestLiveAllocs(t *testing.T) {
	const count, window = 4000, 16
	run := func(l *live, write bool) float64 {
		ios := make([]aoe.IO, window)
		free := make([]*aoe.IO, 0, window)
		for i := range ios {
			ios[i].Buf, ios[i].Write = make([]byte, l.tgt.Payload), write
			free = append(free, &ios[i])
		}
		left := count
		var failed error
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		err := l.in.Pipe(context.Background(), &l.tgt, window, func() *aoe.IO {
			if left == 0 || len(free) == 0 {
				return nil
			}
			left--
			io := free[len(free)-1]
			free = free[:len(free)-1]
			io.LBA = uint64(left%(diskSectors/2)) * 2
			return io
		}, func(io *aoe.IO) {
			if io.Err != nil {
				failed = io.Err
			}
			free = append(free, io)
		})
		runtime.ReadMemStats(&after)
		if err != nil || failed != nil {
			t.Fatal(err, failed)
		}
		return float64(after.Mallocs-before.Mallocs) / count
	}
	mem := serveLive(t, aoe.TargetConfig{Device: blockdev.NewMemory(diskSize)})
	run(mem, false) // warm up
	got := map[string]float64{
		"reads":                 run(mem, false),
		"inline durable writes": run(mem, true),
	}
	staged := serveLive(t, aoe.TargetConfig{Device: newFakeDev()})
	run(staged, true)
	got["write-stage durable writes"] = run(staged, true)
	t.Logf("allocations per request (initiator and target): %v", got)
	for what, n := range got {
		if n > 0.05 {
			t.Errorf("%.3f allocations per request for %s, want 0", n, what)
		}
	}
}

// fuaDev is a fakeDev that is a blockdev.FUAWriter.
type fuaDev struct {
	*fakeDev
	fuas atomic.Int64
}

func (d *fuaDev) WriteAtFUA(p []byte, off int64) (int, error) {
	d.fuas.Add(1)
	return d.fakeDev.WriteAt(p, off)
}

// TestFUAWriterWritesDurably: with write_cache off, a device that can make
// each write durable as it is written (replicate.Primary) gets WriteAtFUA
// for every write and no Flush after them.
func TestFUAWriterWritesDurably(t *testing.T) {
	const window = 16
	dev := &fuaDev{fakeDev: newFakeDev()}
	l := serveLive(t, aoe.TargetConfig{Device: dev})
	data, err := l.writes(window, window)
	if err != nil {
		t.Fatal(err)
	}
	if got := dev.fuas.Load(); got != window {
		t.Fatalf("%d WriteAtFUA calls for %d writes", got, window)
	}
	if got := dev.get(func(d *fakeDev) int { return d.flushes }); got != 0 {
		t.Fatalf("%d flushes after FUA writes, want none", got)
	}
	l.checkData(data)
}

// TestReceivePaths: through the receive ring (where the kernel allows one,
// as here) and through recvmmsg, sending through the transmit ring and
// with sendmmsg, writes at window 1 and at a window that fills batches
// read back the same.
func TestReceivePaths(t *testing.T) {
	for _, ring := range []bool{true, false} {
		for _, tx := range []bool{true, false} {
			t.Run(fmt.Sprintf("ring=%v/tx=%v", ring, tx), func(t *testing.T) {
				aoe.SetRxRing(t, ring)
				aoe.SetTxRing(t, tx)
				l := serveLive(t, aoe.TargetConfig{Device: blockdev.NewMemory(diskSize)})
				if got := aoe.UsesRing(l.srv); got != ring {
					t.Fatalf("server receives through a ring: %v, want %v", got, ring)
				}
				if got := aoe.UsesTxRing(l.srv); got != tx {
					t.Fatalf("server sends through a ring: %v, want %v", got, tx)
				}
				for _, w := range []int{1, 64} {
					data, err := l.writes(300, w)
					if err != nil {
						t.Fatalf("window %d: %v", w, err)
					}
					l.checkData(data)
				}
			})
		}
	}
}

// TestNoTxRingOnVeth: by default a Server on a veth interface (which
// copies a ring frame's pages) sends with sendmmsg.
func TestNoTxRingOnVeth(t *testing.T) {
	l := serveLive(t, aoe.TargetConfig{Device: blockdev.NewMemory(diskSize)})
	if aoe.UsesTxRing(l.srv) {
		t.Fatal("server on a veth interface sends through a transmit ring")
	}
	data, err := l.writes(50, 4)
	if err != nil {
		t.Fatal(err)
	}
	l.checkData(data)
}
