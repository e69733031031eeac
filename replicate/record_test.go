package replicate

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"
)

func TestRecordRoundTrip(t *testing.T) {
	tests := []Record{
		{Kind: KindWrite, Segment: 3, Seq: 7, Offset: 4096, Length: 5, Synced: 100, Payload: []byte("hello")},
		{Kind: KindTrim, Segment: 1, Seq: 1, Offset: 0, Length: 1 << 40},
		{Kind: KindWriteZeroes, Segment: 9, Seq: 1 << 50, Offset: 512, Length: 512},
		{Kind: KindResize, Segment: 2, Seq: 2, Length: 1 << 30},
		{Kind: KindSegmentEnd, Segment: 2, Seq: 3, Synced: 4096},
	}
	for _, r := range tests {
		t.Run(r.Kind.String(), func(t *testing.T) {
			b, err := r.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if len(b) != r.EncodedSize() {
				t.Fatalf("encoded %d bytes, EncodedSize says %d", len(b), r.EncodedSize())
			}
			got, n, err := DecodeRecord(append(b, 0xff))
			if err != nil || n != len(b) {
				t.Fatalf("DecodeRecord: n=%d err=%v", n, err)
			}
			if !reflect.DeepEqual(got, r) {
				t.Fatalf("round trip: got %+v want %+v", got, r)
			}
			// Every single-bit flip is detected.
			for i := range len(b) * 8 {
				c := bytes.Clone(b)
				c[i/8] ^= 1 << (i % 8)
				if _, _, err := DecodeRecord(c); err == nil {
					t.Fatalf("bit flip %d not detected", i)
				}
			}
			if _, _, err := DecodeRecord(b[:len(b)-1]); !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("short record: %v, want io.ErrUnexpectedEOF", err)
			}
		})
	}
}

func TestRecordRejects(t *testing.T) {
	bad := []Record{
		{Kind: 0},
		{Kind: 9},
		{Kind: KindWrite, Length: 3, Payload: []byte("ab")},
		{Kind: KindTrim, Length: 1, Payload: []byte("a")},
		{Kind: KindWrite, Offset: -1, Length: 1, Payload: []byte("a")},
		{Kind: KindSegmentEnd, Length: 1},
	}
	for _, r := range bad {
		if _, err := r.MarshalBinary(); !errors.Is(err, ErrInvalidRecord) {
			t.Errorf("%+v: err %v, want ErrInvalidRecord", r, err)
		}
	}
	// A huge length is rejected from the header alone.
	r := Record{Kind: KindTrim, Seq: 1, Length: 1}
	b, _ := r.MarshalBinary()
	b[9] = byte(KindWrite)
	b[12], b[13], b[14], b[15] = 0xff, 0xff, 0xff, 0x7f
	if _, _, err := DecodeRecord(b); !errors.Is(err, ErrInvalidRecord) {
		t.Fatalf("huge payload length: %v", err)
	}
}

func FuzzRecord(f *testing.F) {
	for _, r := range []Record{
		{Kind: KindWrite, Segment: 1, Seq: 1, Offset: 512, Length: 3, Payload: []byte("abc")},
		{Kind: KindTrim, Segment: 1, Seq: 2, Offset: 0, Length: 4096},
		{Kind: KindSegmentEnd, Segment: 1, Seq: 3, Synced: 100},
	} {
		b, _ := r.MarshalBinary()
		f.Add(b)
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, n, err := DecodeRecord(b)
		if err != nil {
			return
		}
		if n > len(b) || n != r.EncodedSize() {
			t.Fatalf("n=%d len=%d size=%d", n, len(b), r.EncodedSize())
		}
		enc, err := r.MarshalBinary()
		if err != nil {
			t.Fatalf("decoded record does not encode: %v", err)
		}
		if !bytes.Equal(enc, b[:n]) {
			t.Fatalf("re-encoding differs")
		}
		r2, _, err := DecodeRecord(enc)
		if err != nil || !reflect.DeepEqual(r, r2) {
			t.Fatalf("second round trip: %v", err)
		}
	})
}
