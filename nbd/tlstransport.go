package nbd

import (
	"net"
	"sync"
)

// Sizes of a tlsTransport's buffers.
const (
	// tlsWriteBuffer: records gathered by a batch go out in system calls
	// of this size (crypto/tls writes each 16 KiB record on its own).
	tlsWriteBuffer = 256 << 10
	// tlsGather: the writer's buffer for reply pieces shorter than a record.
	tlsGather = 64 << 10
	// tlsMaxRecord is the most plaintext one TLS record carries.
	tlsMaxRecord = 16 << 10
)

// tlsTransport is the connection under a server's tls.Conn. crypto/tls
// writes every record with its own system call: 128 writes for a 2 MiB
// READ reply. Between hold and release, tlsTransport gathers the records
// written into large writes; outside a hold, writes (the handshake, alerts,
// close_notify) pass straight through. A hold sends in order whatever
// crypto/tls writes meanwhile, from any goroutine (crypto/tls orders its
// records under its own lock). Reads pass through: buffering them below
// crypto/tls saved no CPU (bench/RESULTS.md).
type tlsTransport struct {
	net.Conn

	mu      sync.Mutex
	holding bool
	buf     []byte
	err     error // a failed write: every later write fails with it
}

func newTLSTransport(nc net.Conn) *tlsTransport {
	return &tlsTransport{Conn: nc}
}

// Write passes p through, or during a hold appends it to the buffer,
// sending the buffer first when p does not fit.
func (t *tlsTransport) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.err != nil {
		return 0, t.err
	}
	if !t.holding || len(p) > tlsWriteBuffer {
		if err := t.flushLocked(); err != nil {
			return 0, err
		}
		n, err := t.Conn.Write(p)
		t.err = err
		return n, err
	}
	if len(t.buf)+len(p) > tlsWriteBuffer {
		if err := t.flushLocked(); err != nil {
			return 0, err
		}
	}
	if t.buf == nil {
		t.buf = make([]byte, 0, tlsWriteBuffer)
	}
	t.buf = append(t.buf, p...)
	return len(p), nil
}

// hold gathers writes until release.
func (t *tlsTransport) hold() {
	t.mu.Lock()
	t.holding = true
	t.mu.Unlock()
}

// release sends what the hold gathered and ends it.
func (t *tlsTransport) release() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.holding = false
	return t.flushLocked()
}

func (t *tlsTransport) flushLocked() error {
	if t.err != nil || len(t.buf) == 0 {
		return t.err
	}
	_, t.err = t.Conn.Write(t.buf)
	t.buf = t.buf[:0]
	return t.err
}
