package replicate

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// buildSegment encodes records of segment seg in batches: every record of
// batch i carries the offset where its batch starts as synced.
func buildSegment(t testing.TB, seg, firstSeq uint64, batches [][]int, seal bool) ([]byte, []int64) {
	var b []byte
	var offs []int64
	seq := firstSeq
	for _, batch := range batches {
		start := int64(len(b))
		for _, n := range batch {
			r := Record{Kind: KindWrite, Segment: seg, Seq: seq, Offset: int64(seq) * 512, Length: int64(n), Synced: start, Payload: bytes.Repeat([]byte{byte(seq)}, n)}
			offs = append(offs, int64(len(b)))
			var err error
			if b, err = r.AppendBinary(b); err != nil {
				t.Fatal(err)
			}
			seq++
		}
	}
	if seal {
		r := Record{Kind: KindSegmentEnd, Segment: seg, Seq: seq, Synced: int64(len(b))}
		offs = append(offs, int64(len(b)))
		b, _ = r.AppendBinary(b)
	}
	return b, offs
}

func scan(b []byte, seg uint64, newest bool) (SegmentInfo, int, error) {
	n := 0
	info, err := ScanSegment(bytes.NewReader(b), int64(len(b)), SegmentName{Seq: seg, Node: "a"}, ScanOptions{Newest: newest},
		func(Record, int64) error { n++; return nil })
	return info, n, err
}

func TestScanSegment(t *testing.T) {
	good, offs := buildSegment(t, 4, 10, [][]int{{100, 200}, {300}, {50, 60}}, false)
	sealed, _ := buildSegment(t, 4, 10, [][]int{{100, 200}, {300}, {50, 60}}, true)
	corruptAt := func(b []byte, off int64) []byte {
		c := bytes.Clone(b)
		c[off+HeaderSize+1] ^= 0x40
		return c
	}
	tests := []struct {
		name     string
		b        []byte
		newest   bool
		records  int   // fn calls
		torn     bool  // a torn tail was found
		zero     bool  // a zero tail was found
		end      int64 // -1: len(b)
		corrupt  bool
		errMatch string
	}{
		{name: "clean newest", b: good, newest: true, records: 5, end: -1},
		{name: "clean sealed", b: sealed, records: 5, end: -1},
		{name: "sealed without marker", b: good, corrupt: true, errMatch: "without its segment-end marker"},
		{name: "newest cut mid-header", b: good[:offs[4]+10], newest: true, records: 4, torn: true, end: offs[4]},
		{name: "newest cut mid-payload", b: good[:len(good)-1], newest: true, records: 4, torn: true, end: offs[4]},
		{name: "newest zeroed tail", b: append(bytes.Clone(good[:offs[3]]), make([]byte, len(good)-int(offs[3]))...), newest: true, records: 3, zero: true, end: offs[3]},
		{name: "newest bad crc in last batch", b: corruptAt(good, offs[3]), newest: true, records: 3, torn: true, end: offs[3]},
		{name: "newest bad crc before a synced batch", b: corruptAt(good, offs[1]), newest: true, corrupt: true, errMatch: "had been synced"},
		{name: "sealed bad crc", b: corruptAt(sealed, offs[4]), corrupt: true, errMatch: "checksum"},
		{name: "sealed truncated", b: sealed[:len(sealed)-3], corrupt: true},
		{name: "garbage after marker", b: append(bytes.Clone(sealed), 1, 2, 3), corrupt: true, errMatch: "after the segment-end marker"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info, n, err := scan(tt.b, 4, tt.newest)
			if tt.corrupt {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("err = %v, want ErrCorrupt", err)
				}
				if !strings.Contains(err.Error(), tt.errMatch) || !strings.Contains(err.Error(), "tharsis invalidate") {
					t.Fatalf("error %q lacks %q or the hint", err, tt.errMatch)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			end := tt.end
			if end < 0 {
				end = int64(len(tt.b))
			}
			if n != tt.records || (info.Torn > 0) != tt.torn || (info.Zero > 0) != tt.zero || info.End != end {
				t.Fatalf("records %d torn %d zero %d end %d; want %d %v %v %d", n, info.Torn, info.Zero, info.End, tt.records, tt.torn, tt.zero, end)
			}
			if info.End+info.Torn+info.Zero != int64(len(tt.b)) {
				t.Fatalf("end %d + torn %d + zero %d != %d", info.End, info.Torn, info.Zero, len(tt.b))
			}
		})
	}
}

func TestScanSegmentIdentityAndGaps(t *testing.T) {
	b, _ := buildSegment(t, 4, 10, [][]int{{10, 10}}, true)
	if _, _, err := scan(b, 5, false); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("records of segment 4 read as segment 5: %v", err)
	}
	_, err := ScanSegment(bytes.NewReader(b), int64(len(b)), SegmentName{Seq: 4, Node: "a"}, ScanOptions{PrevSeq: 5}, nil)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("gap in sequence: %v", err)
	}
}

func TestSegmentName(t *testing.T) {
	n := SegmentName{Seq: 7, Node: "alpha"}
	if n.String() != "log-000000007-alpha" {
		t.Fatal(n.String())
	}
	if got, ok := ParseSegmentName(n.String()); !ok || got != n {
		t.Fatalf("parse: %v %v", got, ok)
	}
	for _, bad := range []string{"log-7-alpha", "log-000000007-", "log-000000000-a", "applied", "log-00000000x-a", "log-000000007-a/b"} {
		if _, ok := ParseSegmentName(bad); ok {
			t.Errorf("%q parsed", bad)
		}
	}
}

func FuzzSegment(f *testing.F) {
	good, offs := buildSegment(f, 1, 1, [][]int{{10, 20}, {30}}, false)
	f.Add(good, true)
	f.Add(good[:offs[2]+5], true)
	sealed, _ := buildSegment(f, 1, 1, [][]int{{10}}, true)
	f.Add(sealed, false)
	f.Add([]byte{}, true)
	f.Add(append(bytes.Clone(good), make([]byte, 300)...), true) // zeros ahead of the records
	f.Fuzz(func(t *testing.T, b []byte, newest bool) {
		var last uint64
		info, err := ScanSegment(bytes.NewReader(b), int64(len(b)), SegmentName{Seq: 1, Node: "a"}, ScanOptions{Newest: newest},
			func(r Record, end int64) error {
				// Every record handed out re-encodes to the bytes it came from.
				enc, err := r.MarshalBinary()
				if err != nil {
					t.Fatalf("bad record handed out: %v", err)
				}
				start := end - int64(len(enc))
				if start < 0 || !bytes.Equal(enc, b[start:end]) {
					t.Fatalf("record at %d does not match the bytes", start)
				}
				if last != 0 && r.Seq != last+1 {
					t.Fatalf("sequence %d after %d", r.Seq, last)
				}
				last = r.Seq
				return nil
			})
		if err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("error not ErrCorrupt: %v", err)
		}
		if err == nil && info.End+info.Torn+info.Zero != int64(len(b)) {
			t.Fatalf("end %d + torn %d + zero %d != %d", info.End, info.Torn, info.Zero, len(b))
		}
		if err == nil && !newest && (info.Torn != 0 || info.Zero != 0) {
			t.Fatal("torn or zero tail in a sealed segment")
		}
		if err == nil && info.Zero != 0 && (info.Torn != 0 || !bytes.Equal(b[info.End:], make([]byte, info.Zero))) {
			t.Fatalf("zero tail of %d bytes at %d is not all zero (torn %d)", info.Zero, info.End, info.Torn)
		}
	})
}
