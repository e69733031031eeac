package replicate

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tharsis/tharsis/blockdev"
	"github.com/tharsis/tharsis/internal/testutil"
)

const testZeroAhead = 1 << 20

// scanEnd scans the segment file at path as the newest of its log.
func scanEnd(t *testing.T, path string) SegmentInfo {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	n, _ := ParseSegmentName(filepath.Base(path))
	info, err := ScanSegment(f, st.Size(), n, ScanOptions{Newest: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// warnings collects the WARN and ERROR records of a logger.
type warnings struct {
	mu  sync.Mutex
	msg []string
}

func (w *warnings) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (w *warnings) Handle(_ context.Context, r slog.Record) error {
	w.mu.Lock()
	w.msg = append(w.msg, r.Message)
	w.mu.Unlock()
	return nil
}
func (w *warnings) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w *warnings) WithGroup(string) slog.Handler      { return w }

func (w *warnings) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.msg, "; ")
}

// TestZeroAheadSizes: with a log synced often, the current segment is
// written with zeros ahead of its records, yet every reader sees the end
// of the records: the scan (a zero tail, not torn), Status, LogSegments
// of the directory. Every segment sealed (rotation, recovery, CloseSealed)
// or closed is cut to its end; a crash loses nothing and warns of no torn
// tail.
func TestZeroAheadSizes(t *testing.T) {
	dir := t.TempDir()
	logDir := filepath.Join(dir, "log")
	mem := blockdev.NewMemory(devSize)
	warns := &warnings{}
	open := func() *Primary {
		return openTest(t, mem, logDir, func(o *Options) {
			o.Sync, o.ZeroAhead, o.Logger = true, testZeroAhead, slog.New(warns)
		})
	}
	p := open()
	want := make([]byte, devSize)
	n := 0
	write := func(count int) {
		for range count {
			b := bytes.Repeat([]byte{byte(n + 1)}, 4096)
			off := int64(n%200) * 4096
			if _, err := p.WriteAt(b, off); err != nil {
				t.Fatal(err)
			}
			copy(want[off:], b)
			n++
		}
	}
	checkLive := func(records int) {
		t.Helper()
		cur := filepath.Join(logDir, p.Status().Current)
		end := int64(records) * (HeaderSize + 4096)
		info := scanEnd(t, cur)
		if info.End != end || info.Torn != 0 || info.Zero == 0 {
			t.Fatalf("current segment scanned: end %d (want %d), torn %d, zeros %d (want some)", info.End, end, info.Torn, info.Zero)
		}
		if size := fileSize(t, cur); size < end+testZeroAhead/2 {
			t.Fatalf("current segment of %d bytes of records is %d bytes: no zeros written ahead", end, size)
		}
		st := p.Status()
		if got := st.Segments[len(st.Segments)-1].Size; got != end {
			t.Fatalf("status lists the current segment with %d bytes, want %d", got, end)
		}
		segs := LogSegments(logDir)
		if got := segs[len(segs)-1]; got.Size != end || got.Sealed {
			t.Fatalf("LogSegments lists the current segment as %+v, want %d bytes, unsealed", got, end)
		}
	}
	checkCut := func(path string, sealed bool) {
		t.Helper()
		info := scanEnd(t, path)
		if info.Sealed != sealed || info.Zero != 0 || info.Torn != 0 || fileSize(t, path) != info.End {
			t.Fatalf("segment %s: size %d, %+v; want it cut to its end, sealed %v", path, fileSize(t, path), info, sealed)
		}
	}

	write(20)
	checkLive(20)
	cur := filepath.Join(logDir, p.Status().Current)
	if err := p.Rotate(); err != nil {
		t.Fatal(err)
	}
	checkCut(cur, true)

	// A crash with zeros past the records: recovery finds every
	// acknowledged record, warns of nothing, and seals the segment to its
	// end.
	write(30)
	checkLive(30)
	cur = filepath.Join(logDir, p.Status().Current)
	p.crash()
	if info := scanEnd(t, cur); info.Zero == 0 {
		t.Fatalf("the crash left no zeros after the records of %s (%+v): the test tests nothing", cur, info)
	}
	if segs := LogSegments(logDir); segs[len(segs)-1].Size != 30*(HeaderSize+4096) {
		t.Fatalf("LogSegments after the crash lists %+v, want the end of the 30 records", segs[len(segs)-1])
	}
	p = open()
	// (A checkpoint after the rotation may have applied the first few.)
	if p.Replayed() > 30 || !bytes.Equal(mem.Bytes(), want) {
		t.Fatalf("replayed %d records after the crash (want at most 30), data intact %v", p.Replayed(), bytes.Equal(mem.Bytes(), want))
	}
	checkCut(cur, true)

	write(5)
	cur = filepath.Join(logDir, p.Status().Current)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	checkCut(cur, false)
	p = open()
	write(5)
	cur = filepath.Join(logDir, p.Status().Current)
	if _, err := p.CloseSealed(); err != nil {
		t.Fatal(err)
	}
	checkCut(cur, true)
	if w := warns.String(); w != "" {
		t.Fatalf("warnings: %s", w)
	}
}

// TestZeroTailScan: an all-zero tail of the newest segment is its end, not
// a torn tail; zeros where the applied position says records were synced,
// or zeros followed by a record that says they were synced, are
// corruption; zeros followed by other bytes are a torn tail.
func TestZeroTailScan(t *testing.T) {
	name := SegmentName{Seq: 3, Node: "alpha"}
	var seg []byte
	for i := range 3 {
		r := Record{Kind: KindWrite, Segment: 3, Seq: uint64(i + 1), Offset: 0, Length: 512, Payload: bytes.Repeat([]byte{byte(i + 1)}, 512)}
		seg, _ = r.AppendBinary(seg)
	}
	end := int64(len(seg))
	zeros := make([]byte, 8192)
	proof, _ := (&Record{Kind: KindWrite, Segment: 3, Seq: 9, Length: 512, Payload: make([]byte, 512), Synced: end + 100}).AppendBinary(nil)
	noProof, _ := (&Record{Kind: KindWrite, Segment: 3, Seq: 9, Length: 512, Payload: make([]byte, 512), Synced: 0}).AppendBinary(nil)
	// A scan that read a large record first (its buffer grown past the
	// zeros it compares with) still reads a large zero tail.
	big, _ := (&Record{Kind: KindWrite, Segment: 3, Seq: 1, Length: 2 << 20, Payload: bytes.Repeat([]byte{9}, 2<<20)}).AppendBinary(nil)
	bigSeg := append(big, make([]byte, 3<<20)...)
	if info, err := ScanSegment(bytes.NewReader(bigSeg), int64(len(bigSeg)), name, ScanOptions{Newest: true}, nil); err != nil || info.End != int64(len(big)) || info.Zero != 3<<20 {
		t.Fatalf("a 2 MiB record and 3 MiB of zeros: %+v, %v", info, err)
	}
	for _, tc := range []struct {
		name    string
		tail    []byte
		durable int64
		zero    bool
		torn    bool
		corrupt bool
	}{
		{name: "zeros", tail: zeros, zero: true},
		{name: "short zeros", tail: zeros[:10], zero: true},
		{name: "zeros then bytes", tail: append(append([]byte{}, zeros...), 7), torn: true},
		{name: "zeros then an unsynced record", tail: append(append([]byte{}, zeros...), noProof...), torn: true},
		{name: "zeros then a record that says they were synced", tail: append(append([]byte{}, zeros...), proof...), corrupt: true},
		{name: "zeros before the applied position", tail: zeros, durable: end + 4096, corrupt: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := append(append([]byte{}, seg...), tc.tail...)
			info, err := ScanSegment(bytes.NewReader(b), int64(len(b)), name, ScanOptions{Newest: true, Durable: tc.durable}, nil)
			if tc.corrupt {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("scan: %v, %+v; want corruption", err, info)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if info.End != end || info.Records != 3 || (info.Zero != 0) != tc.zero || (info.Torn != 0) != tc.torn || info.Zero+info.Torn != int64(len(tc.tail)) {
				t.Fatalf("scan: %+v; want end %d, 3 records, zeros %v, torn %v", info, end, tc.zero, tc.torn)
			}
			// A sealed (not newest) segment has no zero tail.
			if _, err := ScanSegment(bytes.NewReader(b), int64(len(b)), name, ScanOptions{}, nil); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("scan as sealed: %v; want corruption", err)
			}
		})
	}
}

// TestZeroAheadFailureAppends: when zeros cannot be written (the
// filesystem is full), writes go on as plain appends.
func TestZeroAheadFailureAppends(t *testing.T) {
	fsys := newFaultFS()
	fsys.zeroErr = errENOSPC
	mem := blockdev.NewMemory(devSize)
	dir := t.TempDir()
	p := openTest(t, mem, dir, func(o *Options) { o.Sync = true; o.FS = fsys; o.ZeroAhead = 64 << 10 })
	for i := range 50 {
		if _, err := p.WriteAt(bytes.Repeat([]byte{1}, 4096), int64(i)*4096); err != nil {
			t.Fatalf("write with zero writes failing: %v", err)
		}
	}
	cur := filepath.Join(dir, p.Status().Current)
	if info := scanEnd(t, cur); info.Records != 50 || info.Torn != 0 {
		t.Fatalf("segment after failed zero writes: %+v", info)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if fsys.zeroWrites == 0 {
		t.Fatal("no zero write was tried: the test tests nothing")
	}
}

// TestZeroAheadCountsAsFree: zeros written past the records count as free
// space, so a write that fits in them is not refused although statfs
// counts them as used; without them the same write is refused. (Zeros are
// written only while the filesystem has ample room.)
func TestZeroAheadCountsAsFree(t *testing.T) {
	for _, ahead := range []int64{-1, testZeroAhead} {
		fsys := newFaultFS()
		p := openTest(t, blockdev.NewMemory(devSize), t.TempDir(), func(o *Options) {
			o.FS, o.NoEmergency, o.MinFree, o.ZeroAhead, o.Sync = fsys, true, 1<<20, ahead, true
		})
		p.w.mu.Lock()
		p.w.statfsMaxAge = 0
		p.w.mu.Unlock()
		// With room, a synced write gets zeros written ahead of it.
		if _, err := p.WriteAt(make([]byte, 4096), 0); err != nil {
			t.Fatal(err)
		}
		if ahead > 0 {
			// The sync stage writes them after the write's fdatasync.
			testutil.WaitFor(t, waitLimit, "zeros ahead of the synced write", func() bool {
				p.w.mu.Lock()
				defer p.w.mu.Unlock()
				return p.w.zeroCredit() >= testZeroAhead/2
			})
		}
		fsys.set(func(f *faultFS) { f.avail = 1<<20 + spaceReserve + 100 })
		_, err := p.WriteAt(make([]byte, 4096), 0)
		if ahead > 0 && err != nil || ahead < 0 && !errors.Is(err, blockdev.ErrNoSpace) {
			t.Fatalf("zero ahead %d: write of 4 KiB with 100 bytes over the minimum free: %v", ahead, err)
		}
		p.Close()
	}
}

// TestZeroAheadConcurrent: many writers and an fdatasync after each write
// while zeros are written ahead: no zero lands on a record (every record
// scans, in order, with its payload), under -race.
func TestZeroAheadConcurrent(t *testing.T) {
	dir := t.TempDir()
	mem := blockdev.NewMemory(devSize)
	fsys := newFaultFS()
	p := openTest(t, mem, dir, func(o *Options) { o.Sync = true; o.ZeroAhead = 256 << 10; o.SegmentSize = 4 << 20; o.FS = fsys })
	const writers, each = 8, 300
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				b := bytes.Repeat([]byte{byte(w*each + i)}, 4096)
				if _, err := p.WriteAt(b, int64(w*32+i%32)*4096); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if fsys.zeroWrites == 0 {
		t.Fatal("no zeros were written ahead: the test tests nothing")
	}
	mem2 := blockdev.NewMemory(devSize)
	n, _, err := Replay(dir, mem2, Position{}, ReplayOptions{})
	if err != nil || n != writers*each {
		t.Fatalf("replay of the log: %d records, %v; want %d", n, err, writers*each)
	}
	if !bytes.Equal(mem.Bytes(), mem2.Bytes()) {
		t.Fatal("the log replays to other data than was written")
	}
}

// TestZeroAheadSyncFailureIsSticky: the fdatasync after the zeros covers
// records too; when it fails, nothing is known about them (fsyncgate), so
// the log fails as it does when a record's own fdatasync fails, and no
// later write is acknowledged.
func TestZeroAheadSyncFailureIsSticky(t *testing.T) {
	fsys := newFaultFS()
	eio := errors.New("input/output error")
	fsys.zeroSyncErr = eio
	p := openTest(t, blockdev.NewMemory(devSize), t.TempDir(), func(o *Options) { o.Sync = true; o.FS = fsys; o.ZeroAhead = testZeroAhead })
	defer p.Close()
	var err error
	testutil.WaitFor(t, waitLimit, "a write refused after the zeros' fdatasync failed", func() bool {
		_, err = p.WriteAt(make([]byte, 4096), 0)
		return err != nil
	})
	if !errors.Is(err, eio) {
		t.Fatalf("write after the failed fdatasync: %v; want the fdatasync's error", err)
	}
	if fsys.zeroWrites == 0 {
		t.Fatal("no zeros were written: the test tests nothing")
	}
	if _, err := p.WriteAt(make([]byte, 4096), 4096); !errors.Is(err, eio) {
		t.Fatalf("a later write: %v; want the log failed for good", err)
	}
}

// TestZeroAheadRewindDuringZeros: a record write fails, and the segment is
// cut back, while the sync stage is writing zeros ahead; the zeros land
// after the cut, the writes after it are logged over the gap, nothing
// acknowledged is lost, and Close still cuts the segment to its records.
func TestZeroAheadRewindDuringZeros(t *testing.T) {
	fsys := newFaultFS()
	entered, gate := make(chan struct{}), make(chan struct{})
	var once sync.Once
	fsys.onZeroWrite = func(int64) { once.Do(func() { close(entered); <-gate }) }
	var opened sync.Once
	release := func() { opened.Do(func() { close(gate) }) }
	defer release() // (a failed test must not leave the sync stage held)
	mem := blockdev.NewMemory(devSize)
	dir := t.TempDir()
	p := openTest(t, mem, dir, func(o *Options) { o.FS = fsys; o.ZeroAhead = testZeroAhead; o.NoEmergency = true })
	want := make([]byte, devSize)
	n := 0
	write := func() error {
		b := bytes.Repeat([]byte{byte(n + 1)}, 4096)
		off := int64(n%200) * 4096
		n++
		_, err := p.WriteAt(b, off)
		if err == nil {
			copy(want[off:], b)
		}
		return err
	}
	for range 10 {
		if err := write(); err != nil {
			t.Fatal(err)
		}
	}
	// A flush's fdatasync covers little: the sync stage writes zeros
	// next, and is held there.
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-entered:
	case <-time.After(waitLimit):
		t.Fatal("the sync stage wrote no zeros after a small flush")
	}
	eio := errors.New("input/output error")
	fsys.set(func(f *faultFS) { f.writeErr = eio })
	if err := write(); !errors.Is(err, eio) {
		t.Fatalf("write with the log failing: %v", err)
	}
	fsys.set(func(f *faultFS) { f.writeErr = nil })
	release()
	for range 20 {
		if err := write(); err != nil {
			t.Fatalf("write after the failed one: %v", err)
		}
	}
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	cur := filepath.Join(dir, p.Status().Current)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if info := scanEnd(t, cur); info.Zero != 0 || info.Torn != 0 || fileSize(t, cur) != info.End || info.Records != 30 {
		t.Fatalf("segment after Close: size %d, %+v; want 30 records, cut to their end", fileSize(t, cur), info)
	}
	fresh := blockdev.NewMemory(devSize)
	if _, _, err := Replay(dir, fresh, Position{}, ReplayOptions{}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(fresh.Bytes(), want) || !bytes.Equal(mem.Bytes(), want) {
		t.Fatal("the log or the device lost an acknowledged write, or holds the failed one")
	}
}

// TestLogSegmentsZeroTail: the status of a log nobody has open lists the
// newest segment that holds anything up to the end of its records, zeros
// written ahead cut off, and sealed when a kill during the rotation left
// zeros after its end marker (and an empty next segment).
func TestLogSegmentsZeroTail(t *testing.T) {
	dir := t.TempDir()
	seg := func(seq uint64, sealed bool) []byte {
		var b []byte
		for i := range 3 {
			b, _ = (&Record{Kind: KindWrite, Segment: seq, Seq: seq*10 + uint64(i), Length: 512, Payload: bytes.Repeat([]byte{1}, 512)}).AppendBinary(b)
		}
		if sealed {
			b, _ = (&Record{Kind: KindSegmentEnd, Segment: seq, Seq: seq*10 + 3}).AppendBinary(b)
		}
		return b
	}
	write := func(seq uint64, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, SegmentName{Seq: seq, Node: "alpha"}.String()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	one, two := seg(1, true), seg(2, false)
	write(1, one)
	write(2, append(bytes.Clone(two), make([]byte, 8192)...))
	got := LogSegments(dir)
	if len(got) != 2 || got[0].Size != int64(len(one)) || !got[0].Sealed || got[1].Size != int64(len(two)) || got[1].Sealed {
		t.Fatalf("LogSegments = %+v; want %d bytes sealed, %d unsealed", got, len(one), len(two))
	}
	// Killed in the rotation: segment 2 sealed, zeros after its marker,
	// segment 3 created empty.
	sealed := seg(2, true)
	write(2, append(bytes.Clone(sealed), make([]byte, 8192)...))
	write(3, nil)
	got = LogSegments(dir)
	if len(got) != 3 || got[1].Size != int64(len(sealed)) || !got[1].Sealed || got[2].Size != 0 {
		t.Fatalf("LogSegments after a kill in the rotation = %+v; want segment 2 sealed at %d, segment 3 empty", got, len(sealed))
	}
}
