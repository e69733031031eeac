package nbd

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tharsis/tharsis/blockdev"
)

// sparseImage is a 1 GiB sparse file device holding 16 MiB of random data
// in four runs; it returns the device, the data runs and the image's hash.
func sparseImage(t *testing.T) (*blockdev.File, [][2]int64, [32]byte) {
	t.Helper()
	const size = 1 << 30
	d := fileDevice(t, size)
	runs := [][2]int64{{0, 4 << 20}, {100 << 20, 4 << 20}, {512<<20 + 4096, 4 << 20}, {size - 4<<20, 4 << 20}}
	b := make([]byte, 4<<20)
	for _, r := range runs {
		rand.Read(b)
		if _, err := d.WriteAt(b, r[0]); err != nil {
			t.Fatal(err)
		}
	}
	es, err := blockdev.Extents(d, nil, 0, size, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 2*len(runs)-1 {
		t.Skipf("the filesystem of the test directory does not keep the image sparse: %d extents", len(es))
	}
	return d, runs, hashFile(t, d.Name())
}

func hashFile(t *testing.T, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

// wantMap is the map of the image as "offset length data|hole" lines.
func wantMap(runs [][2]int64, size int64) []string {
	var out []string
	pos := int64(0)
	for _, r := range runs {
		if r[0] > pos {
			out = append(out, fmt.Sprintf("%d %d hole", pos, r[0]-pos))
		}
		out = append(out, fmt.Sprintf("%d %d data", r[0], r[1]))
		pos = r[0] + r[1]
	}
	if pos < size {
		out = append(out, fmt.Sprintf("%d %d hole", pos, size-pos))
	}
	return out
}

// TestPeerBlockStatus: libnbd and qemu see the holes of a sparse file
// export, and nbdcopy reads only its data.
func TestPeerBlockStatus(t *testing.T) {
	needTools(t, "nbdinfo", "nbdcopy", "qemu-img")
	d, runs, sum := sparseImage(t)
	stats := new(blockdev.Stats)
	addr := serveTCP(t, Export{Name: "sparse", Device: d, Stats: stats})
	uri := "nbd://" + addr + "/sparse"
	want := strings.Join(wantMap(runs, d.Size()), "\n")

	v := nbdinfo(t, uri)
	var ctx struct {
		Exports []struct {
			Contexts []string `json:"contexts"`
		} `json:"exports"`
	}
	out := mustRun(t, "nbdinfo", "--json", uri)
	if err := json.Unmarshal([]byte(out), &ctx); err != nil || len(ctx.Exports) != 1 ||
		strings.Join(ctx.Exports[0].Contexts, ",") != metaBaseAllocation || !v.Structured {
		t.Errorf("nbdinfo --json does not show base:allocation: %v\n%s", err, out)
	}

	// nbdinfo --map: "offset length type description".
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(mustRun(t, "nbdinfo", "--map", uri)), "\n") {
		f := strings.Fields(line)
		if len(f) != 4 {
			t.Fatalf("nbdinfo --map line %q", line)
		}
		kind := map[string]string{"0": "data", "3": "hole"}[f[2]]
		got = append(got, f[0]+" "+f[1]+" "+kind)
	}
	if strings.Join(got, "\n") != want {
		t.Errorf("nbdinfo --map:\n%s\nwant\n%s", strings.Join(got, "\n"), want)
	}

	// qemu-img map agrees.
	var qm []struct {
		Start, Length int64
		Data, Zero    bool
	}
	out = mustRun(t, "qemu-img", "map", "--output=json", "-f", "raw", uri)
	if err := json.Unmarshal([]byte(out), &qm); err != nil {
		t.Fatalf("qemu-img map: %v\n%s", err, out)
	}
	got = got[:0]
	for _, e := range qm {
		kind := "data"
		if !e.Data && e.Zero {
			kind = "hole"
		}
		got = append(got, fmt.Sprintf("%d %d %s", e.Start, e.Length, kind))
	}
	if strings.Join(got, "\n") != want {
		t.Errorf("qemu-img map:\n%s\nwant\n%s", strings.Join(got, "\n"), want)
	}

	// nbdcopy reads the 16 MiB of data, not the 1 GiB of the image.
	dst := filepath.Join(t.TempDir(), "copy.img")
	before := stats.Load(blockdev.OpRead).Bytes
	mustRun(t, "nbdcopy", uri, dst)
	read := stats.Load(blockdev.OpRead).Bytes - before
	if hashFile(t, dst) != sum {
		t.Fatal("nbdcopy's copy of the sparse image differs from it")
	}
	var data int64
	for _, r := range runs {
		data += r[1]
	}
	if read < uint64(data) || read > uint64(data)+uint64(data)/8 {
		t.Errorf("nbdcopy read %d bytes of a %d-byte image with %d bytes of data; want about the data", read, d.Size(), data)
	}
	t.Logf("nbdcopy read %d MiB of the 1 GiB image (%d MiB data)", read>>20, data>>20)
}
