package wire

import (
	"errors"
	"fmt"

	"github.com/klauspost/compress/zstd"
)

// ErrCompressed wraps the errors of decompressing a CompressedData frame
// (damaged or hostile data, an unknown encoding, a wrong length).
var ErrCompressed = errors.New("undecodable compressed segment data")

// Compressor compresses the data of SegmentData frames, each on its own
// (stateless: a frame stays self-contained, and nothing is kept between
// frames but the encoder's tables). It skips data that does not compress:
// after a frame that saved less than 1/16 it sends the next skipAfterMiss
// frames plain without trying, then tries again. Not safe for concurrent
// use.
type Compressor struct {
	enc  *zstd.Encoder
	buf  []byte
	skip int
}

// skipAfterMiss is how many frames go out plain without a try after one
// that did not compress.
const skipAfterMiss = 15

// NewCompressor returns a zstd Compressor (level "fastest": on the links
// compression is for, the CPU of the sending node is the scarcer resource).
func NewCompressor() *Compressor {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	if err != nil {
		panic(err) // only for invalid options
	}
	return &Compressor{enc: enc}
}

// Compress returns the message to send for m: a CompressedData when its
// data shrinks, else m itself. The result aliases a buffer of c, valid until
// the next call.
func (c *Compressor) Compress(m *SegmentData) Message {
	if c.skip > 0 {
		c.skip--
		return m
	}
	c.buf = c.enc.EncodeAll(m.Data, c.buf[:0])
	if len(c.buf) >= len(m.Data)-len(m.Data)/16 {
		c.skip = skipAfterMiss
		return m
	}
	out := &CompressedData{Segment: m.Segment, Offset: m.Offset, End: m.End, Encoding: EncodingZstd, RawLen: uint32(len(m.Data)), Data: c.buf}
	if cap(c.buf) > 8<<20 {
		c.buf = nil // not kept after a huge record
	}
	return out
}

// Decompressor turns CompressedData back into SegmentData. It allocates at
// most max bytes per frame however hostile the input, and keeps one buffer.
// Not safe for concurrent use.
type Decompressor struct {
	dec *zstd.Decoder
	max int
	buf []byte
}

// NewDecompressor returns a Decompressor for frames of at most max bytes
// decompressed (MaxFrame for a fetch stream).
func NewDecompressor(max int) *Decompressor {
	dec, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderMaxMemory(uint64(max)),
		zstd.WithDecoderMaxWindow(uint64(max)),
		zstd.IgnoreChecksum(false))
	if err != nil {
		panic(err) // only for invalid options
	}
	return &Decompressor{dec: dec, max: max}
}

// Decompress returns m as SegmentData; its Data aliases a buffer of d, valid
// until the next call. Errors wrap ErrCompressed.
func (d *Decompressor) Decompress(m *CompressedData) (*SegmentData, error) {
	if m.Encoding != EncodingZstd {
		return nil, fmt.Errorf("%w: unknown encoding %d", ErrCompressed, m.Encoding)
	}
	if m.RawLen == 0 || uint64(m.RawLen) > uint64(d.max) {
		return nil, fmt.Errorf("%w: %d bytes decompressed, limit %d", ErrCompressed, m.RawLen, d.max)
	}
	if cap(d.buf) < int(m.RawLen) {
		d.buf = make([]byte, 0, m.RawLen)
	}
	out, err := d.dec.DecodeAll(m.Data, d.buf[:0])
	if err != nil {
		d.buf = nil
		return nil, fmt.Errorf("%w of %s at offset %d: %v", ErrCompressed, m.Segment, m.Offset, err)
	}
	if len(out) != int(m.RawLen) {
		d.buf = nil
		return nil, fmt.Errorf("%w of %s at offset %d: %d bytes decompressed, the frame says %d", ErrCompressed, m.Segment, m.Offset, len(out), m.RawLen)
	}
	d.buf = out
	if cap(d.buf) > 8<<20 {
		d.buf = nil
	}
	return &SegmentData{Segment: m.Segment, Offset: m.Offset, End: m.End, Data: out}, nil
}

// Close releases the decoder.
func (d *Decompressor) Close() { d.dec.Close() }
