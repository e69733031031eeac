package aoe

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"net"
	"slices"
	"testing"

	"github.com/tharsis/tharsis/blockdev"
)

var (
	tgtMAC   = MAC{2, 0, 0, 0, 0, 0xaa}
	hostMAC  = MAC{2, 0, 0, 0, 0, 1}
	otherMAC = MAC{2, 0, 0, 0, 0, 2}
)

func newTestCore(t *testing.T, cfgs ...TargetConfig) *core {
	t.Helper()
	c, err := newCore("test0", cfgs, "", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	c.frameLen = EthernetLen + 9000
	c.setEnv(tgtMAC, 1500)
	return c
}

// exchange routes one request through c and returns the responses.
func exchange(c *core, req []byte) [][]byte {
	var out [][]byte
	for _, t := range c.route(nil, req, len(req)) {
		b := make([]byte, c.frameLen)
		copy(b, req)
		if o := t.handle(b, len(req), c.env.Load()); o.n > 0 {
			out = append(out, b[:o.n])
		}
		t.gate.leave()
	}
	return out
}

func request(src MAC, shelf uint16, slot uint8, cmd Command, arg []byte) []byte {
	h := Header{Dst: tgtMAC, Src: src, Version: Version, Shelf: shelf, Slot: slot, Command: cmd, Tag: 7}
	b, _ := h.AppendBinary(nil)
	return append(b, arg...)
}

func ataReq(cmd uint8, lba uint64, sectors uint8, data []byte) []byte {
	a := ATA{CmdStat: cmd, LBA: lba, Sectors: sectors, Data: data}
	if cmd == ATAWriteSectors || cmd == ATAWriteSectorsExt {
		a.Flags |= ATAWrite
	}
	if cmd == ATAReadSectorsExt || cmd == ATAWriteSectorsExt {
		a.Flags |= ATAExtended
	}
	b, _ := a.AppendBinary(nil)
	return b
}

func cfgReq(cmd ConfigCommand, s string) []byte {
	c := Config{Version: 1, Command: cmd, String: []byte(s)}
	b, _ := c.AppendBinary(nil)
	return b
}

func one(t *testing.T, out [][]byte) (Header, []byte) {
	t.Helper()
	if len(out) != 1 {
		t.Fatalf("%d responses, want 1", len(out))
	}
	var h Header
	if err := h.Decode(out[0]); err != nil {
		t.Fatal(err)
	}
	if h.Flags&FlagResponse == 0 || h.Dst != hostMAC || h.Src != tgtMAC || h.Tag != 7 {
		t.Fatalf("bad response header %+v", h)
	}
	return h, out[0][HeaderLen:]
}

func TestTargetConfigString(t *testing.T) {
	c := newTestCore(t, TargetConfig{Shelf: 1, Slot: 1, Device: blockdev.NewMemory(1 << 20)})
	q := func(cmd ConfigCommand, s string) [][]byte {
		return exchange(c, request(hostMAC, 1, 1, CmdConfig, cfgReq(cmd, s)))
	}
	h, arg := one(t, q(ConfigRead, ""))
	var cf Config
	if err := cf.Decode(arg); err != nil || cf.Sectors != 2 || cf.BufCnt != 64 || len(cf.String) != 0 || h.Error != 0 {
		t.Fatalf("read: %v %+v", err, cf)
	}
	if out := q(ConfigTest, "x"); len(out) != 0 {
		t.Fatal("test on a mismatch answered")
	}
	one(t, q(ConfigSet, "abc"))
	if h, _ := one(t, q(ConfigSet, "abd")); h.Flags&FlagError == 0 || h.Error != ErrConfigStringPresent {
		t.Fatalf("set over another string: %+v", h)
	}
	if h, _ := one(t, q(ConfigSet, "abc")); h.Flags&FlagError != 0 {
		t.Fatal("set of the same string failed")
	}
	one(t, q(ConfigTest, "abc"))
	one(t, q(ConfigPrefix, "ab"))
	if len(q(ConfigPrefix, "abd")) != 0 || len(q(ConfigTest, "ab")) != 0 {
		t.Fatal("mismatch answered")
	}
	_, arg = one(t, q(ConfigForceSet, "zz"))
	if cf.Decode(arg); string(cf.String) != "zz" {
		t.Fatalf("force set: %q", cf.String)
	}
	if h, _ := one(t, q(9, "")); h.Error != ErrBadArgument {
		t.Fatalf("bad ccmd: %+v", h)
	}
	// Broadcast reaches the target; another shelf does not.
	if len(exchange(c, request(hostMAC, BroadcastShelf, BroadcastSlot, CmdConfig, cfgReq(ConfigRead, "")))) != 1 {
		t.Fatal("broadcast not answered")
	}
	if len(exchange(c, request(hostMAC, 2, 1, CmdConfig, cfgReq(ConfigRead, "")))) != 0 {
		t.Fatal("other shelf answered")
	}
}

func TestTargetATA(t *testing.T) {
	dev := blockdev.NewMemory(1 << 20) // 2048 sectors
	c := newTestCore(t, TargetConfig{Shelf: 1, Slot: 1, Device: dev, Serial: "tharsis-e1.1-alpha"})
	data := bytes.Repeat([]byte{0xab, 0xcd}, 512)
	_, arg := one(t, exchange(c, request(hostMAC, 1, 1, CmdATA, ataReq(ATAWriteSectorsExt, 2047-1, 2, data))))
	var a ATA
	a.Decode(arg)
	if a.CmdStat != ATAStatusDRDY || a.ErrFeat != 0 || a.Sectors != 0 {
		t.Fatalf("write: %+v", a)
	}
	_, arg = one(t, exchange(c, request(hostMAC, 1, 1, CmdATA, ataReq(ATAReadSectorsExt, 2046, 2, nil))))
	a.Decode(arg)
	if a.CmdStat != ATAStatusDRDY || !bytes.Equal(a.Data[:1024], data) {
		t.Fatalf("read back: status %#x", a.CmdStat)
	}
	// Out of range: IDNF; too many sectors: AoE error 2.
	_, arg = one(t, exchange(c, request(hostMAC, 1, 1, CmdATA, ataReq(ATAReadSectorsExt, 2047, 2, nil))))
	if a.Decode(arg); a.CmdStat != ATAStatusDRDY|ATAStatusERR || a.ErrFeat != ATAErrIDNF {
		t.Fatalf("out of range: %+v", a)
	}
	h, _ := one(t, exchange(c, request(hostMAC, 1, 1, CmdATA, ataReq(ATAReadSectorsExt, 0, 3, nil))))
	if h.Error != ErrBadArgument || h.Flags&FlagError == 0 {
		t.Fatalf("oversize: %+v", h)
	}
	// LBA48 uses all six bytes: a high LBA is out of range, not wrapped.
	_, arg = one(t, exchange(c, request(hostMAC, 1, 1, CmdATA, ataReq(ATAReadSectorsExt, 1<<40, 1, nil))))
	if a.Decode(arg); a.ErrFeat != ATAErrIDNF {
		t.Fatalf("LBA48: %+v", a)
	}
	// LBA28 ignores the device bits in LBA3.
	_, arg = one(t, exchange(c, request(hostMAC, 1, 1, CmdATA, ataReq(ATAReadSectors, 0xe0000000|2046, 1, nil))))
	if a.Decode(arg); a.CmdStat != ATAStatusDRDY || !bytes.Equal(a.Data[:512], data[:512]) {
		t.Fatalf("LBA28: %+v", a)
	}
	_, arg = one(t, exchange(c, request(hostMAC, 1, 1, CmdATA, ataReq(ATAIdentify, 0, 1, nil))))
	a.Decode(arg)
	id := a.Data[:512]
	if binary.LittleEndian.Uint32(id[120:]) != 2048 || binary.LittleEndian.Uint64(id[200:]) != 2048 ||
		binary.LittleEndian.Uint16(id[166:])&(1<<10) == 0 || binary.LittleEndian.Uint16(id[172:])&(1<<10) == 0 {
		t.Fatal("IDENTIFY capacity or LBA48 bits wrong")
	}
	if got := identString(id, 10, 20); got != "tharsis-e1.1-alpha" {
		t.Fatalf("serial %q", got)
	}
	for _, cmd := range []uint8{ATAFlushCache, ATAFlushCacheExt} {
		_, arg = one(t, exchange(c, request(hostMAC, 1, 1, CmdATA, ataReq(cmd, 0, 0, nil))))
		if a.Decode(arg); a.CmdStat != ATAStatusDRDY {
			t.Fatalf("flush %#x: %+v", cmd, a)
		}
	}
	_, arg = one(t, exchange(c, request(hostMAC, 1, 1, CmdATA, ataReq(0x99, 0, 0, nil))))
	if a.Decode(arg); a.CmdStat != ATAStatusDRDY|ATAStatusERR || a.ErrFeat != ATAErrABRT {
		t.Fatalf("unknown command: %+v", a)
	}
	_, arg = one(t, exchange(c, request(hostMAC, 1, 1, CmdATA, ataReq(ATACheckPowerMode, 0, 0, nil))))
	if a.Decode(arg); a.Sectors != 0xff || a.CmdStat != ATAStatusDRDY {
		t.Fatalf("check power mode: %+v", a)
	}
	if h, _ := one(t, exchange(c, request(hostMAC, 1, 1, 0x42, nil))); h.Error != ErrUnrecognizedCommand {
		t.Fatalf("unknown AoE command: %+v", h)
	}
}

func TestTargetReadOnly(t *testing.T) {
	c := newTestCore(t, TargetConfig{Shelf: 1, Slot: 1, Device: blockdev.NewMemory(1 << 20), ReadOnly: true})
	_, arg := one(t, exchange(c, request(hostMAC, 1, 1, CmdATA, ataReq(ATAWriteSectors, 0, 1, make([]byte, 512)))))
	var a ATA
	if a.Decode(arg); a.CmdStat != ATAStatusDRDY|ATAStatusERR || a.ErrFeat != ATAErrABRT {
		t.Fatalf("write to read-only: %+v", a)
	}
}

func TestTargetMaskAndReserve(t *testing.T) {
	dir := t.TempDir()
	cfg := TargetConfig{Shelf: 1, Slot: 1, Device: blockdev.NewMemory(1 << 20), StateDir: dir}
	c := newTestCore(t, cfg)
	// Reserve for hostMAC; otherMAC then gets error 6 for I/O but not IDENTIFY.
	one(t, exchange(c, request(hostMAC, 1, 1, CmdReserve, append([]byte{byte(ReserveSet), 1}, hostMAC[:]...))))
	if len(exchange(c, request(otherMAC, 1, 1, CmdATA, ataReq(ATAReadSectors, 0, 1, nil)))) != 1 {
		t.Fatal("no response")
	}
	out := exchange(c, request(otherMAC, 1, 1, CmdATA, ataReq(ATAReadSectors, 0, 1, nil)))
	var h Header
	if h.Decode(out[0]); h.Error != ErrTargetReserved {
		t.Fatalf("non-member read: %+v", h)
	}
	out = exchange(c, request(otherMAC, 1, 1, CmdATA, ataReq(ATAIdentify, 0, 1, nil)))
	if h.Decode(out[0]); h.Flags&FlagError != 0 {
		t.Fatalf("non-member IDENTIFY: %+v", h)
	}
	out = exchange(c, request(otherMAC, 1, 1, CmdReserve, []byte{byte(ReserveSet), 0}))
	if h.Decode(out[0]); h.Error != ErrTargetReserved {
		t.Fatalf("non-member set: %+v", h)
	}
	// Mac Mask: add hostMAC, then otherMAC is dropped.
	edit := AppendDirective([]byte{0, byte(MaskEdit), 0, 1}, DirAdd, hostMAC)
	_, arg := one(t, exchange(c, request(hostMAC, 1, 1, CmdMask, edit)))
	var m Mask
	if err := m.Decode(arg); err != nil || m.Count != 1 {
		t.Fatalf("mask edit: %v %+v", err, m)
	}
	if len(exchange(c, request(otherMAC, 1, 1, CmdConfig, cfgReq(ConfigRead, "")))) != 0 {
		t.Fatal("masked-out MAC answered")
	}
	bad := AppendDirective([]byte{0, byte(MaskEdit), 0, 1}, 7, otherMAC)
	_, arg = one(t, exchange(c, request(hostMAC, 1, 1, CmdMask, bad)))
	if m.Decode(arg); m.Error != MaskErrBadDirective || m.Count != 0 {
		t.Fatalf("bad directive: %+v", m)
	}
	// A restart keeps the state.
	c2 := newTestCore(t, cfg)
	st := c2.list()[0].state.Load()
	if len(st.Masks) != 1 || st.Masks[0] != hostMAC || len(st.Reserve) != 1 {
		t.Fatalf("state after restart: %+v", st)
	}
	// AllowMACs applies when nothing is persisted.
	c3 := newTestCore(t, TargetConfig{Shelf: 1, Slot: 2, Device: blockdev.NewMemory(1 << 20), AllowMACs: []net.HardwareAddr{hostMAC[:]}})
	if len(exchange(c3, request(otherMAC, 1, 2, CmdConfig, cfgReq(ConfigRead, "")))) != 0 {
		t.Fatal("allow_macs did not drop another MAC")
	}
}

// unchanged fails the test unless every device is still zero and no target
// state (config string, Mac Mask list, reserve list) was set.
func unchanged(t *testing.T, c *core) {
	t.Helper()
	for _, tg := range c.list() {
		if slices.ContainsFunc(tg.cfg.Device.(*blockdev.Memory).Bytes(), func(b byte) bool { return b != 0 }) {
			t.Fatalf("%s: device written", tg.name)
		}
		if st := tg.state.Load(); len(st.Config) != 0 || len(st.Masks) != 0 || len(st.Reserve) != 0 {
			t.Fatalf("%s: state changed: %+v", tg.name, st)
		}
	}
}

// TestTargetBroadcastRefused: through a broadcast shelf or slot only a
// version 1 Query Config reaches the targets; anything else is dropped
// unexecuted, unanswered and counted on every target it addresses.
func TestTargetBroadcastRefused(t *testing.T) {
	c := newTestCore(t, TargetConfig{Shelf: 1, Slot: 1, Device: blockdev.NewMemory(1 << 20)},
		TargetConfig{Shelf: 1, Slot: 2, Device: blockdev.NewMemory(1 << 20)},
		TargetConfig{Shelf: 2, Slot: 1, Device: blockdev.NewMemory(1 << 20)})
	data := bytes.Repeat([]byte{0x5a}, 512)
	for _, a := range []struct {
		shelf uint16
		slot  uint8
	}{{BroadcastShelf, BroadcastSlot}, {1, BroadcastSlot}, {BroadcastShelf, 1}} {
		for _, req := range [][]byte{
			request(hostMAC, a.shelf, a.slot, CmdATA, ataReq(ATAWriteSectorsExt, 5, 1, data)),
			request(hostMAC, a.shelf, a.slot, CmdATA, ataReq(ATAWriteSectors, 5, 1, data)),
			request(hostMAC, a.shelf, a.slot, CmdATA, ataReq(ATAReadSectorsExt, 5, 1, nil)),
			request(hostMAC, a.shelf, a.slot, CmdMask, AppendDirective([]byte{0, byte(MaskEdit), 0, 1}, DirAdd, otherMAC)),
			request(hostMAC, a.shelf, a.slot, CmdReserve, append([]byte{byte(ReserveSet), 1}, otherMAC[:]...)),
			request(hostMAC, a.shelf, a.slot, 0x42, nil),
		} {
			if out := exchange(c, req); len(out) != 0 {
				t.Fatalf("e%d.%d command %v: %d responses, want none", a.shelf, a.slot, Command(req[19]), len(out))
			}
		}
	}
	unchanged(t, c)
	// e1.1 is addressed by all three addresses, e1.2 and e2.1 by two.
	for i, want := range []uint64{18, 12, 12} {
		if got := c.list()[i].refusedBcast.Load(); got != want {
			t.Fatalf("%s refused %d broadcasts, want %d", c.list()[i].name, got, want)
		}
	}
	// Discovery still reaches every target, each answering as itself.
	out := exchange(c, request(hostMAC, BroadcastShelf, BroadcastSlot, CmdConfig, cfgReq(ConfigRead, "")))
	if len(out) != 3 {
		t.Fatalf("broadcast Query Config: %d responses, want 3", len(out))
	}
	for i, r := range out {
		var h Header
		if h.Decode(r); h.Flags != FlagResponse || h.Shelf != c.list()[i].cfg.Shelf || h.Slot != c.list()[i].cfg.Slot {
			t.Fatalf("broadcast Query Config response %d: %+v", i, h)
		}
	}
	if out := exchange(c, request(hostMAC, 1, BroadcastSlot, CmdConfig, cfgReq(ConfigRead, ""))); len(out) != 2 {
		t.Fatalf("Query Config to e1.255: %d responses, want 2", len(out))
	}
	// A broadcast of another version is dropped like any other.
	req := request(hostMAC, BroadcastShelf, BroadcastSlot, CmdConfig, cfgReq(ConfigRead, ""))
	req[14] = 2 << 4
	if out := exchange(c, req); len(out) != 0 || c.list()[2].refusedBcast.Load() != 13 {
		t.Fatalf("version 2 broadcast: %d responses, %d refused", len(out), c.list()[2].refusedBcast.Load())
	}
	if c.list()[0].badVersion.Load() != 0 {
		t.Fatal("a broadcast counted as an error 5 response")
	}
}

// TestTargetUnsupportedVersion: a request of another AoE version addressed
// to the target is not executed and gets a header-only error 5 response.
func TestTargetUnsupportedVersion(t *testing.T) {
	c := newTestCore(t, TargetConfig{Shelf: 1, Slot: 1, Device: blockdev.NewMemory(1 << 20)})
	tg := c.list()[0]
	data := bytes.Repeat([]byte{0xa5}, 1024)
	count := uint64(0)
	for _, ver := range []uint8{0, 2, 15} {
		for _, req := range [][]byte{
			request(hostMAC, 1, 1, CmdATA, ataReq(ATAWriteSectorsExt, 0, 2, data)),
			request(hostMAC, 1, 1, CmdATA, ataReq(ATAFlushCacheExt, 0, 0, nil)),
			request(hostMAC, 1, 1, CmdConfig, cfgReq(ConfigForceSet, "v2")),
			request(hostMAC, 1, 1, CmdMask, AppendDirective([]byte{0, byte(MaskEdit), 0, 1}, DirAdd, otherMAC)),
			request(hostMAC, 1, 1, CmdReserve, append([]byte{byte(ReserveSet), 1}, otherMAC[:]...)),
			request(hostMAC, 1, 1, 0x42, nil),
		} {
			req[14] = ver << 4
			if tg.blocks(req, len(req)) {
				t.Fatalf("version %d %v frame goes to the write stage", ver, Command(req[19]))
			}
			out := exchange(c, req)
			h, arg := one(t, out)
			count++
			if len(out[0]) != MinFrameLen || h.Version != Version || h.Flags != FlagResponse|FlagError ||
				h.Error != ErrUnsupportedVersion || h.Shelf != 1 || h.Slot != 1 || h.Command != Command(req[19]) ||
				slices.ContainsFunc(arg, func(b byte) bool { return b != 0 }) {
				t.Fatalf("version %d %v: %d bytes, header %+v, argument %x", ver, Command(req[19]), len(out[0]), h, arg)
			}
		}
	}
	unchanged(t, c)
	if got := tg.badVersion.Load(); got != count {
		t.Fatalf("badVersion %d, want %d", got, count)
	}
	// A response is never answered, whatever its version.
	req := request(hostMAC, 1, 1, CmdConfig, cfgReq(ConfigRead, ""))
	req[14] = 2<<4 | uint8(FlagResponse|FlagError)
	if out := exchange(c, req); len(out) != 0 {
		t.Fatal("a version 2 response was answered")
	}
}

// FuzzTargetFrame feeds arbitrary frames to two targets and checks what no
// frame may do: answer a response or a refused broadcast, answer with
// another version or tag, execute a broadcast other than Query Config or a
// request of another version, or answer such a request with anything but a
// 60-byte error 5.
func FuzzTargetFrame(f *testing.F) {
	data := bytes.Repeat([]byte{0x5a}, 512)
	f.Add(request(hostMAC, BroadcastShelf, BroadcastSlot, CmdATA, ataReq(ATAWriteSectorsExt, 5, 1, data)))
	f.Add(request(hostMAC, 1, BroadcastSlot, CmdATA, ataReq(ATAWriteSectors, 5, 1, data)))
	f.Add(request(hostMAC, BroadcastShelf, BroadcastSlot, CmdConfig, cfgReq(ConfigRead, "")))
	f.Add(request(hostMAC, BroadcastShelf, 2, CmdReserve, append([]byte{byte(ReserveSet), 1}, otherMAC[:]...)))
	f.Add(request(hostMAC, 1, 1, CmdATA, ataReq(ATAReadSectorsExt, 0, 1, nil)))
	v2 := request(hostMAC, 1, 2, CmdATA, ataReq(ATAWriteSectorsExt, 0, 1, data))
	v2[14] = 2 << 4
	f.Add(v2)
	f.Fuzz(func(t *testing.T, frame []byte) {
		c := newTestCore(t, TargetConfig{Shelf: 1, Slot: 1, Device: blockdev.NewMemory(64 << 10)},
			TargetConfig{Shelf: 1, Slot: 2, Device: blockdev.NewMemory(64 << 10)})
		if len(frame) > c.frameLen {
			frame = frame[:c.frameLen]
		}
		var h Header
		request := h.Decode(frame) == nil && h.Flags&FlagResponse == 0
		bcast := h.Shelf == BroadcastShelf || h.Slot == BroadcastSlot
		discovery := h.Command == CmdConfig && h.Version == Version
		out := exchange(c, frame)
		if !request || (bcast && !discovery) {
			if len(out) != 0 {
				t.Fatalf("%d responses to a response, non-AoE frame or refused broadcast", len(out))
			}
		}
		if !request || h.Version != Version || (bcast && !discovery) {
			unchanged(t, c)
		}
		for _, r := range out {
			var rh Header
			if err := rh.Decode(r); err != nil || len(r) < MinFrameLen {
				t.Fatalf("response %x: %v", r, err)
			}
			if rh.Flags&FlagResponse == 0 || rh.Version != Version || rh.Tag != h.Tag || rh.Command != h.Command || rh.Dst != h.Src {
				t.Fatalf("response header %+v to request %+v", rh, h)
			}
			if h.Version != Version && (len(r) != MinFrameLen || rh.Flags&FlagError == 0 || rh.Error != ErrUnsupportedVersion) {
				t.Fatalf("version %d request answered with %d bytes, %+v", h.Version, len(r), rh)
			}
		}
	})
}
