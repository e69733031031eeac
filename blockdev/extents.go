package blockdev

import "fmt"

// Extent is a run of a device's bytes that share one allocation state.
type Extent struct {
	Offset, Length int64
	// Hole says the run is not allocated on the backing store (a hole of a
	// sparse file): a later write may need space there.
	Hole bool
	// Zero says the run reads as zeros.
	Zero bool
}

// ExtentReporter is implemented by devices that know which of their bytes
// are allocated (NBD's base:allocation block status). Devices without it
// are all data (see Extents).
type ExtentReporter interface {
	// Extents appends to dst the extents of [off, off+length), in order and
	// back to back from off, and returns dst. It appends at most limit
	// extents (limit ≥ 1), so the last may end before off+length. Adjacent
	// extents may share a state. [off, off+length) must lie within the
	// device (ErrOutOfRange otherwise) and length must be positive. An
	// extent that is not Hole may still read as zeros; one that is Zero
	// must read as zeros, and must reflect every write that returned before
	// Extents was called.
	Extents(dst []Extent, off, length int64, limit int) ([]Extent, error)
}

// Extents appends the extents of [off, off+length) of d to dst, at most
// limit of them (at least one), merging neighbours of the same state. A
// device that is not an ExtentReporter is reported as one data extent.
// It returns ErrOutOfRange (wrapped) for a range outside the device or an
// empty one.
func Extents(d Device, dst []Extent, off, length int64, limit int) ([]Extent, error) {
	if err := CheckRange(off, length, d.Size()); err != nil {
		return dst, err
	}
	if length == 0 {
		return dst, fmt.Errorf("empty range at offset %d: %w", off, ErrOutOfRange)
	}
	limit = max(limit, 1)
	r, ok := d.(ExtentReporter)
	if !ok {
		return append(dst, Extent{Offset: off, Length: length}), nil
	}
	start := len(dst)
	dst, err := r.Extents(dst, off, length, limit)
	if err != nil {
		return dst[:start], err
	}
	dst, err = mergeExtents(dst, start, off, off+length)
	if len(dst)-start > limit {
		dst = dst[:start+limit] // still a prefix of the range
	}
	return dst, err
}

// mergeExtents joins the neighbours of the same state in dst[start:] and
// checks that they tile [off, end) from off without gaps, at least one byte
// each. It returns an error naming what is wrong otherwise, so a device bug
// cannot reach a client as a malformed reply.
func mergeExtents(dst []Extent, start int, off, end int64) ([]Extent, error) {
	out := dst[:start]
	pos := off
	for _, e := range dst[start:] {
		if e.Offset != pos || e.Length <= 0 || e.Length > end-pos {
			return dst[:start], fmt.Errorf("device reported extent [%d, +%d) where [%d, %d) was expected", e.Offset, e.Length, pos, end)
		}
		pos += e.Length
		if n := len(out); n > start && out[n-1].Hole == e.Hole && out[n-1].Zero == e.Zero {
			out[n-1].Length += e.Length
			continue
		}
		out = append(out, e)
	}
	if len(out) == start {
		return dst[:start], fmt.Errorf("device reported no extent for [%d, %d)", off, end)
	}
	return out, nil
}
