package blockdev

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
)

// plain is a Device that is not an ExtentReporter.
type plain struct{ Device }

// liar is an ExtentReporter that reports what it is told to.
type liar struct {
	Device
	ext []Extent
}

func (l liar) Extents(dst []Extent, off, length int64, limit int) ([]Extent, error) {
	return append(dst, l.ext...), nil
}

func describe(es []Extent) string {
	var b bytes.Buffer
	for _, e := range es {
		fmt.Fprintf(&b, "[%d+%d", e.Offset, e.Length)
		if e.Hole {
			b.WriteString(" hole")
		}
		if e.Zero {
			b.WriteString(" zero")
		}
		b.WriteString("]")
	}
	return b.String()
}

func TestExtentsSparseFile(t *testing.T) {
	const size = 64 << 20
	d, err := CreateFile(filepath.Join(t.TempDir(), "sparse"), size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	data := bytes.Repeat([]byte{1}, 1<<20)
	for _, off := range []int64{4 << 20, 5 << 20, 32 << 20} { // two data runs
		if _, err := d.WriteAt(data, off); err != nil {
			t.Fatal(err)
		}
	}
	es, err := Extents(d, nil, 0, size, 100)
	if err != nil {
		t.Fatal(err)
	}
	want := []Extent{
		{0, 4 << 20, true, true}, {4 << 20, 2 << 20, false, false},
		{6 << 20, 26 << 20, true, true}, {32 << 20, 1 << 20, false, false},
		{33 << 20, size - 33<<20, true, true},
	}
	if describe(es) != describe(want) {
		if len(es) == 1 && !es[0].Hole {
			t.Skipf("the filesystem of %s reports no holes: %s", t.TempDir(), describe(es))
		}
		t.Fatalf("extents %s, want %s", describe(es), describe(want))
	}

	// A range inside, the limit, and a punched hole.
	es, _ = Extents(d, es[:0], 5<<20, 2<<20, 100)
	if got, want := describe(es), "[5242880+1048576][6291456+1048576 hole zero]"; got != want {
		t.Errorf("extents of [5 MiB, 7 MiB) %s, want %s", got, want)
	}
	es, _ = Extents(d, es[:0], 0, size, 2)
	if got, want := describe(es), "[0+4194304 hole zero][4194304+2097152]"; got != want {
		t.Errorf("two extents %s, want %s", got, want)
	}
	if err := d.Trim(4<<20, 1<<20); err != nil {
		t.Fatal(err)
	}
	es, _ = Extents(d, es[:0], 0, 6<<20, 100)
	if got, want := describe(es), "[0+5242880 hole zero][5242880+1048576]"; got != want {
		t.Errorf("after a trim %s, want %s", got, want)
	}

	// Out of range, empty, detached.
	for _, r := range [][2]int64{{size, 1}, {0, size + 1}, {-1, 2}, {0, 0}} {
		if _, err := Extents(d, nil, r[0], r[1], 10); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("Extents(%d, %d) = %v, want ErrOutOfRange", r[0], r[1], err)
		}
	}
	if err := d.Detach(); err != nil {
		t.Fatal(err)
	}
	if _, err := Extents(d, nil, 0, 1, 1); !errors.Is(err, ErrDetached) {
		t.Errorf("Extents of a detached disk: %v, want ErrDetached", err)
	}
	if err := d.Attach(); err != nil {
		t.Fatal(err)
	}
}

func TestExtentsMemory(t *testing.T) {
	m := NewMemory(1 << 20)
	m.WriteAt([]byte{1}, 8192+100)
	m.WriteAt([]byte{1}, 12288) // adjacent block: one data extent
	es, err := Extents(m, nil, 0, 1<<20, 10)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := describe(es), "[0+8192 zero][8192+8192][16384+1032192 zero]"; got != want {
		t.Errorf("extents %s, want %s", got, want)
	}
	es, _ = Extents(m, nil, 100, 9000, 10) // unaligned ends
	if got, want := describe(es), "[100+8092 zero][8192+908]"; got != want {
		t.Errorf("unaligned extents %s, want %s", got, want)
	}
	es, _ = Extents(m, nil, 0, 1<<20, 1)
	if got, want := describe(es), "[0+8192 zero]"; got != want {
		t.Errorf("one extent %s, want %s", got, want)
	}
}

func TestExtentsFallbackAndChecks(t *testing.T) {
	m := NewMemory(1 << 20)
	es, err := Extents(plain{m}, nil, 4096, 8192, 10)
	if err != nil || describe(es) != "[4096+8192]" {
		t.Errorf("a device without extents: %s %v, want all data", describe(es), err)
	}
	for _, bad := range [][]Extent{
		nil,                       // nothing
		{{4096, 0, false, false}}, // empty extent
		{{0, 4096, false, false}}, // wrong start
		{{4096, 4096, false, false}, {12288, 4096, true, true}}, // gap
		{{4096, 1 << 20, false, false}},                         // past the range
	} {
		if es, err := Extents(liar{m, bad}, nil, 4096, 8192, 10); err == nil {
			t.Errorf("device reporting %s accepted: %s", describe(bad), describe(es))
		}
	}
	es, err = Extents(liar{m, []Extent{{4096, 100, true, true}, {4196, 100, true, true}, {4296, 100, false, false}}}, nil, 4096, 8192, 10)
	if err != nil || describe(es) != "[4096+200 hole zero][4296+100]" {
		t.Errorf("a short answer merged: %s %v", describe(es), err)
	}
	es, _ = Extents(liar{m, []Extent{{4096, 100, true, true}, {4196, 100, false, false}, {4296, 100, true, false}}}, nil, 4096, 8192, 2)
	if describe(es) != "[4096+100 hole zero][4196+100]" {
		t.Errorf("over the limit: %s, want the first two", describe(es))
	}
}
