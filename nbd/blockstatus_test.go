package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/tharsis/tharsis/blockdev"
)

// meta sends a LIST or SET_META_CONTEXT option and returns its
// NBD_REP_META_CONTEXT replies as "id:name" and the final reply type.
func (k *client) meta(opt uint32, name string, queries ...string) (contexts []string, final uint32) {
	k.t.Helper()
	k.sendOpt(opt, appendMetaRequest(nil, metaRequest{name: name, queries: queries}))
	final, replies := k.collect(opt, repMeta, 4)
	for _, data := range replies {
		contexts = append(contexts, fmt.Sprintf("%d:%s", binary.BigEndian.Uint32(data), data[4:]))
	}
	return contexts, final
}

// descriptors decodes the payload of a BLOCK_STATUS chunk as
// "length/flags" items and checks the context ID.
func descriptors(t *testing.T, p []byte) string {
	t.Helper()
	if len(p) < 12 || (len(p)-4)%8 != 0 {
		t.Fatalf("BLOCK_STATUS payload of %d bytes", len(p))
	}
	if id := binary.BigEndian.Uint32(p); id != metaBaseAllocationID {
		t.Fatalf("context ID %d, want %d", id, metaBaseAllocationID)
	}
	var out []string
	for p = p[4:]; len(p) > 0; p = p[8:] {
		out = append(out, fmt.Sprintf("%d/%d", binary.BigEndian.Uint32(p), binary.BigEndian.Uint32(p[4:])))
	}
	return strings.Join(out, " ")
}

// sparseMemory is a 1 MiB memory device with data at [64 KiB, 72 KiB) and
// [512 KiB, 516 KiB).
func sparseMemory() *blockdev.Memory {
	m := blockdev.NewMemory(1 << 20)
	m.WriteAt(pattern(8192, 1), 64<<10)
	m.WriteAt(pattern(4096, 2), 512<<10)
	return m
}

func TestListMetaContext(t *testing.T) {
	l := startServer(t, newServer(), Export{Name: "a", Device: sparseMemory()})
	k := dial(t, l)
	k.greet(flagCFixedNewstyle | flagCNoZeroes)
	for _, tc := range []struct {
		name    string
		queries []string
		want    string
		final   uint32
	}{
		{"a", nil, "0:base:allocation", repAck},
		{"", []string{"base:"}, "0:base:allocation", repAck},
		{"a", []string{"x-other:thing", "base:allocation", "base:"}, "0:base:allocation", repAck},
		{"a", []string{"qemu:dirty-bitmap:b", "base:other", "nonsense"}, "", repAck},
		{"b", nil, "", repErrUnknown},
	} {
		got, final := k.meta(optListMetaContext, tc.name, tc.queries...)
		if strings.Join(got, ",") != tc.want || final != tc.final {
			t.Errorf("LIST %q %q: %q then %#x, want %q then %#x", tc.name, tc.queries, got, final, tc.want, tc.final)
		}
	}
	k.sendOpt(optListMetaContext, []byte{0, 0, 0, 9, 'a'})
	if typ, _ := k.optReply(optListMetaContext); typ != repErrInvalid {
		t.Errorf("malformed LIST answered %#x, want NBD_REP_ERR_INVALID", typ)
	}
	// SET is refused before structured replies.
	if got, final := k.meta(optSetMetaContext, "a", metaBaseAllocation); len(got) != 0 || final != repErrInvalid {
		t.Errorf("SET without structured replies: %q then %#x, want NBD_REP_ERR_INVALID", got, final)
	}
}

// openMeta negotiates structured replies, selects queries for export
// setFor and enters transmission on export name.
func openMeta(t *testing.T, k *client, setFor, name string, queries ...string) []string {
	t.Helper()
	k.greet(flagCFixedNewstyle | flagCNoZeroes)
	k.sendOpt(optStructuredReply, nil)
	if typ, _ := k.optReply(optStructuredReply); typ != repAck {
		t.Fatalf("STRUCTURED_REPLY answered %#x", typ)
	}
	k.structured = true
	got, final := k.meta(optSetMetaContext, setFor, queries...)
	if final != repAck {
		t.Fatalf("SET_META_CONTEXT answered %#x", final)
	}
	if final, _ := k.info(optGo, name); final != repAck {
		t.Fatalf("GO %q answered %#x", name, final)
	}
	return got
}

func TestBlockStatus(t *testing.T) {
	l := startServer(t, newServer(),
		Export{Name: "a", Device: sparseMemory()},
		Export{Name: "plain", Device: &faultyDevice{Device: sparseMemory()}},
		Export{Name: "ro", Device: sparseMemory(), ReadOnly: true})

	k := dial(t, l)
	if got := openMeta(t, k, "a", "a", "x-foo:bar", metaBaseAllocation, metaBaseAllocation); strings.Join(got, ",") != "1:base:allocation" {
		t.Fatalf("SET selected %q, want 1:base:allocation once", got)
	}
	const data, zero = "0", "2" // memory is never a hole
	for _, tc := range []struct {
		flags          uint16
		offset, length uint64
		want           string
	}{
		{0, 0, 1 << 20, "65536/2 8192/0 450560/2 4096/0 520192/2"},
		{cmdFlagReqOne, 0, 1 << 20, "65536/" + zero},
		{cmdFlagReqOne | cmdFlagFUA, 66 << 10, 100 << 10, "6144/" + data},
		{0, 70 << 10, 3, "3/" + data},
		{0, 1<<20 - 1, 1, "1/2"},
	} {
		r := k.do(cmdBlockStatus, tc.flags, 1, tc.offset, uint32(tc.length), nil)
		if r.errno != 0 {
			t.Errorf("BLOCK_STATUS %#x [%d, +%d): errno %d (%s)", tc.flags, tc.offset, tc.length, r.errno, r.msg)
			continue
		}
		if got := descriptors(t, r.data); got != tc.want {
			t.Errorf("BLOCK_STATUS %#x [%d, +%d) = %s, want %s", tc.flags, tc.offset, tc.length, got, tc.want)
		}
	}
	for _, tc := range []struct {
		flags          uint16
		offset, length uint64
	}{
		{0, 0, 0},                 // empty
		{0, 1 << 20, 1},           // past the end
		{0, 4096, 1 << 20},        // reaches past the end
		{0, 1<<64 - 1, 1<<32 - 1}, // overflows
		{cmdFlagDF, 0, 4096},      // a flag of READ
	} {
		if r := k.do(cmdBlockStatus, tc.flags, 2, tc.offset, uint32(tc.length), nil); r.errno != errInval {
			t.Errorf("BLOCK_STATUS %#x [%d, +%d): errno %d, want EINVAL", tc.flags, tc.offset, tc.length, r.errno)
		}
	}
	// The connection still works.
	if r := k.do(cmdRead, 0, 3, 64<<10, 8192, nil); r.errno != 0 || string(r.data) != string(pattern(8192, 1)) {
		t.Errorf("READ after BLOCK_STATUS: %v", r)
	}

	// A device without extents is all data; a read-only export answers too.
	for _, name := range []string{"plain", "ro"} {
		k := dial(t, l)
		openMeta(t, k, name, name, metaBaseAllocation)
		r := k.do(cmdBlockStatus, 0, 1, 0, 1<<20, nil)
		want := map[string]string{"plain": "1048576/0", "ro": "65536/2 8192/0 450560/2 4096/0 520192/2"}[name]
		if r.errno != 0 || descriptors(t, r.data) != want {
			t.Errorf("export %s: %v %s, want %s", name, r, r.data, want)
		}
	}

	// Without a context: BLOCK_STATUS is EINVAL, with a message.
	for _, tc := range []struct{ setFor, name string }{
		{"a", "plain"}, // selected for another export
		{"a", "a"},     // SET of "base:" selects nothing
	} {
		k := dial(t, l)
		q := metaBaseAllocation
		if tc.setFor == tc.name {
			q = metaBaseNamespace
		}
		openMeta(t, k, tc.setFor, tc.name, q)
		r := k.do(cmdBlockStatus, 0, 1, 0, 4096, nil)
		if r.errno != errInval || !strings.Contains(r.msg, "metadata context") {
			t.Errorf("BLOCK_STATUS after SET %q for %q, GO %q: %v, want EINVAL naming the context", q, tc.setFor, tc.name, r)
		}
	}
}

// TestBlockStatusBounded: a map of more extents than a reply may carry is
// cut at maxBlockStatusExtents, still starting at the request's offset.
func TestBlockStatusBounded(t *testing.T) {
	const size = 4 * maxBlockStatusExtents * 4096
	m := blockdev.NewMemory(size)
	for off := int64(0); off < size; off += 8192 {
		m.WriteAt([]byte{1}, off) // data, zero, data, zero, … in 4 KiB blocks
	}
	l := startServer(t, newServer(), Export{Name: "a", Device: m})
	k := dial(t, l)
	openMeta(t, k, "a", "a", metaBaseAllocation)
	r := k.do(cmdBlockStatus, 0, 1, 4096, size-4096, nil)
	if r.errno != 0 {
		t.Fatal(r)
	}
	d := strings.Fields(descriptors(t, r.data))
	if len(d) != maxBlockStatusExtents {
		t.Fatalf("%d descriptors, want %d", len(d), maxBlockStatusExtents)
	}
	if d[0] != "4096/2" || d[1] != "4096/0" {
		t.Errorf("descriptors start %v, want 4096/2 4096/0", d[:2])
	}
}

// extentsFail is a device whose Extents fails.
type extentsFail struct{ blockdev.Device }

func (extentsFail) Extents(dst []blockdev.Extent, off, length int64, limit int) ([]blockdev.Extent, error) {
	return dst, errors.New("injected")
}

func TestBlockStatusDeviceError(t *testing.T) {
	l := startServer(t, newServer(), Export{Name: "a", Device: extentsFail{blockdev.NewMemory(1 << 20)}})
	k := dial(t, l)
	openMeta(t, k, "", "a", metaBaseAllocation) // "" is the default export: "a"
	if r := k.do(cmdBlockStatus, 0, 1, 0, 4096, nil); r.errno != errIO {
		t.Errorf("BLOCK_STATUS on a failing device: %v, want EIO", r)
	}
	if r := k.do(cmdRead, 0, 2, 0, 4096, nil); r.errno != 0 {
		t.Errorf("READ afterwards: %v", r)
	}
}
