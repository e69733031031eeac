package nbd

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sync"
	"testing"
	"time"

	"github.com/tharsis/tharsis/blockdev"
	"github.com/tharsis/tharsis/internal/testutil"
)

// Tests of the limits that protect the server from its clients: the
// payload memory shared by all connections, the connection cap, and the
// request and idle timeouts.

// dialTCP connects a raw test client to a Server listening on addr.
func dialTCP(t *testing.T, addr string) *client {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(60 * time.Second))
	return &client{t: t, c: c, br: bufio.NewReader(c), reads: map[uint64]uint32{}}
}

// heapFromOS returns the memory the heap holds from the operating system
// (what counts in the RSS), without collecting first.
func heapFromOS() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapSys - ms.HeapReleased
}

// picked counts the server's connections that chose an export.
func picked(srv *Server) int {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	n := 0
	for c := range srv.conns {
		if c.hasPick {
			n++
		}
	}
	return n
}

func openConns(srv *Server) int {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	return len(srv.conns)
}

// TestMemoryBoundsPartialWrites: 40 clients each send all but the last byte
// of a 32 MiB WRITE. The server holds at most its memory budget of payload
// buffers (the others wait, unread, before anything is allocated for them),
// and gives the memory back to the OS once the clients are gone, without
// anyone collecting garbage.
func TestMemoryBoundsPartialWrites(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 256 MiB over loopback")
	}
	const conns, size = 40, 32 << 20
	mem := NewMemoryBudget(DefaultMemory)
	mem.trimDelay = 10 * time.Millisecond
	srv := &Server{Logger: quietLog, Memory: mem}
	addr := serveTCPServer(t, srv, Export{Name: "d", Device: blockdev.NewMemory(size)})
	payload := make([]byte, size-1) // shared by all clients
	hdr := (&request{typ: cmdWrite, handle: 1, length: size}).appendBinary(nil)

	base := testutil.HeapAfterGC()
	debug.FreeOSMemory()
	baseOS := heapFromOS()
	var clients []*client
	var wg sync.WaitGroup
	for range conns {
		k := dialTCP(t, addr)
		k.open("d", false)
		clients = append(clients, k)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := k.c.Write(hdr); err == nil {
				k.c.Write(payload) // blocks until the server reads it, or fails at close
			}
		}()
	}
	waitFor(t, "every connection in transmission", func() bool { return picked(srv) == conns })
	waitFor(t, "the budget spent", func() bool { return mem.InUse() == mem.Size() })
	heldOS := heapFromOS()
	held := testutil.HeapAfterGC()
	t.Logf("%d partial %d MiB writes: heap %d MiB above the start (budget %d MiB)", conns, size>>20, (held-base)>>20, mem.Size()>>20)
	if slack := uint64(32 << 20); held > base+uint64(mem.Size())+slack {
		t.Errorf("heap grew by %d MiB with %d partial writes, budget %d MiB + %d MiB slack",
			(held-base)>>20, conns, mem.Size()>>20, slack>>20)
	}
	if got := mem.InUse(); got > mem.Size() {
		t.Errorf("%d bytes in use, budget %d", got, mem.Size())
	}

	for _, k := range clients {
		k.c.Close()
	}
	wg.Wait()
	waitFor(t, "the connections closed", func() bool { return openConns(srv) == 0 })
	if got := mem.InUse(); got != 0 {
		t.Fatalf("%d bytes still in use after every connection closed", got)
	}
	waitFor(t, "the memory given back", func() bool { return mem.trims.Load() > 0 })
	afterOS := heapFromOS()
	t.Logf("heap memory from the OS: %d MiB at the start, %d MiB with the stalled writes, %d MiB after they left",
		baseOS>>20, heldOS>>20, afterOS>>20)
	if afterOS > baseOS+(32<<20) {
		t.Errorf("heap holds %d MiB from the OS after the clients left, %d MiB at the start", afterOS>>20, baseOS>>20)
	}
	after := testutil.HeapAfterGC()
	runtime.KeepAlive(payload)
	t.Logf("after the clients left: heap %d MiB above the start", int64(after-base)>>20)
	if after > base+(16<<20) {
		t.Errorf("heap still %d MiB above the start after the clients left", (after-base)>>20)
	}
}

// TestMemoryWaitNotCounted: a request waiting for memory held by another
// server's stalled client is not timed out for the wait; the stalled
// client is, and that frees the memory.
func TestMemoryWaitNotCounted(t *testing.T) {
	mem := NewMemoryBudget(1 << 20)
	stalled := &Server{Logger: quietLog, Memory: mem, MaxPayload: 1 << 20, RequestTimeout: 2 * time.Second}
	patient := &Server{Logger: quietLog, Memory: mem, MaxPayload: 1 << 20, RequestTimeout: 500 * time.Millisecond}
	la := startServer(t, stalled, Export{Name: "d", Device: blockdev.NewMemory(1 << 20)})
	dev := blockdev.NewMemory(1 << 20)
	lb := startServer(t, patient, Export{Name: "d", Device: dev})

	a := dial(t, la)
	a.open("d", false)
	a.write((&request{typ: cmdWrite, handle: 1, length: 1 << 20}).appendBinary(nil))
	a.write(make([]byte, 1000)) // and no more
	waitFor(t, "a's share granted", func() bool { return mem.InUse() == 1<<20 })

	b := dial(t, lb)
	b.open("d", false)
	b.write((&request{typ: cmdWrite, handle: 2, length: 4096}).appendBinary(nil))
	a.expectClosed() // after a's request timeout, longer than b's
	b.write(pattern(4096, 9))
	if r := b.recv(); r.errno != 0 || r.handle != 2 {
		t.Fatalf("write after waiting for memory: %v", r)
	}
	got := make([]byte, 4096)
	dev.ReadAt(got, 0)
	if string(got) != string(pattern(4096, 9)) {
		t.Fatal("the write that waited for memory did not reach the device")
	}
	waitFor(t, "the budget given back", func() bool { return mem.InUse() == 0 })
}

// TestShutdownWhileWaitingForMemory: a connection waiting for memory ends
// at Shutdown even while the memory stays held.
func TestShutdownWhileWaitingForMemory(t *testing.T) {
	gate := make(chan struct{})
	dev := &faultyDevice{Device: blockdev.NewMemory(1 << 20), gates: map[int64]chan struct{}{0: gate}, entered: make(chan int64, 1)}
	mem := NewMemoryBudget(64 << 10)
	srv := &Server{Logger: quietLog, Memory: mem, MaxPayload: 64 << 10}
	srv.SetExports([]Export{{Name: "d", Device: dev}})
	l := newPipeListener()
	go srv.Serve(l)

	a := dial(t, l)
	a.open("d", false)
	a.send(cmdRead, 0, 1, 0, 64<<10, nil) // holds the budget while the device is stuck
	waitEntered(t, dev.entered, 0)
	b := dial(t, l)
	b.open("d", false)
	b.write((&request{typ: cmdWrite, handle: 2, offset: 4096, length: 4096}).appendBinary(nil))

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		done <- srv.Shutdown(ctx)
	}()
	b.expectClosed() // while a's read still holds the memory
	if got := mem.InUse(); got != 64<<10 {
		t.Fatalf("%d bytes in use while a's read runs, want %d", got, 64<<10)
	}
	close(gate)
	if r := a.recv(); r.errno != 0 || r.handle != 1 {
		t.Fatalf("read answered during Shutdown: %v", r)
	}
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if got := mem.InUse(); got != 0 {
		t.Fatalf("%d bytes in use after Shutdown", got)
	}
}

// greeted reads the server's greeting: the connection was admitted.
func greeted(t *testing.T, c net.Conn) bool {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b [18]byte
	_, err := io.ReadFull(c, b[:])
	return err == nil
}

func TestConnCap(t *testing.T) {
	logs := &testutil.Logs{}
	srv := &Server{Logger: slog.New(logs), MaxConns: 3}
	addr := serveTCPServer(t, srv, Export{Name: "d", Device: blockdev.NewMemory(1 << 20)})
	var open []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if !greeted(t, c) {
			t.Fatal("connection under the cap refused")
		}
		open = append(open, c)
	}
	for range 10 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if greeted(t, c) {
			t.Fatal("connection over the cap greeted")
		}
		c.Close()
	}
	if n := logs.Count("connection limit reached"); n != 1 {
		t.Errorf("burst of 10 refusals logged %d times, want once", n)
	}
	open[0].Close()
	waitFor(t, "a place free", func() bool { return openConns(srv) == 2 })
	k := dialTCP(t, addr)
	k.open("d", false)
	if r := k.do(cmdRead, 0, 1, 0, 4096, nil); r.errno != 0 {
		t.Fatalf("read on an admitted connection: %v", r)
	}
	if n := logs.Count("accepting connections again"); n != 1 {
		t.Errorf("end of the burst logged %d times, want once", n)
	}
}

// TestRequestTimeout: a request whose header or payload stops half-way is
// timed out and gives its memory back; a connection idle between requests
// is not (IdleTimeout is 0).
func TestRequestTimeout(t *testing.T) {
	mem := NewMemoryBudget(4 << 20)
	srv := &Server{Logger: quietLog, Memory: mem, RequestTimeout: 300 * time.Millisecond}
	l := startServer(t, srv, Export{Name: "d", Device: blockdev.NewMemory(1 << 20)})
	idle := dial(t, l)
	idle.open("d", true)

	hdr := (&request{typ: cmdWrite, handle: 1, length: 1 << 20}).appendBinary(nil)
	half := dial(t, l)
	half.open("d", true)
	half.write(hdr[:14])
	half.expectClosed()

	payload := dial(t, l)
	payload.open("d", true)
	payload.write(hdr)
	payload.write(make([]byte, 1000))
	payload.expectClosed()
	waitFor(t, "the stalled payload's memory given back", func() bool { return mem.InUse() == 0 })

	// idle has sent nothing for longer than the request timeout.
	if r := idle.do(cmdRead, 0, 2, 0, 4096, nil); r.errno != 0 {
		t.Fatalf("read on an idle connection: %v", r)
	}
}

func TestIdleTimeout(t *testing.T) {
	logs := &testutil.Logs{}
	srv := &Server{Logger: slog.New(logs), IdleTimeout: 200 * time.Millisecond}
	l := startServer(t, srv, Export{Name: "d", Device: blockdev.NewMemory(1 << 20)})
	k := dial(t, l)
	k.open("d", true)
	if r := k.do(cmdRead, 0, 1, 0, 4096, nil); r.errno != 0 {
		t.Fatalf("read: %v", r)
	}
	k.expectClosed()
	waitFor(t, "the idle close logged", func() bool { return logs.Count("closing connection") == 1 })
}

// TestPeerNbdcopySmallBudget: nbdcopy's four connections with 64 requests
// each still copy correctly through a budget of two requests, with the
// connection cap at what nbdcopy opens.
func TestPeerNbdcopySmallBudget(t *testing.T) {
	needTools(t, "nbdcopy", "nbdinfo")
	const size = 16 << 20
	srv := &Server{Logger: quietLog, MaxPayload: 256 << 10, Memory: NewMemoryBudget(512 << 10), MaxConns: 4, RequestTimeout: 5 * time.Second}
	addr := serveTCPServer(t, srv, Export{Name: "d", Device: blockdev.NewMemory(size)})
	uri := "nbd://" + addr + "/d"
	src, sum := randomFile(t, size)
	mustRun(t, "nbdcopy", "--no-extents", "--connections=4", src, uri)
	dst := filepath.Join(t.TempDir(), "back.img")
	mustRun(t, "nbdcopy", "--no-extents", "--connections=4", uri, dst)
	if fileSum(t, dst) != sum {
		t.Fatal("data read back through a small budget differs from what was written")
	}
	if v := nbdinfo(t, uri); len(v.Exports) != 1 || v.Exports[0].Size != size {
		t.Fatalf("nbdinfo: %+v", v)
	}
}

// TestMemoryBudgetTrim: memory is handed back once the budget is unused
// after a burst of at least trimAbove, not after small use or while in use.
func TestMemoryBudgetTrim(t *testing.T) {
	m := NewMemoryBudget(2 * trimAbove)
	m.trimDelay = time.Millisecond
	armed := func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.trimArmed
	}
	ctx := context.Background()
	m.acquire(ctx, 1<<20)
	m.release(1 << 20)
	if armed() {
		t.Fatal("trim armed after a small burst")
	}
	m.acquire(ctx, trimAbove)
	m.acquire(ctx, 4096)
	m.release(trimAbove)
	if armed() {
		t.Fatal("trim armed while the budget is in use")
	}
	m.release(4096)
	if !armed() {
		t.Fatal("trim not armed after a large burst ended")
	}
	waitFor(t, "the trim", func() bool { return m.trims.Load() == 1 })
	if m.peak.Load() != 0 || armed() {
		t.Fatalf("after the trim: peak %d, armed %v", m.peak.Load(), armed())
	}
	// A request larger than the budget takes all of it and gives it back.
	m.acquire(ctx, 4*trimAbove)
	if m.InUse() != m.Size() {
		t.Fatalf("in use %d, want the whole budget %d", m.InUse(), m.Size())
	}
	m.release(4 * trimAbove)
	if m.InUse() != 0 {
		t.Fatalf("in use %d after release", m.InUse())
	}
}
