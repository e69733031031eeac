package wire

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"
)

func samples() []Message {
	var n [NonceSize]byte
	for i := range n {
		n[i] = byte(i)
	}
	return []Message{
		&Hello{Node: "alpha", Nonce: n},
		&Challenge{Node: "beta", Nonce: n, MAC: n},
		&Response{MAC: n},
		&Welcome{},
		&Error{Code: CodeAuth, Message: "authentication failed"},
		&StatusRequest{},
		&Status{JSON: []byte(`{"node":"a"}`)},
		&Role{JSON: []byte(`{"kind":"handover-request"}`)},
		&Emergency{JSON: []byte(`{"resource":"r0"}`)},
		&Fetch{Resource: "r0", From: Position{Segment: 3, Offset: 4096, Seq: 77}},
		&Fetch{Resource: "r0", From: Position{Segment: 3, Offset: 4096, Seq: 77}, Accept: EncodingZstd.Bit()},
		&Fetch{Resource: "r0", From: Position{Segment: 3, Offset: 4096, Seq: 77}, Accept: EncodingZstd.Bit(), Designation: &Designation{Primary: "beta", Generation: 2}},
		&Fetch{Resource: "r0", From: Position{Segment: 3}, Designation: &Designation{Generation: 5}},
		&CompressedData{Segment: "log-000000003-alpha", Offset: 56, End: Position{3, 200, 9}, Encoding: EncodingZstd, RawLen: 7, Data: []byte("zstd")},
		&SegmentData{Segment: "log-000000003-alpha", Offset: 56, End: Position{3, 200, 9}, Data: []byte("records")},
		&Heartbeat{End: Position{1, 2, 3}},
		&Ack{Durable: Position{4, 5, 6}},
		&ChecksumRequest{Resource: "r0", ChunkSize: 1 << 20, First: 10, Count: 64},
		&Checksums{First: 10, Size: 1 << 30, Sums: bytes.Repeat([]byte{7}, 2*SumSize)},
		&ChunkRequest{Resource: "r0", ChunkSize: 1 << 20, Index: 5},
		&ChunkData{Index: 5, Data: []byte("chunk")},
	}
}

func TestRoundTrip(t *testing.T) {
	var stream bytes.Buffer
	for _, m := range samples() {
		b := AppendFrame(nil, m)
		got, n, err := DecodeFrame(b, MaxFrame)
		if err != nil || n != len(b) {
			t.Fatalf("%s: DecodeFrame = %v, %d, %v", m.Type(), got, n, err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("%s: round trip\n got %#v\nwant %#v", m.Type(), got, m)
		}
		stream.Write(b)
	}
	c := NewConn(&stream)
	c.Max = MaxFrame
	for _, m := range samples() {
		got, err := c.Recv()
		if err != nil {
			t.Fatalf("Recv %s: %v", m.Type(), err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("Recv %s: got %#v", m.Type(), got)
		}
	}
	if _, err := c.Recv(); err != io.EOF {
		t.Errorf("Recv at end = %v, want EOF", err)
	}
}

func TestTypeString(t *testing.T) {
	for ty := Type(1); ty <= typeMax; ty++ {
		if New(ty) == nil || New(ty).Type() != ty {
			t.Errorf("New(%d) wrong", ty)
		}
		if s := ty.String(); s == "" || s[0] == 't' && s[:4] == "type" {
			t.Errorf("type %d has no name: %q", ty, s)
		}
	}
	if Type(0).String() != "invalid" || Type(99).String() != "type(99)" {
		t.Error("bad names for invalid types")
	}
}

func TestHeaderErrors(t *testing.T) {
	good := AppendFrame(nil, &Fetch{Resource: "r", From: Position{}})
	mod := func(f func(b []byte)) []byte { b := bytes.Clone(good); f(b); return b }
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"short", good[:5], io.ErrUnexpectedEOF},
		{"magic", []byte("HTTP/1.1 200 OK\r\n"), ErrBadMagic},
		{"version", mod(func(b []byte) { b[8] = 9 }), ErrVersion},
		{"type", mod(func(b []byte) { b[9] = 0 }), ErrMalformed},
		{"flags", mod(func(b []byte) { b[10] = 1 }), ErrMalformed},
		{"too large", mod(func(b []byte) { b[7] = 0x7f }), ErrTooLarge},
		{"truncated body", good[:len(good)-1], io.ErrUnexpectedEOF},
		{"stray bytes", append(mod(func(b []byte) { b[4]++ }), 0), ErrMalformed},
	}
	for _, tt := range tests {
		if _, _, err := DecodeFrame(tt.b, MaxFrame); !errors.Is(err, tt.want) {
			t.Errorf("%s: err = %v, want %v", tt.name, err, tt.want)
		}
	}
	// Before authentication a big frame is refused before allocating.
	big := AppendFrame(nil, &Status{JSON: make([]byte, MaxHandshakeFrame+1)})
	c := NewConn(struct {
		io.Reader
		io.Writer
	}{bytes.NewReader(big), io.Discard})
	if _, err := c.Recv(); !errors.Is(err, ErrTooLarge) {
		t.Errorf("handshake limit: %v", err)
	}
	if len(c.rbuf) != 0 {
		t.Error("allocated before checking the length")
	}
}

// TestFetchCompat: the optional trailing fields of Fetch decode as nodes of
// each release send them, and a non-canonical or cut designation is
// malformed.
func TestFetchCompat(t *testing.T) {
	base := (&Fetch{Resource: "r0"}).AppendBody(nil)
	withAccept := (&Fetch{Resource: "r0", Accept: 2}).AppendBody(nil)
	withDes := (&Fetch{Resource: "r0", Accept: 2, Designation: &Designation{Primary: "beta", Generation: 2}}).AppendBody(nil)
	if !bytes.HasPrefix(withDes, withAccept) || !bytes.HasPrefix(withAccept, base) {
		t.Fatalf("the trailing fields do not extend the older encodings: %x, %x, %x", base, withAccept, withDes)
	}
	tests := []struct {
		name string
		body []byte
		ok   bool
	}{
		{"no trailing fields", base, true},
		{"accept only", withAccept, true},
		{"accept and designation", withDes, true},
		{"accept 0 alone", append(bytes.Clone(base), 0, 0, 0, 0), false},
		{"generation cut", withDes[:len(withAccept)+5], false},
		{"primary cut", withDes[:len(withDes)-1], false},
		{"stray bytes", append(bytes.Clone(withDes), 1), false},
	}
	for _, tt := range tests {
		_, err := Decode(TypeFetch, tt.body)
		if (err == nil) != tt.ok {
			t.Errorf("%s: err = %v, want ok %v", tt.name, err, tt.ok)
		}
	}
}

func FuzzDecodeFrame(f *testing.F) {
	for _, m := range samples() {
		f.Add(AppendFrame(nil, m))
	}
	f.Add([]byte("THRP"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, n, err := DecodeFrame(b, MaxFrame)
		if err != nil {
			return
		}
		// Re-encoding a decoded message gives back the same frame, and
		// decodes to the same message.
		again := AppendFrame(nil, m)
		if !bytes.Equal(again, b[:n]) {
			// Strings longer than MaxString are rejected, so the
			// encoding is canonical.
			t.Fatalf("%s: re-encoded frame differs\n got %x\nwant %x", m.Type(), again, b[:n])
		}
		m2, _, err := DecodeFrame(again, MaxFrame)
		if err != nil || !reflect.DeepEqual(m, m2) {
			t.Fatalf("%s: second decode %v %v", m.Type(), m2, err)
		}
	})
}
