package replicate

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/tharsis/tharsis/replicate/wire"
)

// FuzzShipRecords: what the ship server sends of any segment file is whole,
// intact records of that segment, and damage is a *CorruptError.
func FuzzShipRecords(f *testing.F) {
	good, offs := buildSegment(f, 1, 1, [][]int{{10, 20}, {30}}, false)
	f.Add(good)
	bad := bytes.Clone(good)
	bad[offs[1]+HeaderSize+3] ^= 1
	f.Add(bad)
	f.Add(good[:offs[1]+7])
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		n := SegmentName{Seq: 1, Node: "a"}
		if err := os.WriteFile(filepath.Join(dir, n.String()), b, 0o600); err != nil {
			t.Fatal(err)
		}
		ss := &segStream{dir: dir, res: "r0"}
		defer ss.close()
		var off int64
		var buf []byte
		for off < int64(len(b)) {
			got, nb, err := ss.readRecords(n, off, int64(len(b)), buf)
			buf = nb
			if err != nil {
				var ce *CorruptError
				if !errors.As(err, &ce) || ce.Offset != off {
					t.Fatalf("error at %d: %v, want a CorruptError at that offset", off, err)
				}
				return
			}
			if got <= 0 {
				t.Fatalf("no bytes and no error at %d", off)
			}
			for rb := nb[:got]; len(rb) > 0; {
				rec, k, err := DecodeRecord(rb)
				if err != nil || rec.Segment != n.Seq {
					t.Fatalf("shipped a bad record at %d: %v (segment %d)", off, err, rec.Segment)
				}
				rb = rb[k:]
			}
			off += int64(got)
		}
	})
}

// FuzzDecompressShipped: whatever a peer sends as compressed segment data,
// the fetcher's decompression never panics, never returns more than the
// frame says (nor more than its limit), and the records in what it returns
// are checked as those of a plain frame are.
func FuzzDecompressShipped(f *testing.F) {
	good, offs := buildSegment(f, 1, 1, [][]int{{10, 20}, {30}}, false)
	c := wire.NewCompressor()
	z := c.Compress(&wire.SegmentData{Segment: "log-000000001-a", Data: bytes.Repeat(good, 4)}).(*wire.CompressedData)
	f.Add(bytes.Clone(z.Data), z.RawLen)
	bad := bytes.Clone(z.Data)
	bad[len(bad)/2] ^= 1
	f.Add(bad, z.RawLen)
	f.Add(bytes.Clone(z.Data[:len(z.Data)-3]), z.RawLen)
	f.Add(good[:offs[1]], uint32(offs[1]))
	const limit = 1 << 20
	d := wire.NewDecompressor(limit)
	f.Fuzz(func(t *testing.T, b []byte, rawLen uint32) {
		m, err := d.Decompress(&wire.CompressedData{Segment: "log-000000001-a", Encoding: wire.EncodingZstd, RawLen: rawLen, Data: b})
		if err != nil {
			if !errors.Is(err, wire.ErrCompressed) {
				t.Fatalf("error %v does not wrap ErrCompressed", err)
			}
			return
		}
		if len(m.Data) != int(rawLen) || rawLen > limit {
			t.Fatalf("decompressed %d bytes, the frame says %d (limit %d)", len(m.Data), rawLen, limit)
		}
		for rb := m.Data; len(rb) > 0; {
			_, k, err := DecodeRecord(rb)
			if err != nil {
				break
			}
			rb = rb[k:]
		}
	})
}
