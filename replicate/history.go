package replicate

import "fmt"

// Fork is where two nodes' logs of a resource stop being one history: the
// first segment number at which they differ (two segments with that number
// written by different nodes, or one node's copy sealed before the other's
// ends), and how many log bytes each side holds from there on, i.e. what it
// wrote (or fetched) after the fork.
type Fork struct {
	Segment     uint64 `json:"segment"`      // first segment that differs
	Mine        string `json:"mine"`         // this node's segment of that number ("" if none)
	Theirs      string `json:"theirs"`       // the peer's ("" if none)
	MineAfter   int64  `json:"mine_after"`   // log bytes this node holds after the fork
	TheirsAfter int64  `json:"theirs_after"` // log bytes the peer holds after the fork
}

// String describes the fork for operators.
func (f *Fork) String() string {
	side := func(n string) string {
		if n == "" {
			return "nothing"
		}
		return n
	}
	return fmt.Sprintf("segment %d (%s here, %s there); %d log bytes here and %d there after it",
		f.Segment, side(f.Mine), side(f.Theirs), f.MineAfter, f.TheirsAfter)
}

// CompareHistory reports whether two logs of one resource, each a list of
// segments in ascending order, are the same history, and where they fork if
// not (nil: one is a prefix of the other, or they share no segment number).
//
// Only the writing node appends to a segment; the only other change a
// segment ever sees is an end marker added by a node that took over without
// the writer (primary --force). So, for the segment numbers both hold:
//   - different writers (log-7-alpha vs log-7-beta) fork;
//   - both sealed at different sizes fork (same size: same records);
//   - one sealed at size s and the other unsealed holding more than the
//     records before the marker (s - HeaderSize) but not exactly s forks;
//   - both unsealed: the shorter is a prefix of the longer.
//
// Segments past the other side's last one are newer history, not a fork.
// An empty newest segment (opened, nothing written) holds no history and is
// left out. CompareHistory is pure and deterministic.
func CompareHistory(mine, theirs []SegmentSummary) *Fork {
	type seg struct {
		name   SegmentName
		size   int64
		sealed bool
	}
	parse := func(l []SegmentSummary) []seg {
		out := make([]seg, 0, len(l))
		for _, s := range l {
			n, ok := ParseSegmentName(s.Name)
			if !ok {
				continue
			}
			out = append(out, seg{n, s.Size, s.Sealed})
		}
		return out
	}
	a, b := parse(mine), parse(theirs)
	for len(a) > 0 && a[len(a)-1].size == 0 {
		a = a[:len(a)-1]
	}
	for len(b) > 0 && b[len(b)-1].size == 0 {
		b = b[:len(b)-1]
	}
	after := func(l []seg, from uint64, skip int64) int64 {
		var n int64
		for _, s := range l {
			if s.name.Seq == from {
				n += max(0, s.size-skip)
			} else if s.name.Seq > from {
				n += s.size
			}
		}
		return n
	}
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		x, y := a[i], b[j]
		switch {
		case x.name.Seq < y.name.Seq:
			i++
			continue
		case x.name.Seq > y.name.Seq:
			j++
			continue
		}
		fork := false
		var common int64 // bytes both hold alike in this segment
		switch {
		case x.name.Node != y.name.Node:
			fork = true
		case x.sealed && y.sealed:
			fork = x.size != y.size
			common = min(x.size, y.size) - HeaderSize
		case x.sealed:
			// Equal sizes: the other copy holds the marker too (a
			// secondary reports the segment it fetches as unsealed).
			fork = y.size > x.size-HeaderSize && y.size != x.size
			common = min(y.size, x.size-HeaderSize)
		case y.sealed:
			fork = x.size > y.size-HeaderSize && x.size != y.size
			common = min(x.size, y.size-HeaderSize)
		}
		if fork {
			common = max(0, common)
			f := &Fork{Segment: x.name.Seq, Mine: x.name.String(), Theirs: y.name.String()}
			f.MineAfter = after(a, x.name.Seq, common)
			f.TheirsAfter = after(b, x.name.Seq, common)
			return f
		}
		i++
		j++
	}
	return nil
}
