package replicate

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/tharsis/tharsis/blockdev"
)

// TestPrimaryExtents: the primary reports the data device's holes, and an
// acknowledged write or trim is visible in them at once.
func TestPrimaryExtents(t *testing.T) {
	disk, err := blockdev.CreateFile(filepath.Join(t.TempDir(), "disk"), devSize)
	if err != nil {
		t.Fatal(err)
	}
	p := openTest(t, disk, t.TempDir(), nil)
	t.Cleanup(func() { p.Close() })
	if _, err := p.WriteAt(bytes.Repeat([]byte{7}, 64<<10), 256<<10); err != nil {
		t.Fatal(err)
	}
	es, err := blockdev.Extents(p, nil, 0, devSize, 16)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) == 1 {
		t.Skip("the test directory's filesystem reports no holes")
	}
	want := []blockdev.Extent{
		{Offset: 0, Length: 256 << 10, Hole: true, Zero: true},
		{Offset: 256 << 10, Length: 64 << 10},
		{Offset: 320 << 10, Length: devSize - 320<<10, Hole: true, Zero: true},
	}
	if len(es) != len(want) {
		t.Fatalf("extents %+v, want %+v", es, want)
	}
	for i := range want {
		if es[i] != want[i] {
			t.Fatalf("extents %+v, want %+v", es, want)
		}
	}
	if err := p.Trim(256<<10, 64<<10); err != nil {
		t.Fatal(err)
	}
	p.drain() // the data device's own extents
	es, _ = blockdev.Extents(p, es[:0], 0, devSize, 16)
	if len(es) != 1 || !es[0].Hole || !es[0].Zero {
		t.Fatalf("after the trim: %+v, want one hole", es)
	}
}
