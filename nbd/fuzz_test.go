package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"runtime"
	"testing"
	"time"

	"github.com/tharsis/tharsis/blockdev"
)

func FuzzRequest(f *testing.F) {
	for _, r := range []request{
		{typ: cmdRead, handle: 1, offset: 0, length: 4096},
		{typ: cmdWrite, flags: cmdFlagFUA, handle: 2, offset: 1 << 20, length: 512},
		{typ: cmdWriteZeroes, flags: cmdFlagNoHole, offset: ^uint64(0), length: ^uint32(0)},
		{typ: 42, flags: 0xffff},
		{typ: cmdBlockStatus, flags: cmdFlagReqOne, handle: 3, offset: 4096, length: ^uint32(0)},
		{typ: cmdBlockStatus, flags: cmdFlagDF, handle: 4, offset: 0, length: 0},
	} {
		f.Add(r.appendBinary(nil), int64(1<<20), false, true)
		f.Add(r.appendBinary(nil), int64(1<<40), true, false)
	}
	f.Add([]byte{0x25, 0x60, 0x95}, int64(0), true, false)
	f.Fuzz(func(t *testing.T, b []byte, size int64, readOnly, meta bool) {
		var r request
		if err := r.unmarshal(b); err != nil {
			return
		}
		enc := r.appendBinary(nil)
		if !bytes.Equal(enc, b[:requestLen]) {
			t.Fatalf("re-encoded % x, was % x", enc, b[:requestLen])
		}
		var r2 request
		if err := r2.unmarshal(enc); err != nil || r2 != r {
			t.Fatalf("round trip: %+v %v, want %+v", r2, err, r)
		}
		if size < 0 {
			size = -size
		}
		const maxPayload = 1 << 20
		errno, msg := check(&r, size, readOnly, maxPayload, meta)
		if errno != 0 {
			if msg == "" {
				t.Fatal("error without message")
			}
			return
		}
		// Whatever check admits is safe to execute.
		switch r.typ {
		case cmdFlush:
		case cmdRead, cmdWrite, cmdTrim, cmdWriteZeroes:
			if readOnly && r.typ != cmdRead {
				t.Fatalf("%s admitted on a read-only export", r.typ)
			}
			if err := blockdev.CheckRange(int64(r.offset), int64(r.length), size); err != nil || r.offset > uint64(size) {
				t.Fatalf("%s admitted out of range: %v", r.typ, err)
			}
			if (r.typ == cmdRead || r.typ == cmdWrite) && r.length > maxPayload {
				t.Fatalf("%s of %d bytes admitted", r.typ, r.length)
			}
		case cmdBlockStatus:
			if !meta {
				t.Fatal("BLOCK_STATUS admitted without a metadata context")
			}
			if r.length == 0 || r.offset > uint64(size) || uint64(r.length) > uint64(size)-r.offset {
				t.Fatalf("BLOCK_STATUS of [%d, +%d) admitted on %d bytes", r.offset, r.length, size)
			}
			if r.flags&^(cmdFlagFUA|cmdFlagReqOne) != 0 {
				t.Fatalf("BLOCK_STATUS flags %#x admitted", r.flags)
			}
		default:
			t.Fatalf("unknown %s admitted", r.typ)
		}
	})
}

func FuzzOption(f *testing.F) {
	f.Add(appendInfoRequest(nil, infoRequest{name: "data", infos: []uint16{infoName, infoBlockSize}}))
	f.Add(appendInfoRequest(nil, infoRequest{}))
	f.Add((&optionHeader{option: optGo, length: 12}).appendBinary(nil))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0})
	f.Add(appendMetaRequest(nil, metaRequest{name: "data", queries: []string{metaBaseAllocation, "qemu:dirty-bitmap:x", ""}}))
	f.Add(appendMetaRequest(nil, metaRequest{}))
	f.Add([]byte{0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		if m, err := parseMetaRequest(b); err == nil {
			if len(m.name) > maxStringLen {
				t.Fatalf("accepted a %d-byte name", len(m.name))
			}
			for _, q := range m.queries {
				if len(q) > maxStringLen {
					t.Fatalf("accepted a %d-byte query", len(q))
				}
			}
			if enc := appendMetaRequest(nil, m); !bytes.Equal(enc, b) {
				t.Fatalf("meta context request re-encoded % x, was % x", enc, b)
			}
		}
		var h optionHeader
		if err := h.unmarshal(b); err == nil {
			if enc := h.appendBinary(nil); !bytes.Equal(enc, b[:optionHeaderLen]) {
				t.Fatalf("option header re-encoded % x, was % x", enc, b[:optionHeaderLen])
			}
		}
		r, err := parseInfoRequest(b)
		if err != nil {
			return
		}
		if len(r.name) > maxStringLen {
			t.Fatalf("accepted a %d-byte name", len(r.name))
		}
		if enc := appendInfoRequest(nil, r); !bytes.Equal(enc, b) {
			t.Fatalf("info request re-encoded % x, was % x", enc, b)
		}
	})
}

// handshakePrefix is a valid client handshake choosing the default export,
// with structured replies and then base:allocation if asked for.
func handshakePrefix(structured bool, meta ...bool) []byte {
	b := binary.BigEndian.AppendUint32(nil, flagCFixedNewstyle|flagCNoZeroes)
	if structured {
		b = (&optionHeader{option: optStructuredReply}).appendBinary(b)
	}
	if len(meta) > 0 && meta[0] {
		q := appendMetaRequest(nil, metaRequest{queries: []string{metaBaseAllocation}})
		b = (&optionHeader{option: optSetMetaContext, length: uint32(len(q))}).appendBinary(b)
		b = append(b, q...)
	}
	data := appendInfoRequest(nil, infoRequest{infos: []uint16{infoBlockSize}})
	b = (&optionHeader{option: optGo, length: uint32(len(data))}).appendBinary(b)
	return append(b, data...)
}

func FuzzServe(f *testing.F) {
	var reqs []byte
	for i, r := range []request{
		{typ: cmdWrite, flags: cmdFlagFUA, handle: 1, offset: 512, length: 8},
		{typ: cmdRead, handle: 2, offset: 0, length: 4096},
		{typ: cmdRead, handle: 3, offset: 1 << 40, length: 4096},
		{typ: cmdTrim, handle: 4, offset: 0, length: 1 << 16},
		{typ: cmdBlockStatus, flags: cmdFlagReqOne, handle: 6, offset: 0, length: 1 << 20},
		{typ: cmdBlockStatus, handle: 7, offset: 4097, length: ^uint32(0)},
		{typ: cmdWrite, handle: 5, offset: 0, length: 1 << 30},
	} {
		reqs = r.appendBinary(reqs)
		if i == 0 {
			reqs = append(reqs, "12345678"...)
		}
	}
	f.Add(byte(1), reqs)
	f.Add(byte(3), reqs)
	f.Add(byte(0), handshakePrefix(true))
	f.Add(byte(0), append(handshakePrefix(false)[:4], (&optionHeader{option: optExportName, length: 1 << 30}).appendBinary(nil)...))
	f.Add(byte(1), (&request{typ: cmdDisc}).appendBinary(nil))
	f.Add(byte(7), reqs)
	f.Add(byte(5), reqs) // SET_META_CONTEXT refused without structured replies
	list := appendMetaRequest(nil, metaRequest{queries: []string{"base:", "x-other:thing"}})
	f.Add(byte(0), append(append(handshakePrefix(true)[:4], (&optionHeader{option: optListMetaContext, length: uint32(len(list))}).appendBinary(nil)...), list...))

	// Bits 8 and 16 of mode serve the export with tls = "on" or "require"
	// (STARTTLS, then whatever the fuzzer sends as a TLS handshake).
	starttls := binary.BigEndian.AppendUint32(nil, flagCFixedNewstyle)
	starttls = (&optionHeader{option: optStartTLS}).appendBinary(starttls)
	f.Add(byte(8), append(starttls, 0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5))
	f.Add(byte(16), append(starttls, (&optionHeader{option: optStartTLS}).appendBinary(nil)...))
	f.Add(byte(16), handshakePrefix(true))
	f.Add(byte(24), append(handshakePrefix(false)[:4], (&optionHeader{option: optExportName, length: 1}).appendBinary(nil)...))
	pki := newTestPKI(f)

	f.Fuzz(func(t *testing.T, mode byte, data []byte) {
		srv := &Server{Logger: quietLog, MaxPayload: 64 << 10, MaxInflight: 256 << 10}
		e := Export{Device: blockdev.NewMemory(1 << 20)}
		if mode&24 != 0 {
			srv.SetTLSConfig(pki.server)
			e.TLS = TLSOn
			if mode&16 != 0 {
				e.TLS = TLSRequire
			}
		}
		srv.SetExports([]Export{e})
		l := newPipeListener()
		go srv.Serve(l)

		c, err := l.dial()
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		drained := make(chan struct{})
		go func() {
			io.Copy(io.Discard, c)
			close(drained)
		}()
		in := data
		if mode&1 != 0 {
			in = append(handshakePrefix(mode&2 != 0, mode&4 != 0), data...)
		}
		c.Write(in) // fails once the server hangs up; that is fine
		c.Close()
		<-drained

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Fatalf("server did not finish the connection: %v", err)
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		if ms.HeapInuse > 1<<30 {
			t.Fatalf("heap grew to %d MiB", ms.HeapInuse>>20)
		}
	})
}
