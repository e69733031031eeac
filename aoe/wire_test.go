package aoe

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"reflect"
	"testing"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestHeaderDecode(t *testing.T) {
	frame := unhex(t, "ffffffffffff"+"020000000001"+"88a2"+"18"+"06"+"0001"+"02"+"00"+"deadbeef")
	var h Header
	if err := h.Decode(frame); err != nil {
		t.Fatal(err)
	}
	want := Header{Dst: BroadcastMAC, Src: MAC{2, 0, 0, 0, 0, 1}, Version: 1, Flags: FlagResponse,
		Error: ErrTargetReserved, Shelf: 1, Slot: 2, Command: CmdATA, Tag: 0xdeadbeef}
	if h != want {
		t.Fatalf("got %+v, want %+v", h, want)
	}
	b, _ := h.AppendBinary(nil)
	if !bytes.Equal(b, frame) {
		t.Fatalf("encode: got %x, want %x", b, frame)
	}
	if err := h.Decode(frame[:23]); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("short frame: got %v", err)
	}
	frame[12] = 0x08
	if err := h.Decode(frame); !errors.Is(err, ErrNotAoE) {
		t.Fatalf("wrong EtherType: got %v", err)
	}
}

func TestATADecode(t *testing.T) {
	b := unhex(t, "41"+"00"+"02"+"34"+"010203040506"+"0000"+"aabb")
	var a ATA
	if err := a.Decode(b); err != nil {
		t.Fatal(err)
	}
	if a.Flags != ATAExtended|ATAWrite || a.Sectors != 2 || a.CmdStat != ATAWriteSectorsExt ||
		a.LBA != 0x060504030201 || !bytes.Equal(a.Data, []byte{0xaa, 0xbb}) {
		t.Fatalf("got %+v", a)
	}
	out, _ := a.AppendBinary(nil)
	if !bytes.Equal(out, b) {
		t.Fatalf("encode: got %x, want %x", out, b)
	}
	if err := a.Decode(b[:11]); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("short: %v", err)
	}
}

func TestConfigDecode(t *testing.T) {
	b := unhex(t, "0040"+"4019"+"02"+"13"+"0003"+"616263")
	var c Config
	if err := c.Decode(b); err != nil {
		t.Fatal(err)
	}
	if c.BufCnt != 64 || c.Firmware != 0x4019 || c.Sectors != 2 || c.Version != 1 ||
		c.Command != ConfigSet || string(c.String) != "abc" {
		t.Fatalf("got %+v", c)
	}
	out, _ := c.AppendBinary(nil)
	if !bytes.Equal(out, b) {
		t.Fatalf("encode: got %x want %x", out, b)
	}
	if err := c.Decode(b[:10]); !errors.Is(err, io.ErrUnexpectedEOF) || c.Command != ConfigSet {
		t.Fatalf("truncated string: %v %+v", err, c)
	}
	long := append(unhex(t, "0000000000100401"), make([]byte, 1025)...)
	if err := c.Decode(long); !errors.Is(err, ErrConfigTooLong) {
		t.Fatalf("1025-byte string: %v", err)
	}
	c.String = make([]byte, 1025)
	if _, err := c.AppendBinary(nil); !errors.Is(err, ErrConfigTooLong) {
		t.Fatalf("encode 1025-byte string: %v", err)
	}
}

func TestMaskDecode(t *testing.T) {
	b := unhex(t, "00"+"01"+"00"+"02"+"0001020000000001"+"0002020000000002")
	var m Mask
	if err := m.Decode(b); err != nil {
		t.Fatal(err)
	}
	if m.Command != MaskEdit || m.Count != 2 {
		t.Fatalf("got %+v", m)
	}
	if c, mac := m.Directive(1); c != DirDelete || mac != (MAC{2, 0, 0, 0, 0, 2}) {
		t.Fatalf("directive 1: %v %v", c, mac)
	}
	out, _ := m.AppendBinary(nil)
	if !bytes.Equal(out, b) {
		t.Fatalf("encode: got %x want %x", out, b)
	}
	if err := m.Decode(b[:19]); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated: %v", err)
	}
	// An error response carries no directives.
	if err := m.Decode(unhex(t, "00010201")); err != nil || m.Error != MaskErrBadDirective || len(m.Directives) != 0 {
		t.Fatalf("error response: %v %+v", err, m)
	}
}

func TestReserveDecode(t *testing.T) {
	b := unhex(t, "01"+"02"+"020000000001"+"020000000002")
	var r Reserve
	if err := r.Decode(b); err != nil {
		t.Fatal(err)
	}
	if r.Command != ReserveSet || r.Count != 2 || r.MAC(1) != (MAC{2, 0, 0, 0, 0, 2}) {
		t.Fatalf("got %+v", r)
	}
	out, _ := r.AppendBinary(nil)
	if !bytes.Equal(out, b) {
		t.Fatalf("encode: got %x want %x", out, b)
	}
	if err := r.Decode(b[:13]); !errors.Is(err, io.ErrUnexpectedEOF) || r.Command != ReserveSet {
		t.Fatalf("truncated: %v", err)
	}
}

func TestSectorsPerFrame(t *testing.T) {
	for _, c := range []struct{ mtu, want int }{{1500, 2}, {9000, 17}, {1024, 1}, {20, 0}, {200000, 255}} {
		if got := SectorsPerFrame(c.mtu); got != c.want {
			t.Errorf("SectorsPerFrame(%d) = %d, want %d", c.mtu, got, c.want)
		}
	}
}

func TestErrorStrings(t *testing.T) {
	var err error = ErrConfigStringPresent
	if err.Error() != "AoE error 4: config string present" || Error(99).Error() != "AoE error 99" {
		t.Fatal(err)
	}
}

// TestCodecAllocs checks that the hot path (decode a request, encode a
// response into a reused buffer) does not allocate.
func TestCodecAllocs(t *testing.T) {
	frame := unhex(t, "020000000002"+"020000000001"+"88a2"+"10"+"00"+"0001"+"01"+"00"+"00000001"+
		"40"+"00"+"02"+"24"+"000100000000"+"0000")
	out := make([]byte, 0, 2048)
	var h Header
	var a ATA
	allocs := testing.AllocsPerRun(1000, func() {
		if err := h.Decode(frame); err != nil {
			t.Fatal(err)
		}
		if err := a.Decode(frame[HeaderLen:]); err != nil {
			t.Fatal(err)
		}
		h.Flags |= FlagResponse
		b, _ := h.AppendBinary(out[:0])
		b, _ = a.AppendBinary(b)
		_ = b
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per frame, want 0", allocs)
	}
}

// roundTrip is the fuzz check of STYLE.md §3: decode, encode, decode again and
// compare, then encode once more and compare the bytes.
func roundTrip[T any, P interface {
	*T
	Decode([]byte) error
	AppendBinary([]byte) ([]byte, error)
}](t *testing.T, b []byte) {
	var v1, v2 T
	if err := P(&v1).Decode(b); err != nil {
		return
	}
	enc1, err := P(&v1).AppendBinary(nil)
	if err != nil {
		t.Fatalf("encode decoded value %+v: %v", v1, err)
	}
	if err := P(&v2).Decode(enc1); err != nil {
		t.Fatalf("decode re-encoded %x: %v", enc1, err)
	}
	if !reflect.DeepEqual(v1, v2) {
		t.Fatalf("round trip differs:\n%+v\n%+v", v1, v2)
	}
	enc2, _ := P(&v2).AppendBinary(nil)
	if !bytes.Equal(enc1, enc2) {
		t.Fatalf("re-encoding differs: %x vs %x", enc1, enc2)
	}
}

func FuzzHeader(f *testing.F) {
	f.Add(unhex(f, "ffffffffffff02000000000188a21000ffffff0100000001"))
	f.Add(unhex(f, "ffffffffffff02000000000188a2"))
	f.Fuzz(func(t *testing.T, b []byte) {
		roundTrip[Header](t, b)
		var h Header
		if h.Decode(b) == nil {
			enc, _ := h.AppendBinary(nil)
			if !bytes.Equal(enc, b[:HeaderLen]) {
				t.Fatalf("header bytes differ: %x vs %x", enc, b[:HeaderLen])
			}
		}
	})
}

func FuzzATA(f *testing.F) {
	f.Add(unhex(f, "4100023401020304050600000102"))
	f.Add(unhex(f, "000001ec000000000000"))
	f.Fuzz(func(t *testing.T, b []byte) { roundTrip[ATA](t, b) })
}

func FuzzConfig(f *testing.F) {
	f.Add(unhex(f, "0040401902130003616263"))
	f.Add(unhex(f, "00000000001004ff"))
	f.Fuzz(func(t *testing.T, b []byte) { roundTrip[Config](t, b) })
}

func FuzzMask(f *testing.F) {
	f.Add(unhex(f, "0001000200010200000000010002020000000002"))
	f.Add(unhex(f, "00010301"))
	f.Fuzz(func(t *testing.T, b []byte) { roundTrip[Mask](t, b) })
}

func FuzzReserve(f *testing.F) {
	f.Add(unhex(f, "0102020000000001020000000002"))
	f.Add(unhex(f, "02ff"))
	f.Fuzz(func(t *testing.T, b []byte) { roundTrip[Reserve](t, b) })
}
