package nbd

import (
	"bytes"
	"errors"
	"net"
	"testing"
)

// writesConn records every Write it is given, failing with err if set.
type writesConn struct {
	net.Conn
	writes [][]byte
	err    error
}

func (w *writesConn) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	w.writes = append(w.writes, bytes.Clone(p))
	return len(p), nil
}

// Outside a hold every write goes straight out; during one the writes go
// out together, in order, at release, or earlier when the buffer is full.
func TestTLSTransportHold(t *testing.T) {
	w := &writesConn{}
	tt := newTLSTransport(w)
	tt.Write([]byte("handshake"))
	if len(w.writes) != 1 {
		t.Fatalf("a write outside a hold was not sent at once: %q", w.writes)
	}

	tt.hold()
	for _, s := range []string{"one", "two", "three"} {
		if n, err := tt.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	if len(w.writes) != 1 {
		t.Fatalf("writes during a hold were sent before release: %q", w.writes)
	}
	if err := tt.release(); err != nil {
		t.Fatal(err)
	}
	if len(w.writes) != 2 || string(w.writes[1]) != "onetwothree" {
		t.Fatalf("release sent %q, want one write of onetwothree", w.writes[1:])
	}
	if err := tt.release(); err != nil || len(w.writes) != 2 {
		t.Fatalf("an empty release sent %q (err %v)", w.writes[2:], err)
	}

	// More than the buffer: sent in buffer-sized writes, nothing lost.
	w.writes = nil
	rec := bytes.Repeat([]byte("r"), tlsMaxRecord+22)
	tt.hold()
	n := 2*tlsWriteBuffer/len(rec) + 1
	for range n {
		tt.Write(rec)
	}
	tt.release()
	total := 0
	for _, b := range w.writes {
		if len(b) > tlsWriteBuffer {
			t.Errorf("a write of %d bytes, more than the buffer's %d", len(b), tlsWriteBuffer)
		}
		total += len(b)
	}
	if total != n*len(rec) || len(w.writes) < 3 {
		t.Errorf("%d writes of %d bytes in all, want %d bytes in at least 3", len(w.writes), total, n*len(rec))
	}
}

// A failed write fails every later write and release, so crypto/tls and
// the writer both see it.
func TestTLSTransportErrorSticks(t *testing.T) {
	broken := errors.New("connection reset")
	w := &writesConn{}
	tt := newTLSTransport(w)
	tt.hold()
	tt.Write([]byte("reply"))
	w.err = broken
	if err := tt.release(); !errors.Is(err, broken) {
		t.Fatalf("release = %v, want %v", err, broken)
	}
	w.err = nil
	if _, err := tt.Write([]byte("alert")); !errors.Is(err, broken) {
		t.Fatalf("Write after a failed release = %v, want %v", err, broken)
	}
	tt.hold()
	if err := tt.release(); !errors.Is(err, broken) {
		t.Fatalf("release after a failure = %v, want %v", err, broken)
	}
	if len(w.writes) != 0 {
		t.Errorf("sent %q after a failure", w.writes)
	}
}
