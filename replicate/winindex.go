package replicate

import "slices"

// winIndex finds the records of the unapplied window that may overlap a
// device range without scanning the window: a read costs the same with a
// window of ten records or of a hundred thousand (a disk slower than the
// log fills it). Records are named by their position in the window
// counted from the first record ever admitted (Primary.winHead is that of
// win[0]), so positions stay valid while the window moves.
//
// The device is cut into buckets of 1<<winBucketShift bytes; each bucket
// lists, in log order, the records that touch it. A record spanning more
// than wideBuckets buckets (a large trim) is listed in wide instead, which
// every lookup reads. The window is a queue, so the record removed is
// always the first of each list it is in.
type winIndex struct {
	buckets map[int64][]uint64
	wide    []uint64
}

const (
	winBucketShift = 16
	wideBuckets    = 64
)

// bucketsOf returns the first and last bucket of [off, end), and whether
// the range is indexed at all (not empty) and is wide.
func bucketsOf(off, end int64) (first, last int64, ok, wide bool) {
	if end <= off {
		return 0, 0, false, false
	}
	first, last = off>>winBucketShift, (end-1)>>winBucketShift
	return first, last, true, last-first >= wideBuckets
}

// add lists the record at pos, which changes [off, end); pos must be above
// every position listed.
func (x *winIndex) add(pos uint64, off, end int64) {
	first, last, ok, wide := bucketsOf(off, end)
	switch {
	case !ok:
	case wide:
		x.wide = append(x.wide, pos)
	default:
		if x.buckets == nil {
			x.buckets = make(map[int64][]uint64)
		}
		for b := first; b <= last; b++ {
			x.buckets[b] = append(x.buckets[b], pos)
		}
	}
}

// remove unlists the record at pos, added with [off, end).
func (x *winIndex) remove(pos uint64, off, end int64) {
	first, last, ok, wide := bucketsOf(off, end)
	switch {
	case !ok:
	case wide:
		x.wide = drop(x.wide, pos)
	default:
		for b := first; b <= last; b++ {
			if l := drop(x.buckets[b], pos); len(l) > 0 {
				x.buckets[b] = l
			} else {
				delete(x.buckets, b)
			}
		}
	}
}

// drop removes pos from l (its first element, as the window is a queue).
func drop(l []uint64, pos uint64) []uint64 {
	if len(l) > 0 && l[0] == pos {
		clear(l[:1])
		return l[1:]
	}
	if i := slices.Index(l, pos); i >= 0 {
		return slices.Delete(l, i, i+1)
	}
	return l
}

// find appends to dst the positions of the records listed in the buckets
// that [off, end) touches (a superset of those that overlap it), in
// ascending order without duplicates.
func (x *winIndex) find(dst []uint64, off, end int64) []uint64 {
	first, last, ok, _ := bucketsOf(off, end)
	if !ok {
		return dst
	}
	start := len(dst)
	dst = append(dst, x.wide...)
	if last-first >= int64(len(x.buckets)) {
		// A range wider than what is listed (a block status query of
		// gigabytes): walk the listed buckets instead of the range's.
		for b, l := range x.buckets {
			if first <= b && b <= last {
				dst = append(dst, l...)
			}
		}
	} else {
		for b := first; b <= last; b++ {
			dst = append(dst, x.buckets[b]...)
		}
	}
	found := dst[start:]
	if len(found) > 1 && (len(x.wide) > 0 || first != last) {
		slices.Sort(found)
		found = slices.Compact(found)
	}
	return dst[:start+len(found)]
}

// empty says whether nothing is listed.
func (x *winIndex) empty() bool { return len(x.buckets) == 0 && len(x.wide) == 0 }
