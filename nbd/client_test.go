package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// pipeListener is a net.Listener whose connections are net.Pipe pairs.
type pipeListener struct {
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{ch: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

func (l *pipeListener) dial() (net.Conn, error) {
	c1, c2 := net.Pipe()
	select {
	case l.ch <- c2:
		return c1, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

// startServer serves exports on a pipe listener and shuts the server down
// at the end of the test.
func startServer(t testing.TB, srv *Server, exports ...Export) *pipeListener {
	t.Helper()
	srv.SetExports(exports)
	l := newPipeListener()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-errc; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return l
}

// client is a minimal raw NBD client for tests.
type client struct {
	t          testing.TB
	c          net.Conn
	br         *bufio.Reader
	structured bool
	size       uint64
	flags      uint16
	reads      map[uint64]uint32 // handle -> length of pending simple reads
	mu         sync.Mutex        // guards writes to c
}

// reply is one decoded transmission reply.
type reply struct {
	handle uint64
	errno  uint32
	data   []byte
	msg    string
}

func dial(t testing.TB, l *pipeListener) *client {
	t.Helper()
	c, err := l.dial()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return &client{t: t, c: c, br: bufio.NewReader(c), reads: map[uint64]uint32{}}
}

func (k *client) readN(n int) []byte {
	k.t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(k.br, b); err != nil {
		k.t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

func (k *client) write(b []byte) {
	k.t.Helper()
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, err := k.c.Write(b); err != nil {
		k.t.Fatalf("write: %v", err)
	}
}

// greet reads the server greeting and answers with client flags.
func (k *client) greet(cflags uint32) {
	k.t.Helper()
	g := k.readN(18)
	if binary.BigEndian.Uint64(g) != magicInit || binary.BigEndian.Uint64(g[8:]) != magicOpt {
		k.t.Fatalf("bad greeting % x", g)
	}
	if f := binary.BigEndian.Uint16(g[16:]); f != flagFixedNewstyle|flagNoZeroes {
		k.t.Fatalf("handshake flags %#x, want FIXED_NEWSTYLE|NO_ZEROES", f)
	}
	k.write(binary.BigEndian.AppendUint32(nil, cflags))
}

func (k *client) sendOpt(opt uint32, data []byte) {
	k.t.Helper()
	h := optionHeader{option: opt, length: uint32(len(data))}
	k.write(append(h.appendBinary(nil), data...))
}

// optReply reads one option reply and checks it answers opt.
func (k *client) optReply(opt uint32) (typ uint32, data []byte) {
	k.t.Helper()
	h := k.readN(optionReplyHeadLen)
	if binary.BigEndian.Uint64(h) != magicOptReply {
		k.t.Fatalf("bad option reply magic % x", h)
	}
	if got := binary.BigEndian.Uint32(h[8:]); got != opt {
		k.t.Fatalf("reply for option %d, want %d", got, opt)
	}
	typ = binary.BigEndian.Uint32(h[12:])
	n := binary.BigEndian.Uint32(h[16:])
	if n > 1<<20 {
		k.t.Fatalf("option reply of %d bytes", n)
	}
	return typ, k.readN(int(n))
}

// info sends NBD_OPT_INFO or GO and collects the info replies until the
// final reply, whose type it returns.
func (k *client) info(opt uint32, name string, infos ...uint16) (final uint32, got map[uint16][]byte) {
	k.t.Helper()
	k.sendOpt(opt, appendInfoRequest(nil, infoRequest{name: name, infos: infos}))
	got = map[uint16][]byte{}
	final, replies := k.collect(opt, repInfo, 2)
	for _, data := range replies {
		got[binary.BigEndian.Uint16(data)] = data[2:]
	}
	return final, got
}

// collect reads the replies of type typ (each at least minLen bytes) to
// option opt up to the final reply of another type, whose type it returns.
func (k *client) collect(opt, typ uint32, minLen int) (final uint32, replies [][]byte) {
	k.t.Helper()
	for {
		t, data := k.optReply(opt)
		if t != typ {
			return t, replies
		}
		if len(data) < minLen {
			k.t.Fatalf("short reply of type %d to option %d: % x", typ, opt, data)
		}
		replies = append(replies, data)
	}
}

// open negotiates (optionally structured replies) and enters transmission
// on export name with NBD_OPT_GO.
func (k *client) open(name string, structured bool) {
	k.t.Helper()
	k.greet(flagCFixedNewstyle | flagCNoZeroes)
	k.negotiate(name, structured)
}

// negotiate is open after the greeting: it asks for structured replies if
// structured and enters transmission on export name with NBD_OPT_GO.
func (k *client) negotiate(name string, structured bool) {
	k.t.Helper()
	if structured {
		k.sendOpt(optStructuredReply, nil)
		if typ, _ := k.optReply(optStructuredReply); typ != repAck {
			k.t.Fatalf("STRUCTURED_REPLY answered %#x", typ)
		}
		k.structured = true
	}
	final, infos := k.info(optGo, name)
	if final != repAck {
		k.t.Fatalf("GO %q answered %#x", name, final)
	}
	e := infos[infoExport]
	if len(e) != 10 {
		k.t.Fatalf("INFO_EXPORT % x", e)
	}
	k.size = binary.BigEndian.Uint64(e)
	k.flags = binary.BigEndian.Uint16(e[8:])
}

// send sends one request (with payload for WRITE).
func (k *client) send(typ command, flags uint16, handle, offset uint64, length uint32, payload []byte) {
	k.t.Helper()
	r := request{flags: flags, typ: typ, handle: handle, offset: offset, length: length}
	if typ == cmdRead {
		k.mu.Lock()
		k.reads[handle] = length
		k.mu.Unlock()
	}
	k.write(append(r.appendBinary(nil), payload...))
}

// recv reads one complete reply (all chunks of a structured reply).
func (k *client) recv() reply {
	k.t.Helper()
	magic := binary.BigEndian.Uint32(k.readN(4))
	switch magic {
	case magicSimpleReply:
		h := k.readN(12)
		r := reply{errno: binary.BigEndian.Uint32(h), handle: binary.BigEndian.Uint64(h[4:])}
		k.mu.Lock()
		n, isRead := k.reads[r.handle]
		delete(k.reads, r.handle)
		k.mu.Unlock()
		if isRead && r.errno == 0 {
			r.data = k.readN(int(n))
		}
		return r
	case magicStructuredReply:
		var r reply
		for {
			h := k.readN(16)
			flags := binary.BigEndian.Uint16(h)
			typ := binary.BigEndian.Uint16(h[2:])
			r.handle = binary.BigEndian.Uint64(h[4:])
			n := binary.BigEndian.Uint32(h[12:])
			if n > 64<<20 {
				k.t.Fatalf("chunk of %d bytes", n)
			}
			p := k.readN(int(n))
			switch typ {
			case replyTypeOffsetData:
				r.data = append(r.data, p[8:]...)
			case replyTypeError:
				r.errno = binary.BigEndian.Uint32(p)
				ml := binary.BigEndian.Uint16(p[4:])
				r.msg = string(p[6 : 6+ml])
			case replyTypeBlockStatus:
				r.data = append(r.data, p...) // context ID and descriptors
			case replyTypeNone:
			default:
				k.t.Fatalf("unexpected chunk type %d", typ)
			}
			if flags&replyFlagDone != 0 {
				k.mu.Lock()
				delete(k.reads, r.handle)
				k.mu.Unlock()
				return r
			}
			if binary.BigEndian.Uint32(k.readN(4)) != magicStructuredReply {
				k.t.Fatal("chunk without structured magic")
			}
		}
	default:
		k.t.Fatalf("bad reply magic %#x", magic)
	}
	return reply{}
}

// do sends one request and waits for its reply.
func (k *client) do(typ command, flags uint16, handle, offset uint64, length uint32, payload []byte) reply {
	k.t.Helper()
	k.send(typ, flags, handle, offset, length, payload)
	r := k.recv()
	if r.handle != handle {
		k.t.Fatalf("reply for handle %d, want %d", r.handle, handle)
	}
	return r
}

// expectClosed waits until the server closes the connection.
func (k *client) expectClosed() {
	k.t.Helper()
	k.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, k.br)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrClosedPipe) {
		k.t.Fatalf("connection not closed by the server: %v", err)
	}
}

func (r reply) String() string {
	return fmt.Sprintf("handle %d errno %d (%s) %d bytes", r.handle, r.errno, r.msg, len(r.data))
}
