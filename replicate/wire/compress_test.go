package wire

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"
)

func TestCompressRoundTrip(t *testing.T) {
	text := bytes.Repeat([]byte("the quick brown fox jumps over the lazy dog\n"), 20000)
	c := NewCompressor()
	d := NewDecompressor(MaxFrame)
	defer d.Close()
	in := &SegmentData{Segment: "log-000000001-a", Offset: 4096, End: Position{1, 9999, 3}, Data: text}
	m := c.Compress(in)
	cm, ok := m.(*CompressedData)
	if !ok {
		t.Fatalf("text not compressed: %s", m.Type())
	}
	if len(cm.Data)*10 > len(text) {
		t.Errorf("text compressed to %d of %d bytes", len(cm.Data), len(text))
	}
	// Through the frame codec, as on the wire.
	back, _, err := DecodeFrame(AppendFrame(nil, cm), MaxFrame)
	if err != nil {
		t.Fatal(err)
	}
	out, err := d.Decompress(back.(*CompressedData))
	if err != nil {
		t.Fatal(err)
	}
	if out.Segment != in.Segment || out.Offset != in.Offset || out.End != in.End || !bytes.Equal(out.Data, text) {
		t.Fatal("decompressed frame differs")
	}
}

func TestCompressSkipsIncompressible(t *testing.T) {
	c := NewCompressor()
	random := make([]byte, 1<<20)
	rand.Read(random)
	in := &SegmentData{Segment: "log-000000001-a", Data: random}
	for i := 0; i <= skipAfterMiss; i++ {
		if m := c.Compress(in); m != Message(in) {
			t.Fatalf("frame %d: random data sent as %s", i, m.Type())
		}
	}
	if c.skip != 0 {
		t.Fatalf("still skipping after %d frames", skipAfterMiss+1)
	}
	// After the skipped frames it tries again.
	text := &SegmentData{Segment: "log-000000001-a", Data: bytes.Repeat([]byte("abcd"), 1<<16)}
	if _, ok := c.Compress(text).(*CompressedData); !ok {
		t.Fatal("no retry after the skipped frames")
	}
}

func TestDecompressRefuses(t *testing.T) {
	c := NewCompressor()
	data := bytes.Repeat([]byte("0123456789"), 10000)
	good := *c.Compress(&SegmentData{Segment: "s", Data: data}).(*CompressedData)
	good.Data = bytes.Clone(good.Data)
	flip := bytes.Clone(good.Data)
	flip[len(flip)/2] ^= 0x40
	tests := []struct {
		name string
		m    CompressedData
	}{
		{"flipped bit", CompressedData{Segment: "s", Encoding: EncodingZstd, RawLen: good.RawLen, Data: flip}},
		{"truncated", CompressedData{Segment: "s", Encoding: EncodingZstd, RawLen: good.RawLen, Data: good.Data[:len(good.Data)-5]}},
		{"wrong length", CompressedData{Segment: "s", Encoding: EncodingZstd, RawLen: good.RawLen - 1, Data: good.Data}},
		{"over the limit", CompressedData{Segment: "s", Encoding: EncodingZstd, RawLen: MaxFrame + 1, Data: good.Data}},
		{"unknown encoding", CompressedData{Segment: "s", Encoding: 9, RawLen: good.RawLen, Data: good.Data}},
		{"not zstd", CompressedData{Segment: "s", Encoding: EncodingZstd, RawLen: 10, Data: []byte("plain text")}},
	}
	d := NewDecompressor(MaxFrame)
	defer d.Close()
	for _, tt := range tests {
		if _, err := d.Decompress(&tt.m); !errors.Is(err, ErrCompressed) {
			t.Errorf("%s: err = %v, want ErrCompressed", tt.name, err)
		}
	}
	// A bomb: a small frame that decompresses to more than the limit.
	bomb := c.Compress(&SegmentData{Segment: "s", Data: make([]byte, 4<<20)}).(*CompressedData)
	small := NewDecompressor(1 << 20)
	bomb.RawLen = 1 << 20
	if _, err := small.Decompress(bomb); !errors.Is(err, ErrCompressed) {
		t.Errorf("bomb: err = %v", err)
	}
	if cap(small.buf) > 1<<20 {
		t.Errorf("bomb: kept a buffer of %d bytes", cap(small.buf))
	}
}
