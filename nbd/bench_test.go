package nbd

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/tharsis/tharsis/blockdev"
)

// benchConn opens a structured-reply connection over TCP loopback, over
// TLS (a Go client, the server's tls = "on") when useTLS.
func benchConn(b *testing.B, useTLS bool) (net.Conn, *bufio.Reader) {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := newServer()
	// Counted, as the appliance counts every export.
	e := Export{Name: "b", Device: blockdev.NewMemory(64 << 20), Stats: new(blockdev.Stats)}
	var pki *testPKI
	if useTLS {
		pki = newTestPKI(b)
		srv.SetTLSConfig(pki.server)
		e.TLS = TLSOn
	}
	srv.SetExports([]Export{e})
	go srv.Serve(l)
	b.Cleanup(func() { srv.Shutdown(b.Context()) })
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	k := &client{t: b, c: c, br: bufio.NewReaderSize(c, 1<<20), reads: map[uint64]uint32{}}
	if useTLS {
		k.greet(flagCFixedNewstyle | flagCNoZeroes)
		if err := k.startTLS(pki.clientConfig(nil)); err != nil {
			b.Fatal(err)
		}
		k.br = bufio.NewReaderSize(k.c, 1<<20)
	}
	k.negotiate("b", true)
	return k.c, k.br
}

// benchPipelined keeps depth requests of type typ in flight and reports
// requests per second; it reads the replies without allocating.
func benchPipelined(b *testing.B, typ command, size uint32, depth int, useTLS bool) {
	c, br := benchConn(b, useTLS)
	var payload []byte
	if typ == cmdWrite {
		payload = make([]byte, size)
	}
	reqs := make(chan uint64, depth)
	done := make(chan error, 1)
	go func() {
		var hdr [requestLen]byte
		for h := range reqs {
			r := request{typ: typ, handle: h, offset: (h * uint64(size)) % (64 << 20), length: size}
			r.appendBinary(hdr[:0])
			if _, err := c.Write(hdr[:]); err != nil {
				done <- err
				return
			}
			if payload != nil {
				if _, err := c.Write(payload); err != nil {
					done <- err
					return
				}
			}
		}
		done <- nil
	}()
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for i := range min(depth, b.N) {
		reqs <- uint64(i)
	}
	var hdr [chunkHeaderLen]byte
	for i := range b.N {
		if _, err := io.ReadFull(br, hdr[:4]); err != nil {
			b.Fatal(err)
		}
		skip := simpleReplyLen - 4
		if binary.BigEndian.Uint32(hdr[:]) == magicStructuredReply {
			if _, err := io.ReadFull(br, hdr[4:]); err != nil {
				b.Fatal(err)
			}
			skip = int(binary.BigEndian.Uint32(hdr[16:]))
		}
		if _, err := br.Discard(skip); err != nil {
			b.Fatal(err)
		}
		if next := i + depth; next < b.N {
			reqs <- uint64(next)
		}
	}
	close(reqs)
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

func BenchmarkRead4K(b *testing.B)    { benchPipelined(b, cmdRead, 4096, 32, false) }
func BenchmarkRead256K(b *testing.B)  { benchPipelined(b, cmdRead, 256<<10, 16, false) }
func BenchmarkWrite4K(b *testing.B)   { benchPipelined(b, cmdWrite, 4096, 32, false) }
func BenchmarkWrite256K(b *testing.B) { benchPipelined(b, cmdWrite, 256<<10, 16, false) }

// The same over TLS; the client's cryptography runs in this process too.
func BenchmarkTLSRead4K(b *testing.B)    { benchPipelined(b, cmdRead, 4096, 32, true) }
func BenchmarkTLSRead256K(b *testing.B)  { benchPipelined(b, cmdRead, 256<<10, 16, true) }
func BenchmarkTLSWrite4K(b *testing.B)   { benchPipelined(b, cmdWrite, 4096, 32, true) }
func BenchmarkTLSWrite256K(b *testing.B) { benchPipelined(b, cmdWrite, 256<<10, 16, true) }
