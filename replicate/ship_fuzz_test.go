package replicate

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
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
