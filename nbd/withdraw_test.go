package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/tharsis/tharsis/blockdev"
	"github.com/tharsis/tharsis/internal/nbdclient"
)

// waitFor polls cond until it holds, failing the test after 10 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// withdrawn reports whether no handshake can pick name any more, that is
// whether Withdraw(name) has taken effect.
func withdrawn(srv *Server, name string) func() bool {
	return func() bool {
		_, ok := srv.lookup(name)
		return !ok
	}
}

// hasPicked reports whether some connection of srv has chosen name.
func hasPicked(srv *Server, name string) func() bool {
	return func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		for c := range srv.conns {
			if c.hasPick && c.picked == name {
				return true
			}
		}
		return false
	}
}

// sendRaw sends a READ request from a goroutine (so a server that no longer
// reads cannot block the test) and returns the result of the write. It does
// not take k.mu, which recv needs; the test must not write concurrently.
func sendRaw(k *client, handle uint64) <-chan error {
	r := request{typ: cmdRead, handle: handle, offset: 0, length: 4096}
	errc := make(chan error, 1)
	go func() {
		_, err := k.c.Write(r.appendBinary(nil))
		errc <- err
	}()
	return errc
}

func withdrawCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func listNames(k *client) []string {
	k.t.Helper()
	k.sendOpt(optList, nil)
	var names []string
	for {
		typ, data := k.optReply(optList)
		if typ == repAck {
			return names
		}
		if typ != repServer {
			k.t.Fatalf("LIST reply type %#x", typ)
		}
		n := binary.BigEndian.Uint32(data)
		names = append(names, string(data[4:4+n]))
	}
}

func TestWithdrawEndsOnlyItsConnections(t *testing.T) {
	srv := newServer()
	a, b := blockdev.NewMemory(1<<20), blockdev.NewMemory(1<<20)
	l := startServer(t, srv, Export{Name: "a", Device: a}, Export{Name: "b", Device: b})

	ka := dial(t, l)
	ka.open("a", true)
	kdef := dial(t, l) // the empty name chooses "a", the first export
	kdef.open("", false)
	kb := dial(t, l)
	kb.open("b", false)
	for i, k := range []*client{ka, kdef, kb} {
		if r := k.do(cmdWrite, 0, 1, 0, 4096, pattern(4096, byte(i))); r.errno != 0 {
			t.Fatalf("client %d write before Withdraw: %v", i, r)
		}
	}
	// A handshake that only asked about "a" has not chosen it.
	kh := dial(t, l)
	kh.greet(flagCFixedNewstyle | flagCNoZeroes)
	if final, _ := kh.info(optInfo, "a"); final != repAck {
		t.Fatalf("INFO a answered %#x", final)
	}

	// No names, or unknown ones, disturb nothing.
	if err := srv.Withdraw(withdrawCtx(t)); err != nil {
		t.Fatalf("Withdraw(): %v", err)
	}
	if err := srv.Withdraw(withdrawCtx(t), "nope"); err != nil {
		t.Fatalf("Withdraw(nope): %v", err)
	}

	if err := srv.Withdraw(withdrawCtx(t), "a"); err != nil {
		t.Fatalf("Withdraw(a): %v", err)
	}
	ka.expectClosed()
	kdef.expectClosed()
	if _, err := ka.c.Write(make([]byte, requestLen)); err == nil {
		t.Fatal("request on a withdrawn export's connection was accepted")
	}

	// The other export's connection keeps working.
	want := pattern(4096, 42)
	if r := kb.do(cmdWrite, cmdFlagFUA, 2, 8192, 4096, want); r.errno != 0 {
		t.Fatalf("b write after Withdraw(a): %v", r)
	}
	if r := kb.do(cmdRead, 0, 3, 8192, 4096, nil); r.errno != 0 || !bytes.Equal(r.data, want) {
		t.Fatalf("b read after Withdraw(a): %v", r)
	}

	// The handshake in progress goes on, without "a".
	if final, _ := kh.info(optGo, "a"); final != repErrUnknown {
		t.Fatalf("GO a after Withdraw answered %#x, want ERR_UNKNOWN", final)
	}
	if final, _ := kh.info(optGo, "b"); final != repAck {
		t.Fatalf("GO b after Withdraw(a) answered %#x", final)
	}
	if r := kh.do(cmdRead, 0, 4, 8192, 4096, nil); r.errno != 0 || !bytes.Equal(r.data, want) {
		t.Fatalf("read on b after a handshake that saw Withdraw(a): %v", r)
	}

	// A new handshake does not see "a"; the empty name now means "b".
	kn := dial(t, l)
	kn.greet(flagCFixedNewstyle | flagCNoZeroes)
	if got := listNames(kn); len(got) != 1 || got[0] != "b" {
		t.Fatalf("LIST after Withdraw(a) = %q, want [b]", got)
	}
	if final, _ := kn.info(optInfo, "a"); final != repErrUnknown {
		t.Fatalf("INFO a after Withdraw answered %#x, want ERR_UNKNOWN", final)
	}
	if final, _ := kn.info(optGo, "a"); final != repErrUnknown {
		t.Fatalf("GO a after Withdraw answered %#x, want ERR_UNKNOWN", final)
	}
	if final, _ := kn.info(optGo, ""); final != repAck {
		t.Fatalf("GO with the empty name after Withdraw(a) answered %#x", final)
	}
	if r := kn.do(cmdRead, 0, 1, 8192, 4096, nil); r.errno != 0 || !bytes.Equal(r.data, want) {
		t.Fatalf("the empty name does not reach b after Withdraw(a): %v", r)
	}

	// The device itself is untouched.
	got := make([]byte, 4096)
	if _, err := a.ReadAt(got, 0); err != nil || !bytes.Equal(got, pattern(4096, 1)) {
		t.Fatalf("withdrawn device lost its data (%v)", err)
	}
}

// TestWithdrawTCP runs Withdraw against the test client over TCP.
func TestWithdrawTCP(t *testing.T) {
	srv := newServer()
	addr := serveTCPServer(t, srv,
		Export{Name: "a", Device: blockdev.NewMemory(1 << 20)},
		Export{Name: "b", Device: blockdev.NewMemory(1 << 20)})
	ca, err := nbdclient.Dial(addr, "a")
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	cb, err := nbdclient.Dial(addr, "b")
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	if err := ca.WriteAt(pattern(4096, 1), 0, true); err != nil {
		t.Fatal(err)
	}

	if err := srv.Withdraw(withdrawCtx(t), "a"); err != nil {
		t.Fatalf("Withdraw: %v", err)
	}
	if err := ca.ReadAt(make([]byte, 4096), 0); err == nil {
		t.Fatal("request on the withdrawn export succeeded")
	}
	if err := cb.WriteAt(pattern(4096, 2), 0, true); err != nil {
		t.Fatalf("b after Withdraw(a): %v", err)
	}
	if _, err := nbdclient.Dial(addr, "a"); err == nil {
		t.Fatal("handshake for the withdrawn export succeeded")
	}
	c2, err := nbdclient.Dial(addr, "b")
	if err != nil {
		t.Fatalf("handshake for b after Withdraw(a): %v", err)
	}
	c2.Close()
}

// serveTCPServer is serveTCP with a caller's Server.
func serveTCPServer(t *testing.T, srv *Server, exports ...Export) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.SetExports(exports)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-errc; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return l.Addr().String()
}

func TestWithdrawAnswersInflightWrite(t *testing.T) {
	for _, structured := range []bool{false, true} {
		gate := make(chan struct{})
		dev := &faultyDevice{Device: blockdev.NewMemory(1 << 20),
			gates: map[int64]chan struct{}{4096: gate}, entered: make(chan int64, 8)}
		srv := newServer()
		l := startServer(t, srv, Export{Name: "d", Device: dev}, Export{Name: "other", Device: blockdev.NewMemory(1 << 20)})
		ko := dial(t, l)
		ko.open("other", structured)

		k := dial(t, l)
		k.open("d", structured)
		k.send(cmdWrite, cmdFlagFUA, 7, 4096, 4096, pattern(4096, 5))
		waitEntered(t, dev.entered, 4096)

		withdrawErr := make(chan error, 1)
		go func() { withdrawErr <- srv.Withdraw(withdrawCtx(t), "d") }()
		waitFor(t, "Withdraw to take effect", withdrawn(srv, "d"))
		// The connection no longer reads requests: this one is never
		// read, and its write fails when the server closes.
		sent := sendRaw(k, 8)
		select {
		case err := <-withdrawErr:
			close(gate)
			t.Fatalf("Withdraw returned (%v) while a write was in flight", err)
		default:
		}
		// The other export's connection is not disturbed meanwhile.
		if r := ko.do(cmdWrite, 0, 1, 0, 4096, pattern(4096, 6)); r.errno != 0 {
			t.Fatalf("other export during Withdraw: %v", r)
		}

		close(gate)
		if r := k.recv(); r.handle != 7 || r.errno != 0 {
			t.Fatalf("in-flight write answered %v, want success", r)
		}
		k.expectClosed()
		if err := <-sent; err == nil {
			t.Fatal("request sent after Withdraw was read")
		}
		if err := <-withdrawErr; err != nil {
			t.Fatalf("Withdraw: %v", err)
		}
		got := make([]byte, 4096)
		dev.ReadAt(got, 4096)
		if !bytes.Equal(got, pattern(4096, 5)) {
			t.Fatal("acknowledged write not on the device")
		}
		if r := ko.do(cmdRead, 0, 2, 0, 4096, nil); r.errno != 0 || !bytes.Equal(r.data, pattern(4096, 6)) {
			t.Fatalf("other export after Withdraw: %v", r)
		}
	}
}

func TestWithdrawDeadlineClosesHard(t *testing.T) {
	gate := make(chan struct{})
	defer close(gate) // before the cleanup's Shutdown, which drains
	dev := &faultyDevice{Device: blockdev.NewMemory(1 << 20),
		gates: map[int64]chan struct{}{0: gate}, entered: make(chan int64, 8)}
	srv := newServer()
	l := startServer(t, srv, Export{Name: "d", Device: dev}, Export{Name: "other", Device: blockdev.NewMemory(1 << 20)})
	ko := dial(t, l)
	ko.open("other", true)
	k := dial(t, l)
	k.open("d", true)
	k.send(cmdRead, 0, 1, 0, 4096, nil)
	waitEntered(t, dev.entered, 0)

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := srv.Withdraw(ctx, "d"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Withdraw with a stuck device returned %v, want context.DeadlineExceeded", err)
	}
	k.expectClosed()
	if r := ko.do(cmdRead, 0, 2, 0, 4096, nil); r.errno != 0 {
		t.Fatalf("other export after a hard Withdraw: %v", r)
	}
	if !withdrawn(srv, "d")() {
		t.Fatal("export still offered after a Withdraw that timed out")
	}
}

// TestWithdrawRacesGo covers a client whose NBD_OPT_GO picked the export
// before Withdraw but whose transmission phase begins after it: the choice
// is committed (the client gets its ACK), and the connection ends without
// reading a request.
func TestWithdrawRacesGo(t *testing.T) {
	for _, opt := range []uint32{optGo, optExportName} {
		srv := newServer()
		l := startServer(t, srv, Export{Name: "a", Device: blockdev.NewMemory(1 << 20)})
		k := dial(t, l)
		k.greet(flagCFixedNewstyle | flagCNoZeroes)
		// The server picks "a", then blocks sending its reply: net.Pipe
		// is unbuffered and the client does not read yet.
		if opt == optGo {
			k.sendOpt(optGo, appendInfoRequest(nil, infoRequest{name: "a"}))
		} else {
			k.sendOpt(optExportName, []byte("a"))
		}
		waitFor(t, "the server to pick a", hasPicked(srv, "a"))

		withdrawErr := make(chan error, 1)
		go func() { withdrawErr <- srv.Withdraw(withdrawCtx(t), "a") }()
		waitFor(t, "Withdraw to take effect", withdrawn(srv, "a"))

		if opt == optGo {
			for {
				typ, _ := k.optReply(optGo)
				if typ == repAck {
					break
				}
				if typ != repInfo {
					t.Fatalf("GO answered %#x", typ)
				}
			}
		} else {
			k.readN(10)
		}
		sent := sendRaw(k, 1)
		k.expectClosed()
		if err := <-sent; err == nil {
			t.Fatal("request after Withdraw was read")
		}
		if err := <-withdrawErr; err != nil {
			t.Fatalf("Withdraw: %v", err)
		}
	}
}

func TestAddExport(t *testing.T) {
	srv := newServer()
	l := startServer(t, srv, Export{Name: "a", Device: blockdev.NewMemory(4096)})
	old := dial(t, l)
	old.open("a", true)

	srv.AddExport(Export{Name: "b", Device: blockdev.NewMemory(8192)})
	srv.AddExport(Export{Name: "nil"}) // ignored
	k := dial(t, l)
	k.greet(flagCFixedNewstyle | flagCNoZeroes)
	if got := listNames(k); len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Fatalf("LIST after AddExport(b) = %q, want [a b]", got)
	}

	// Replacing "a" keeps its place and the old connection's device.
	srv.AddExport(Export{Name: "a", Device: blockdev.NewMemory(16384)})
	if got := listNames(k); len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Fatalf("LIST after replacing a = %q, want [a b]", got)
	}
	if _, infos := k.info(optInfo, "a"); binary.BigEndian.Uint64(infos[infoExport]) != 16384 {
		t.Fatalf("replaced export a has size %d, want 16384", binary.BigEndian.Uint64(infos[infoExport]))
	}
	if r := old.do(cmdRead, 0, 1, 0, 4096, nil); r.errno != 0 {
		t.Fatalf("old connection after replacing its export: %v", r)
	}
	if r := old.do(cmdRead, 0, 2, 4096, 4096, nil); r.errno != errInval {
		t.Fatalf("old connection sees the new device: %v", r)
	}

	// Withdraw then AddExport swaps the device behind a name.
	if err := srv.Withdraw(withdrawCtx(t), "b"); err != nil {
		t.Fatal(err)
	}
	srv.AddExport(Export{Name: "b", Device: blockdev.NewMemory(32768)})
	if final, infos := k.info(optGo, "b"); final != repAck || binary.BigEndian.Uint64(infos[infoExport]) != 32768 {
		t.Fatalf("GO b after the swap answered %#x, size %d", final, binary.BigEndian.Uint64(infos[infoExport]))
	}
}
