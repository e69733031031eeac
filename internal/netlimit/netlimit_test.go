package netlimit

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/tharsis/tharsis/internal/testutil"
)

func TestGateBurst(t *testing.T) {
	logs := &testutil.Logs{}
	g := NewGate(2, slog.New(logs), "test")
	if !g.Enter() || !g.Enter() {
		t.Fatal("gate refused a connection under its cap")
	}
	for range 5 {
		if g.Enter() {
			t.Fatal("gate admitted a connection over its cap")
		}
	}
	if n := logs.Count("connection limit reached"); n != 1 {
		t.Errorf("5 refusals logged %d times, want once", n)
	}
	g.Leave()
	if !g.Enter() {
		t.Fatal("gate refused after a place was freed")
	}
	if n := logs.Count("accepting connections again"); n != 1 {
		t.Errorf("end of the burst logged %d times, want once", n)
	}
	if g.Enter() {
		t.Fatal("gate admitted a connection over its cap")
	}
	if n := logs.Count("connection limit reached"); n != 2 {
		t.Errorf("a second burst logged %d times in all, want twice", n)
	}
	if g.Open() != 2 || g.Max() != 2 {
		t.Errorf("Open %d Max %d, want 2 2", g.Open(), g.Max())
	}
	if NewGate(0, nil, "x").Max() != 1 {
		t.Error("a cap of 0 must admit one connection")
	}
}

// serve wraps a TCP listener and hands out the accepted connections.
func serve(t *testing.T, max int, handshake time.Duration) (*Listener, <-chan net.Conn) {
	t.Helper()
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := NewListener(tl, NewGate(max, slog.New(slog.DiscardHandler), "test"), handshake)
	ch := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(ch)
				return
			}
			ch <- c
		}
	}()
	t.Cleanup(func() { l.Close() })
	return l, ch
}

func dial(t *testing.T, l net.Listener) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func accepted(t *testing.T, ch <-chan net.Conn) net.Conn {
	t.Helper()
	select {
	case c := <-ch:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no connection accepted")
	}
	return nil
}

func TestListenerCap(t *testing.T) {
	l, ch := serve(t, 2, 0)
	dial(t, l)
	a := accepted(t, ch)
	dial(t, l)
	accepted(t, ch)
	over := dial(t, l)
	testutil.ClosedByPeer(t, over, "connection")
	if n := l.Gate().Open(); n != 2 {
		t.Fatalf("%d open, want 2", n)
	}
	a.Close()
	a.Close() // a second Close frees no second place
	if n := l.Gate().Open(); n != 1 {
		t.Fatalf("%d open after one close, want 1", n)
	}
	c := dial(t, l)
	s := accepted(t, ch)
	if _, err := s.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 2)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "hi" {
		t.Fatalf("admitted connection: %q %v", b, err)
	}
	if n := l.Gate().Open(); n != 2 {
		t.Fatalf("%d open, want 2", n)
	}
}

// TestListenerHandshake: a connection whose server never clears its
// deadline times out after the handshake timeout, even when the server asks
// for a longer one; a connection whose server cleared it does not.
func TestListenerHandshake(t *testing.T) {
	l, ch := serve(t, 10, 300*time.Millisecond)
	done := dial(t, l)
	fine := accepted(t, ch)
	dial(t, l)
	slow := accepted(t, ch)

	slow.SetDeadline(time.Now().Add(time.Hour)) // capped
	slow.SetReadDeadline(time.Time{})           // stays capped
	fine.SetDeadline(time.Now().Add(time.Hour))
	fine.SetDeadline(time.Time{}) // handshake done

	start := time.Now()
	_, err := slow.Read(make([]byte, 1))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read in a stalled handshake: %v, want a deadline error", err)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Fatalf("handshake deadline fired after %v", el)
	}
	// fine was accepted before slow, so its handshake time is over too.
	if _, err := done.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := fine.Read(b); err != nil || b[0] != 'x' {
		t.Fatalf("read after the handshake: %q %v", b, err)
	}
	// A deadline set after the handshake is not capped.
	if err := fine.SetReadDeadline(time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := done.Write([]byte("y")); err != nil {
		t.Fatal(err)
	}
	if _, err := fine.Read(b); err != nil || b[0] != 'y' {
		t.Fatalf("read after the handshake: %q %v", b, err)
	}
}
