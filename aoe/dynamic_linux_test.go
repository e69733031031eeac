package aoe_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tharsis/tharsis/aoe"
	"github.com/tharsis/tharsis/blockdev"
	"github.com/tharsis/tharsis/internal/testutil"
)

// Targets added and removed at run time (aoe.Server.AddTarget and
// RemoveTarget): the other targets of the interface are not disturbed, a
// removed target answers nothing new but what it had received, and an
// added one is announced on the wire.

// queryConfig asks eSHELF.SLOT at dst for its config and reports whether
// it answered within wait.
func (l *live) queryConfig(in *aoe.Initiator, dst aoe.MAC, shelf uint16, slot uint8, wait time.Duration) bool {
	l.t.Helper()
	q, _ := (&aoe.Config{Version: aoe.Version}).AppendBinary(nil)
	_, err := in.Exchange(context.Background(), dst, shelf, slot, aoe.CmdConfig, q, wait, true)
	if err != nil && !errors.Is(err, aoe.ErrNoResponse) {
		l.t.Fatal(err)
	}
	return err == nil
}

// TestAddRemoveUnderLoad: while e1.1 carries a load of writes and reads
// (durable writes through the write stage and its committer), other
// targets are added, used and removed again and again, some large enough
// to grow the write stage and the receiving workers. Not one request of
// e1.1 may fail or go unanswered (the load's initiator never
// retransmits), and e1.1 holds exactly what was written.
func TestAddRemoveUnderLoad(t *testing.T) {
	l := serveLive(t, aoe.TargetConfig{Device: newFakeDev()})
	l.in.Timeout, l.in.Retries = 10*time.Second, 0
	framesBefore, workersBefore := aoe.StageSizes(l.srv)

	const region = 256 // frames of e1.1 the load cycles over
	want := make([]byte, region*l.tgt.Payload)
	var stop atomic.Bool
	var done atomic.Int64
	load := make(chan error, 1)
	go func() {
		// Each frame of the region is written, then read back, then
		// written again: every completion is checked at once.
		var (
			next    int
			pending = map[int][]byte{}
			failed  error
		)
		size := l.tgt.Payload
		err := l.in.Pipe(context.Background(), &l.tgt, 32, func() *aoe.IO {
			if stop.Load() || failed != nil {
				return nil
			}
			i := next % region
			next++
			if _, busy := pending[i]; busy {
				return nil // asked again when one completes
			}
			buf := make([]byte, size)
			write := (next/region)%2 == 0
			if write {
				rand.Read(buf)
			}
			pending[i] = buf
			return &aoe.IO{Write: write, LBA: uint64(i * size / aoe.SectorSize), Buf: buf, User: i}
		}, func(io *aoe.IO) {
			i := io.User.(int)
			delete(pending, i)
			done.Add(1)
			switch {
			case io.Err != nil:
				failed = errors.Join(failed, fmt.Errorf("e1.1 I/O (write %v) at sector %d: %w", io.Write, io.LBA, io.Err))
			case io.Write:
				copy(want[i*size:], io.Buf)
			case !bytes.Equal(io.Buf, want[i*size:(i+1)*size]):
				failed = errors.Join(failed, fmt.Errorf("e1.1 read at sector %d returned other data than written", io.LBA))
			}
		})
		load <- errors.Join(err, failed)
	}()
	testutil.WaitFor(t, 10*time.Second, "the load to get going", func() bool { return done.Load() > 500 })

	in2 := l.initiator()
	in2.Timeout = 2 * time.Second
	for round := range 12 {
		var added []uint8
		for k := range 3 {
			slot := uint8(2 + k)
			cfg := aoe.TargetConfig{Shelf: 1, Slot: slot, Device: blockdev.NewMemory(diskSize)}
			if round == 3 && k == 0 {
				cfg.BufCnt = 256 // grows the write stage and the workers
			}
			if err := l.srv.AddTarget(cfg); err != nil {
				t.Fatalf("round %d: add e1.%d: %v", round, slot, err)
			}
			added = append(added, slot)
		}
		if err := l.srv.AddTarget(aoe.TargetConfig{Shelf: 1, Slot: 1, Device: blockdev.NewMemory(diskSize)}); err == nil {
			t.Fatal("a second e1.1 was added")
		}
		// A discovery reaches every target (the broadcast fan-out). A
		// loaded machine may answer a 300 ms window late: ask again.
		var ts []aoe.TargetInfo
		testutil.WaitFor(t, 10*time.Second, fmt.Sprintf("round %d: discovery of %d targets", round, 1+len(added)), func() bool {
			var err error
			ts, err = in2.Discover(context.Background(), 300*time.Millisecond)
			return err == nil && len(ts) == 1+len(added)
		})
		for _, ti := range ts {
			if ti.Slot != 2 {
				continue
			}
			data := make([]byte, 4*ti.Payload)
			rand.Read(data)
			if err := in2.WriteAt(context.Background(), &ti, data, 8, 4); err != nil {
				t.Fatalf("round %d: write e1.2: %v", round, err)
			}
			got := make([]byte, len(data))
			if err := in2.ReadAt(context.Background(), &ti, got, 8, 4); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("round %d: read back e1.2: %v", round, err)
			}
		}
		for _, slot := range added {
			if _, err := l.srv.RemoveTarget(context.Background(), 1, slot); err != nil {
				t.Fatalf("round %d: remove e1.%d: %v", round, slot, err)
			}
		}
		if l.queryConfig(in2, l.tgt.MAC, 1, added[0], 200*time.Millisecond) {
			t.Fatalf("round %d: e1.%d answers after RemoveTarget", round, added[0])
		}
	}
	if _, err := l.srv.RemoveTarget(context.Background(), 1, 9); err == nil {
		t.Fatal("removing a target that is not served did not fail")
	}
	if frames, workers := aoe.StageSizes(l.srv); frames <= framesBefore || workers <= workersBefore {
		t.Errorf("write stage %d frames, %d workers after a target with bufcnt 256 came (%d, %d before)", frames, workers, framesBefore, workersBefore)
	}
	stop.Store(true)
	select {
	case err := <-load:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the load did not end within 30s")
	}
	t.Logf("%d requests to e1.1 while targets came and went", done.Load())
	l.checkData(want)
}

// TestRemoveAnswersInFlight: RemoveTarget stops routing at once (a new
// request gets no answer, another target still does) but returns only
// once the writes the target had received are written and answered; it
// returns the target's final state.
func TestRemoveAnswersInFlight(t *testing.T) {
	l := serveLive(t, aoe.TargetConfig{Device: blockdev.NewMemory(diskSize)})
	dev := newFakeDev()
	dev.gate = make(chan struct{})
	var once sync.Once
	open := func() { once.Do(func() { close(dev.gate) }) }
	defer open()
	if err := l.srv.AddTarget(aoe.TargetConfig{Shelf: 1, Slot: 2, Device: dev}); err != nil {
		t.Fatal(err)
	}
	in2 := l.initiator()
	in2.Timeout, in2.Retries = 20*time.Second, 0
	tgt := l.tgt
	tgt.Slot = 2
	const window = 8
	// A config string, so the final state has something to show.
	cfgSet, _ := (&aoe.Config{Version: aoe.Version, Command: aoe.ConfigSet, String: []byte("moved")}).AppendBinary(nil)
	if _, err := in2.Exchange(context.Background(), tgt.MAC, 1, 2, aoe.CmdConfig, cfgSet, time.Second, true); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, window*tgt.Payload)
	rand.Read(data)
	writes := make(chan error, 1)
	go func() { writes <- in2.WriteAt(context.Background(), &tgt, data, 0, window) }()
	testutil.WaitFor(t, 5*time.Second, "every write in WriteAt", func() bool {
		return dev.get(func(d *fakeDev) int { return d.inflight }) == window
	})
	type removed struct {
		st  aoe.State
		err error
	}
	rem := make(chan removed, 1)
	go func() {
		st, err := l.srv.RemoveTarget(context.Background(), 1, 2)
		rem <- removed{st, err}
	}()
	// Routing stops at once: wait until a new request goes unanswered.
	testutil.WaitFor(t, 5*time.Second, "e1.2 to stop answering", func() bool {
		return !l.queryConfig(l.in, tgt.MAC, 1, 2, 100*time.Millisecond)
	})
	if !l.queryConfig(l.in, tgt.MAC, 1, 1, time.Second) {
		t.Fatal("e1.1 does not answer while e1.2 is being removed")
	}
	select {
	case r := <-rem:
		t.Fatalf("RemoveTarget returned (%v) while writes were in WriteAt", r.err)
	case err := <-writes:
		t.Fatalf("the writes completed (%v) before the device let them", err)
	default:
	}
	open()
	select {
	case r := <-rem:
		if r.err != nil {
			t.Fatal(r.err)
		}
		if string(r.st.Config) != "moved" {
			t.Fatalf("final state %+v, want config string %q", r.st, "moved")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("RemoveTarget did not return within 20s of the writes completing")
	}
	select {
	case err := <-writes:
		if err != nil {
			t.Fatalf("writes in flight at RemoveTarget: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the writes in flight were not answered")
	}
	if got := dev.get(func(d *fakeDev) int { return d.writes }); got != window {
		t.Fatalf("%d writes reached the device, want %d", got, window)
	}

	// With writes held again, a deadline returns before they finish; the
	// target is gone all the same and finishes in the background.
	dev2 := newFakeDev()
	dev2.gate = make(chan struct{})
	if err := l.srv.AddTarget(aoe.TargetConfig{Shelf: 1, Slot: 3, Device: dev2}); err != nil {
		t.Fatal(err)
	}
	tgt.Slot = 3
	go func() { writes <- in2.WriteAt(context.Background(), &tgt, data[:tgt.Payload], 0, 1) }()
	testutil.WaitFor(t, 5*time.Second, "the write in WriteAt", func() bool {
		return dev2.get(func(d *fakeDev) int { return d.inflight }) == 1
	})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := l.srv.RemoveTarget(ctx, 1, 3); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("RemoveTarget with a write held past its deadline: %v", err)
	}
	close(dev2.gate)
	if err := <-writes; err != nil {
		t.Fatalf("the write held past RemoveTarget's deadline: %v", err)
	}
}

// announcements collects the announcements of eSHELF.SLOT that in hears
// until it has want of them or timeout passes, with their arrival times.
func announcements(t *testing.T, in *aoe.Initiator, shelf uint16, slot uint8, want int, timeout time.Duration) ([]aoe.Response, []time.Time) {
	t.Helper()
	var got []aoe.Response
	var at []time.Time
	deadline := time.Now().Add(timeout)
	for len(got) < want && time.Now().Before(deadline) {
		_, err := in.Collect(context.Background(), 20*time.Millisecond, func(r aoe.Response) bool {
			if r.Header.Command == aoe.CmdConfig && r.Header.Tag == 0 && r.Header.Shelf == shelf && r.Header.Slot == slot {
				got = append(got, r)
				at = append(at, time.Now())
			}
			return false
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return got, at
}

// TestAnnounceOnAdd: a target added to a running Server is announced on
// the wire as AnnounceAt says: an unsolicited Query Config response from
// the interface's MAC, for its shelf.slot, with its config string, to
// broadcast, or to each MAC of its Mac Mask list. The default schedule is
// 0, 0.5, 1, 2 and 4 s. RemoveTarget ends the announcements at once.
func TestAnnounceOnAdd(t *testing.T) {
	l := serveLive(t, aoe.TargetConfig{Device: blockdev.NewMemory(diskSize)})
	me := l.in.MAC()
	check := func(what string, rs []aoe.Response, n int, dst aoe.MAC, config string) {
		t.Helper()
		if len(rs) != n {
			t.Fatalf("%s: %d announcements, want %d", what, len(rs), n)
		}
		for _, r := range rs {
			var c aoe.Config
			if err := c.Decode(r.Arg); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			h := r.Header
			if h.Dst != dst || h.Src != l.tgt.MAC || h.Flags != aoe.FlagResponse || h.Version != aoe.Version ||
				string(c.String) != config || c.BufCnt != aoe.DefaultBufCnt || c.Sectors == 0 {
				t.Fatalf("%s: announcement %+v, config %+v; want from %s to %s with config string %q", what, h, c, l.tgt.MAC, dst, config)
			}
		}
	}

	// The default schedule, to broadcast, with a persisted config string.
	dir := t.TempDir()
	if err := aoe.SaveState(dir, 1, 2, aoe.State{Config: []byte("rack-7")}); err != nil {
		t.Fatal(err)
	}
	if err := l.srv.AddTarget(aoe.TargetConfig{Shelf: 1, Slot: 2, Device: blockdev.NewMemory(diskSize), StateDir: dir}); err != nil {
		t.Fatal(err)
	}
	rs, at := announcements(t, l.in, 1, 2, len(aoe.DefaultAnnounceAt), 10*time.Second)
	check("default schedule", rs, len(aoe.DefaultAnnounceAt), aoe.BroadcastMAC, "rack-7")
	for i, want := range aoe.DefaultAnnounceAt {
		// Timers never fire early; allow the first frame to be late.
		if got := at[i].Sub(at[0]); got < want-200*time.Millisecond {
			t.Errorf("announcement %d came %v after the first, want about %v", i, got, want)
		}
	}
	if rs, _ := announcements(t, l.in, 1, 2, 1, 600*time.Millisecond); len(rs) != 0 {
		t.Fatalf("%d announcements after the schedule ended", len(rs))
	}

	// A Mac Mask list: announced to each MAC on it instead (like vblade).
	l.srv.AnnounceAt = []time.Duration{0, 100 * time.Millisecond, 200 * time.Millisecond}
	other := aoe.MAC{2, 0, 0, 0, 0, 0x77}
	if err := aoe.SaveState(dir, 1, 3, aoe.State{Config: []byte("masked"), Masks: []aoe.MAC{me, other}}); err != nil {
		t.Fatal(err)
	}
	if err := l.srv.AddTarget(aoe.TargetConfig{Shelf: 1, Slot: 3, Device: blockdev.NewMemory(diskSize), StateDir: dir}); err != nil {
		t.Fatal(err)
	}
	rs, _ = announcements(t, l.in, 1, 3, 6, 5*time.Second)
	var toMe []aoe.Response
	for _, r := range rs {
		if r.Header.Dst == me {
			toMe = append(toMe, r)
		} else if r.Header.Dst != other {
			t.Fatalf("announcement to %s, not on the Mac Mask list", r.Header.Dst)
		}
	}
	check("to the Mac Mask list", toMe, 3, me, "masked")

	// Removed: no more announcements.
	l.srv.AnnounceAt = []time.Duration{0, 300 * time.Millisecond, 600 * time.Millisecond, 900 * time.Millisecond}
	if err := l.srv.AddTarget(aoe.TargetConfig{Shelf: 1, Slot: 4, Device: blockdev.NewMemory(diskSize)}); err != nil {
		t.Fatal(err)
	}
	if rs, _ := announcements(t, l.in, 1, 4, 1, 5*time.Second); len(rs) != 1 {
		t.Fatal("no announcement of e1.4")
	}
	if _, err := l.srv.RemoveTarget(context.Background(), 1, 4); err != nil {
		t.Fatal(err)
	}
	if rs, _ := announcements(t, l.in, 1, 4, 1, 1200*time.Millisecond); len(rs) != 0 {
		t.Fatalf("%d announcements of e1.4 after RemoveTarget", len(rs))
	}
}
