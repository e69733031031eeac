package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tharsis/tharsis/blockdev"
)

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

func newServer() *Server { return &Server{Logger: quietLog} }

// faultyDevice wraps a Device and can fail, panic or block its calls.
type faultyDevice struct {
	blockdev.Device
	err     atomic.Pointer[error] // returned by every call while set
	panics  atomic.Bool
	gates   map[int64]chan struct{} // ReadAt/WriteAt at these offsets wait for a token (or close)
	entered chan int64              // when non-nil, receives the offset of each call
	active  atomic.Int32
	maxSeen atomic.Int32
}

func (d *faultyDevice) enter(off int64) error {
	n := d.active.Add(1)
	for {
		m := d.maxSeen.Load()
		if n <= m || d.maxSeen.CompareAndSwap(m, n) {
			break
		}
	}
	if d.entered != nil {
		d.entered <- off
	}
	if g := d.gates[off]; g != nil {
		<-g
	}
	if d.panics.Load() {
		panic("faultyDevice: injected panic")
	}
	if p := d.err.Load(); p != nil {
		return *p
	}
	return nil
}

func (d *faultyDevice) ReadAt(p []byte, off int64) (int, error) {
	defer d.active.Add(-1)
	if err := d.enter(off); err != nil {
		return 0, err
	}
	return d.Device.ReadAt(p, off)
}

func (d *faultyDevice) WriteAt(p []byte, off int64) (int, error) {
	defer d.active.Add(-1)
	if err := d.enter(off); err != nil {
		return 0, err
	}
	return d.Device.WriteAt(p, off)
}

func (d *faultyDevice) Flush() error {
	if p := d.err.Load(); p != nil {
		return *p
	}
	return d.Device.Flush()
}

func (d *faultyDevice) fail(err error) {
	if err == nil {
		d.err.Store(nil)
		return
	}
	d.err.Store(&err)
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) + seed
	}
	return b
}

func TestHandshakeOptions(t *testing.T) {
	rw := blockdev.NewMemory(1 << 20)
	ro := blockdev.NewMemory(64 << 10)
	l := startServer(t, newServer(),
		Export{Name: "rw", Description: "read-write disk", Device: rw},
		Export{Name: "ro", Device: ro, ReadOnly: true})

	k := dial(t, l)
	k.greet(flagCFixedNewstyle | flagCNoZeroes)

	// LIST: one NBD_REP_SERVER per export, then ACK.
	k.sendOpt(optList, nil)
	var names []string
	for {
		typ, data := k.optReply(optList)
		if typ == repAck {
			break
		}
		if typ != repServer {
			t.Fatalf("LIST reply type %#x", typ)
		}
		n := binary.BigEndian.Uint32(data)
		names = append(names, string(data[4:4+n]))
	}
	if len(names) != 2 || names[0] != "rw" || names[1] != "ro" {
		t.Fatalf("LIST = %q, want [rw ro]", names)
	}
	// LIST with data is invalid.
	k.sendOpt(optList, []byte("x"))
	if typ, _ := k.optReply(optList); typ != repErrInvalid {
		t.Fatalf("LIST with data answered %#x", typ)
	}

	// Unknown and unsupported options are answered ERR_UNSUP, their data
	// skipped; an oversized option is skipped and answered ERR_TOO_BIG.
	k.sendOpt(99, bytes.Repeat([]byte{0xff}, 1000))
	if typ, _ := k.optReply(99); typ != repErrUnsup {
		t.Fatalf("option 99 answered %#x", typ)
	}
	k.sendOpt(optStartTLS, nil)
	if typ, _ := k.optReply(optStartTLS); typ != repErrUnsup {
		t.Fatalf("STARTTLS answered %#x", typ)
	}
	k.sendOpt(42, make([]byte, maxOptionLen+1))
	if typ, _ := k.optReply(42); typ != repErrTooBig {
		t.Fatalf("oversized option answered %#x", typ)
	}
	// Malformed INFO data.
	k.sendOpt(optInfo, []byte{0, 0, 0, 9, 'a'})
	if typ, _ := k.optReply(optInfo); typ != repErrInvalid {
		t.Fatalf("malformed INFO answered %#x", typ)
	}

	// INFO on rw with every info type.
	final, infos := k.info(optInfo, "rw", infoName, infoDescription, infoBlockSize)
	if final != repAck {
		t.Fatalf("INFO rw answered %#x", final)
	}
	e := infos[infoExport]
	if got := binary.BigEndian.Uint64(e); got != 1<<20 {
		t.Errorf("size %d", got)
	}
	wantRW := uint16(flagHasFlags | flagSendFlush | flagSendFUA | flagSendTrim | flagSendWriteZeroes | flagCanMultiConn)
	if got := binary.BigEndian.Uint16(e[8:]); got != wantRW {
		t.Errorf("rw flags %#x, want %#x", got, wantRW)
	}
	if string(infos[infoName]) != "rw" || string(infos[infoDescription]) != "read-write disk" {
		t.Errorf("name %q description %q", infos[infoName], infos[infoDescription])
	}
	bs := infos[infoBlockSize]
	if len(bs) != 12 || binary.BigEndian.Uint32(bs) != 1 || binary.BigEndian.Uint32(bs[4:]) != 4096 ||
		binary.BigEndian.Uint32(bs[8:]) != DefaultMaxPayload {
		t.Errorf("block sizes % x", bs)
	}

	// INFO on ro: READ_ONLY, no write features.
	_, infos = k.info(optInfo, "ro")
	if got := binary.BigEndian.Uint16(infos[infoExport][8:]); got != flagHasFlags|flagReadOnly|flagSendFlush|flagCanMultiConn {
		t.Errorf("ro flags %#x", got)
	}

	// Unknown name: ERR_UNKNOWN, and the handshake goes on with no export.
	if final, _ := k.info(optGo, "nope"); final != repErrUnknown {
		t.Fatalf("GO nope answered %#x", final)
	}
	// ABORT: ACK, then the server closes.
	k.sendOpt(optAbort, nil)
	if typ, _ := k.optReply(optAbort); typ != repAck {
		t.Fatalf("ABORT answered %#x", typ)
	}
	k.expectClosed()
}

func TestInfoThenGoUnknownDoesNotKeepExport(t *testing.T) {
	l := startServer(t, newServer(), Export{Name: "a", Device: blockdev.NewMemory(4096)})
	k := dial(t, l)
	k.greet(flagCFixedNewstyle | flagCNoZeroes)
	if final, _ := k.info(optInfo, "a"); final != repAck {
		t.Fatal("INFO a failed")
	}
	if final, _ := k.info(optGo, "b"); final != repErrUnknown {
		t.Fatalf("GO b answered %#x", final)
	}
	// Still in the handshake: another option is answered.
	k.sendOpt(optStructuredReply, nil)
	if typ, _ := k.optReply(optStructuredReply); typ != repAck {
		t.Fatalf("STRUCTURED_REPLY after failed GO answered %#x", typ)
	}
}

func TestExportNameOldClient(t *testing.T) {
	dev := blockdev.NewMemory(1 << 16)
	for _, noZeroes := range []bool{true, false} {
		l := startServer(t, newServer(), Export{Name: "old", Device: dev})
		k := dial(t, l)
		cflags := uint32(flagCFixedNewstyle)
		if noZeroes {
			cflags |= flagCNoZeroes
		}
		k.greet(cflags)
		k.sendOpt(optExportName, []byte("old"))
		n := 10
		if !noZeroes {
			n += 124
		}
		b := k.readN(n)
		if binary.BigEndian.Uint64(b) != 1<<16 {
			t.Fatalf("size %d", binary.BigEndian.Uint64(b))
		}
		if f := binary.BigEndian.Uint16(b[8:]); f&flagHasFlags == 0 || f&flagSendFlush == 0 {
			t.Fatalf("flags %#x", f)
		}
		if !bytes.Equal(b[10:], make([]byte, n-10)) {
			t.Fatal("padding not zero")
		}
		// The transmission phase works with simple replies.
		data := pattern(4096, 3)
		if r := k.do(cmdWrite, 0, 1, 4096, 4096, data); r.errno != 0 {
			t.Fatalf("write: %v", r)
		}
		if r := k.do(cmdRead, 0, 2, 4096, 4096, nil); r.errno != 0 || !bytes.Equal(r.data, data) {
			t.Fatalf("read: %v", r)
		}
		k.send(cmdDisc, 0, 3, 0, 0, nil)
		k.expectClosed()
	}
}

func TestExportNameUnknownCloses(t *testing.T) {
	l := startServer(t, newServer(), Export{Name: "a", Device: blockdev.NewMemory(4096)})
	k := dial(t, l)
	k.greet(flagCFixedNewstyle | flagCNoZeroes)
	k.sendOpt(optExportName, []byte("zzz"))
	k.expectClosed()
}

func TestDefaultExport(t *testing.T) {
	l := startServer(t, newServer(),
		Export{Name: "first", Device: blockdev.NewMemory(8192)},
		Export{Name: "second", Device: blockdev.NewMemory(4096)})
	k := dial(t, l)
	k.open("", true)
	if k.size != 8192 {
		t.Fatalf("empty name chose a %d-byte export, want the first (8192)", k.size)
	}
}

func TestUnknownClientFlagsClose(t *testing.T) {
	l := startServer(t, newServer(), Export{Name: "a", Device: blockdev.NewMemory(4096)})
	k := dial(t, l)
	k.greet(1 << 7)
	k.expectClosed()
}

func TestHandshakeTimeout(t *testing.T) {
	srv := newServer()
	srv.HandshakeTimeout = 50 * time.Millisecond
	l := startServer(t, srv, Export{Name: "a", Device: blockdev.NewMemory(4096)})
	k := dial(t, l)
	k.readN(18) // greeting; then say nothing
	k.expectClosed()
}

func TestTransmissionErrors(t *testing.T) {
	for _, structured := range []bool{false, true} {
		name := "simple"
		if structured {
			name = "structured"
		}
		t.Run(name, func(t *testing.T) {
			srv := newServer()
			srv.MaxPayload = 64 << 10
			const size = 1 << 20
			l := startServer(t, srv,
				Export{Name: "rw", Device: blockdev.NewMemory(size)},
				Export{Name: "ro", Device: blockdev.NewMemory(size), ReadOnly: true})
			k := dial(t, l)
			k.open("rw", structured)
			ro := dial(t, l)
			ro.open("ro", structured)

			tests := []struct {
				name    string
				k       *client
				typ     command
				flags   uint16
				off     uint64
				length  uint32
				payload []byte
				errno   uint32
			}{
				{"read past end", k, cmdRead, 0, size - 512, 1024, nil, errInval},
				{"read offset overflow", k, cmdRead, 0, 1 << 63, 512, nil, errInval},
				{"read offset huge", k, cmdRead, 0, ^uint64(0) - 100, 512, nil, errInval},
				{"write past end", k, cmdWrite, 0, size - 512, 1024, make([]byte, 1024), errNoSpc},
				{"write zeroes past end", k, cmdWriteZeroes, 0, size, 1, nil, errNoSpc},
				{"trim past end", k, cmdTrim, 0, size + 4096, 4096, nil, errInval},
				{"read over max payload", k, cmdRead, 0, 0, 64<<10 + 1, nil, errOverflow},
				{"write over max payload", k, cmdWrite, 0, 0, 64<<10 + 1, make([]byte, 64<<10+1), errOverflow},
				{"unknown command", k, 9, 0, 0, 512, nil, errInval},
				{"block status without contexts", k, cmdBlockStatus, 0, 0, 512, nil, errInval},
				{"unknown flag", k, cmdRead, 1 << 9, 0, 512, nil, errInval},
				{"DF not advertised", k, cmdRead, cmdFlagDF, 0, 512, nil, errInval},
				{"zero-length read", k, cmdRead, 0, 0, 0, nil, errInval},
				{"flush with length", k, cmdFlush, 0, 0, 512, nil, errInval},
				{"write to read-only", ro, cmdWrite, 0, 0, 512, make([]byte, 512), errPerm},
				{"FUA write to read-only", ro, cmdWrite, cmdFlagFUA, 0, 512, make([]byte, 512), errPerm},
				{"trim read-only", ro, cmdTrim, 0, 0, 512, nil, errPerm},
				{"zeroes read-only", ro, cmdWriteZeroes, 0, 0, 512, nil, errPerm},
			}
			for i, tc := range tests {
				r := tc.k.do(tc.typ, tc.flags, uint64(100+i), tc.off, tc.length, tc.payload)
				if r.errno != tc.errno {
					t.Errorf("%s: errno %d, want %d", tc.name, r.errno, tc.errno)
				}
				if r.data != nil {
					t.Errorf("%s: error reply carried %d data bytes", tc.name, len(r.data))
				}
				if structured && r.msg == "" {
					t.Errorf("%s: structured error without message", tc.name)
				}
				// The stream stays in sync: a valid request still works.
				want := pattern(512, byte(i))
				if tc.k == k {
					if r := k.do(cmdWrite, cmdFlagFUA, 1, 4096, 512, want); r.errno != 0 {
						t.Fatalf("after %s: write %v", tc.name, r)
					}
				} else {
					want = make([]byte, 512)
				}
				if r := tc.k.do(cmdRead, 0, 2, 4096, 512, nil); r.errno != 0 || !bytes.Equal(r.data, want) {
					t.Fatalf("after %s: read %v", tc.name, r)
				}
			}
			// Valid commands on the edges.
			if r := k.do(cmdFlush, 0, 3, 0, 0, nil); r.errno != 0 {
				t.Errorf("flush: %v", r)
			}
			if r := ro.do(cmdFlush, 0, 3, 0, 0, nil); r.errno != 0 {
				t.Errorf("flush ro: %v", r)
			}
			if r := k.do(cmdRead, 0, 4, size-512, 512, nil); r.errno != 0 || len(r.data) != 512 {
				t.Errorf("read last sector: %v", r)
			}
			if r := k.do(cmdWriteZeroes, cmdFlagFUA|cmdFlagNoHole, 5, 4096, 512, nil); r.errno != 0 {
				t.Errorf("write zeroes: %v", r)
			}
			if r := k.do(cmdRead, 0, 6, 4096, 512, nil); !bytes.Equal(r.data, make([]byte, 512)) {
				t.Errorf("zeroes not read back: %v", r)
			}
			k.do(cmdWrite, 0, 7, 0, 4096, pattern(4096, 9))
			if r := k.do(cmdTrim, 0, 8, 0, 4096, nil); r.errno != 0 {
				t.Errorf("trim: %v", r)
			}
			if r := k.do(cmdRead, 0, 9, 0, 4096, nil); !bytes.Equal(r.data, make([]byte, 4096)) {
				t.Errorf("trimmed range not zero: %v", r)
			}
			// A huge trim has no payload and is served, not refused by length.
			if r := k.do(cmdTrim, 0, 10, 0, size, nil); r.errno != 0 {
				t.Errorf("whole-device trim: %v", r)
			}
		})
	}
}

func TestDeviceErrors(t *testing.T) {
	dev := &faultyDevice{Device: blockdev.NewMemory(1 << 20)}
	l := startServer(t, newServer(), Export{Name: "d", Device: dev})
	for _, structured := range []bool{false, true} {
		k := dial(t, l)
		k.open("d", structured)
		for _, tc := range []struct {
			err   error
			errno uint32
		}{
			{errors.New("disk on fire"), errIO},
			{blockdev.ErrNoSpace, errNoSpc},
			{blockdev.ErrReadOnly, errPerm},
		} {
			dev.fail(tc.err)
			if r := k.do(cmdRead, 0, 1, 0, 4096, nil); r.errno != tc.errno || r.data != nil {
				t.Errorf("read with %v: %v, want errno %d", tc.err, r, tc.errno)
			}
			if r := k.do(cmdWrite, 0, 2, 0, 4096, make([]byte, 4096)); r.errno != tc.errno {
				t.Errorf("write with %v: %v, want errno %d", tc.err, r, tc.errno)
			}
			if r := k.do(cmdFlush, 0, 3, 0, 0, nil); r.errno != tc.errno {
				t.Errorf("flush with %v: %v, want errno %d", tc.err, r, tc.errno)
			}
			dev.fail(nil)
			if r := k.do(cmdRead, 0, 4, 0, 4096, nil); r.errno != 0 || len(r.data) != 4096 {
				t.Fatalf("connection unusable after %v: %v", tc.err, r)
			}
		}
		// A panicking device costs one EIO, not the connection.
		dev.panics.Store(true)
		if r := k.do(cmdRead, 0, 5, 0, 4096, nil); r.errno != errIO {
			t.Errorf("read on panicking device: %v", r)
		}
		if r := k.do(cmdWrite, 0, 6, 0, 4096, make([]byte, 4096)); r.errno != errIO {
			t.Errorf("write on panicking device: %v", r)
		}
		dev.panics.Store(false)
		if r := k.do(cmdRead, 0, 7, 0, 4096, nil); r.errno != 0 {
			t.Fatalf("connection unusable after panic: %v", r)
		}
	}
}

func TestConcurrentRepliesOutOfOrder(t *testing.T) {
	gateA := make(chan struct{})
	dev := &faultyDevice{Device: blockdev.NewMemory(1 << 20),
		gates: map[int64]chan struct{}{0: gateA}, entered: make(chan int64, 8)}
	l := startServer(t, newServer(), Export{Name: "d", Device: dev})
	for _, structured := range []bool{false, true} {
		k := dial(t, l)
		k.open("d", structured)
		// A blocks in the device; B, sent after it, is answered first.
		k.send(cmdRead, 0, 0xa, 0, 4096, nil)
		waitEntered(t, dev.entered, 0)
		k.send(cmdWrite, 0, 0xb, 8192, 4096, pattern(4096, 1))
		waitEntered(t, dev.entered, 8192)
		if r := k.recv(); r.handle != 0xb || r.errno != 0 {
			t.Fatalf("first reply %v, want handle 0xb", r)
		}
		gateA <- struct{}{}
		if r := k.recv(); r.handle != 0xa || r.errno != 0 || len(r.data) != 4096 {
			t.Fatalf("second reply %v, want handle 0xa with 4096 bytes", r)
		}
	}
}

func TestShutdownDrainsInflight(t *testing.T) {
	gate := make(chan struct{})
	dev := &faultyDevice{Device: blockdev.NewMemory(1 << 20),
		gates: map[int64]chan struct{}{4096: gate}, entered: make(chan int64, 8)}
	srv := newServer()
	srv.SetExports([]Export{{Name: "d", Device: dev}})
	l := newPipeListener()
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(l) }()

	k := dial(t, l)
	k.open("d", true)
	k.send(cmdWrite, cmdFlagFUA, 7, 4096, 4096, pattern(4096, 5))
	waitEntered(t, dev.entered, 4096)

	shutdownErr := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shutdownErr <- srv.Shutdown(ctx)
	}()
	if err := <-serveErr; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve returned %v, want ErrServerClosed", err)
	}
	select {
	case err := <-shutdownErr:
		t.Fatalf("Shutdown returned (%v) while a write was in flight", err)
	default:
	}
	close(gate)
	if r := k.recv(); r.handle != 7 || r.errno != 0 {
		t.Fatalf("in-flight write answered %v, want success", r)
	}
	k.expectClosed()
	if err := <-shutdownErr; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	got := make([]byte, 4096)
	dev.ReadAt(got, 4096)
	if !bytes.Equal(got, pattern(4096, 5)) {
		t.Fatal("drained write not on the device")
	}
	if err := srv.Serve(newPipeListener()); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve after Shutdown returned %v", err)
	}
}

func TestShutdownDeadlineClosesHard(t *testing.T) {
	gate := make(chan struct{})
	defer close(gate)
	dev := &faultyDevice{Device: blockdev.NewMemory(1 << 20),
		gates: map[int64]chan struct{}{0: gate}, entered: make(chan int64, 8)}
	srv := newServer()
	srv.SetExports([]Export{{Name: "d", Device: dev}})
	l := newPipeListener()
	go srv.Serve(l)
	k := dial(t, l)
	k.open("d", true)
	k.send(cmdRead, 0, 1, 0, 4096, nil)
	waitEntered(t, dev.entered, 0)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown with a stuck device returned %v, want context.Canceled", err)
	}
	k.expectClosed()
}

func TestInflightBound(t *testing.T) {
	gate := make(chan struct{})
	gates := map[int64]chan struct{}{}
	for i := range int64(8) {
		gates[i*4096] = gate
	}
	dev := &faultyDevice{Device: blockdev.NewMemory(1 << 20), gates: gates, entered: make(chan int64, 16)}
	srv := newServer()
	srv.MaxPayload = 4096
	srv.MaxInflight = 2 * 4096
	l := startServer(t, srv, Export{Name: "d", Device: dev})
	k := dial(t, l)
	k.open("d", true)

	sent := make(chan int, 8)
	go func() {
		for i := range 8 {
			r := request{typ: cmdWrite, handle: uint64(i), offset: uint64(i) * 4096, length: 4096}
			if _, err := k.c.Write(append(r.appendBinary(nil), pattern(4096, byte(i))...)); err != nil {
				return
			}
			sent <- i
		}
	}()
	// The first two writes run concurrently, so either may reach the
	// device first.
	t.Cleanup(func() {
		select {
		case <-gate:
		default:
			close(gate) // let Shutdown drain if the test failed early
		}
	})
	got := map[int64]bool{}
	for range 2 {
		select {
		case off := <-dev.entered:
			got[off] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("device entered only at %v after 10s, want 0 and 4096", got)
		}
	}
	if !got[0] || !got[4096] {
		t.Fatalf("device entered at %v, want 0 and 4096", got)
	}
	// Two writes hold the whole budget; the server reads no more payloads,
	// so the client cannot finish sending all eight.
	if n := len(sent); n >= 8 {
		t.Fatalf("server read all %d writes with a budget of two", n)
	}
	if got := dev.maxSeen.Load(); got > 2 {
		t.Fatalf("%d writes in the device at once, budget allows 2", got)
	}
	close(gate)
	seen := map[uint64]bool{}
	for range 8 {
		r := k.recv()
		if r.errno != 0 || seen[r.handle] {
			t.Fatalf("reply %v", r)
		}
		seen[r.handle] = true
	}
	if got := dev.maxSeen.Load(); got > 2 {
		t.Fatalf("%d writes in the device at once, budget allows 2", got)
	}
}

func TestSetExportsLiveReload(t *testing.T) {
	srv := newServer()
	a := blockdev.NewMemory(4096)
	l := startServer(t, srv, Export{Name: "a", Device: a})
	old := dial(t, l)
	old.open("a", true)

	srv.SetExports([]Export{{Name: "b", Device: blockdev.NewMemory(8192)}})
	k := dial(t, l)
	k.greet(flagCFixedNewstyle | flagCNoZeroes)
	if final, _ := k.info(optInfo, "a"); final != repErrUnknown {
		t.Fatalf("removed export a still offered (%#x)", final)
	}
	if final, _ := k.info(optGo, "b"); final != repAck {
		t.Fatalf("new export b not offered (%#x)", final)
	}
	// The old connection keeps its device.
	if r := old.do(cmdRead, 0, 1, 0, 4096, nil); r.errno != 0 {
		t.Fatalf("old connection after reload: %v", r)
	}
}

func TestBudget(t *testing.T) {
	b := newBudget(100, 3)
	b.acquire(60)
	b.acquire(40)
	done := make(chan struct{})
	go func() { b.acquire(1); close(done) }()
	select {
	case <-done:
		t.Fatal("acquire succeeded over the byte budget")
	default:
	}
	b.release(40)
	<-done
	b.acquire(0)
	got := make(chan struct{})
	go func() { b.acquire(0); close(got) }()
	select {
	case <-got:
		t.Fatal("acquire succeeded over the count budget")
	default:
	}
	b.release(60)
	<-got
	// One request bigger than the budget passes when nothing is in flight.
	c := newBudget(10, 3)
	c.acquire(1000)
	c.release(1000)
}

func TestBufPool(t *testing.T) {
	for _, n := range []int{0, 1, 4096, 4097, 1 << 20, 32 << 20} {
		p := getBuf(n)
		if len(*p) != n || cap(*p) < n || cap(*p)&(cap(*p)-1) != 0 {
			t.Fatalf("getBuf(%d): len %d cap %d", n, len(*p), cap(*p))
		}
		putBuf(p)
	}
	allocs := testing.AllocsPerRun(100, func() { putBuf(getBuf(4096)) })
	if allocs > 0 {
		t.Errorf("pooled buffer allocates %.1f times per use", allocs)
	}
}

func TestCheck(t *testing.T) {
	r := &request{typ: cmdRead, offset: 0, length: 512}
	if e, _ := check(r, 1024, false, 4096, false); e != 0 {
		t.Fatalf("valid read rejected: %d", e)
	}
	r = &request{typ: cmdWrite, offset: 1024, length: 1}
	if e, _ := check(r, 1024, false, 4096, false); e != errNoSpc {
		t.Fatalf("write at end: %d", e)
	}
}

func waitEntered(t *testing.T, ch <-chan int64, want int64) {
	t.Helper()
	select {
	case off := <-ch:
		if off != want {
			t.Fatalf("device entered at %d, want %d", off, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("device never entered at %d", want)
	}
}

// fuaMemory counts how a FUA write reaches it.
type fuaMemory struct {
	*blockdev.Memory
	fuas, flushes atomic.Int64
}

func (m *fuaMemory) WriteAtFUA(p []byte, off int64) (int, error) {
	m.fuas.Add(1)
	return m.Memory.WriteAt(p, off)
}

func (m *fuaMemory) Flush() error {
	m.flushes.Add(1)
	return m.Memory.Flush()
}

// TestFUAWrite: a write with FUA goes to a blockdev.FUAWriter as one
// WriteAtFUA (no Flush after it); a trim with FUA is followed by a Flush.
func TestFUAWrite(t *testing.T) {
	dev := &fuaMemory{Memory: blockdev.NewMemory(1 << 20)}
	l := startServer(t, newServer(), Export{Name: "a", Device: dev})
	k := dial(t, l)
	k.open("a", false)
	want := pattern(4096, 7)
	if r := k.do(cmdWrite, cmdFlagFUA, 1, 8192, 4096, want); r.errno != 0 {
		t.Fatalf("FUA write: %v", r)
	}
	if f, fl := dev.fuas.Load(), dev.flushes.Load(); f != 1 || fl != 0 {
		t.Fatalf("FUA write: %d WriteAtFUA, %d Flush; want 1, 0", f, fl)
	}
	if r := k.do(cmdRead, 0, 2, 8192, 4096, nil); r.errno != 0 || !bytes.Equal(r.data, want) {
		t.Fatalf("read back: %v", r)
	}
	if r := k.do(cmdTrim, cmdFlagFUA, 3, 0, 4096, nil); r.errno != 0 {
		t.Fatalf("FUA trim: %v", r)
	}
	if fl := dev.flushes.Load(); fl != 1 {
		t.Fatalf("FUA trim: %d Flush, want 1", fl)
	}
}
