package aoe

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tharsis/tharsis/blockdev"
)

// FirmwareVersion is the firmware version a target reports in Query Config
// responses (the Linux driver logs it as "v%04x").
const FirmwareVersion = 0x0001

// DefaultBufCnt is the buffer count advertised when TargetConfig.BufCnt is 0.
// The Linux driver keeps min(bufcnt, 64) frames outstanding.
const DefaultBufCnt = 64

// maxMasks is the capacity of the Mac Mask list; vblade's Nmasks.
const maxMasks = 32

// TargetConfig describes one shelf.slot target.
type TargetConfig struct {
	Shelf uint16 // major; 0xffff is the broadcast shelf and is refused
	Slot  uint8  // minor; 0xff is the broadcast slot and is refused
	// Device stores the sectors. The Server does not close it.
	Device blockdev.Device
	// ReadOnly refuses writes with ATA status ERR|DRDY and ABRT (as
	// vblade -r does).
	ReadOnly bool
	// WriteCache acknowledges a write once WriteAt returned (the data may
	// sit in the page cache; vblade's default). When false, a write is
	// acknowledged only once durable: after Device.Flush, which concurrent
	// writes share, or, on a blockdev.FUAWriter, with WriteAtFUA.
	WriteCache bool
	// AllowMACs is the initial Mac Mask list when none is persisted: frames
	// from other MACs are dropped. Empty lets anyone in.
	AllowMACs []net.HardwareAddr
	// BufCnt is the buffer count advertised in Query Config; 0 means
	// DefaultBufCnt.
	BufCnt int
	// StateDir, when set, holds the persisted config string, Mac Mask list
	// and reserve list in StateDir/aoe-e<shelf>.<slot>.json.
	StateDir string
	// Model, Serial and Firmware are the IDENTIFY DEVICE strings (40, 20
	// and 8 characters at most). Serial should name shelf.slot and node,
	// e.g. "tharsis-e1.1-alpha". Empty values get defaults.
	Model, Serial, Firmware string
	// Stats, when set, counts the target's ATA commands by operation:
	// sectors read and written (in bytes), errors, and the time the target
	// took to execute each command. A write acknowledged only after a
	// flush (WriteCache false) is counted when written; the shared flush
	// that follows is not in its latency. The caller reads it.
	Stats *blockdev.Stats
}

// Name returns the target's aoe-stat name, e.g. "e1.1".
func (c *TargetConfig) Name() string { return fmt.Sprintf("e%d.%d", c.Shelf, c.Slot) }

// targetState is the mutable, persisted state of a target. A value is never
// modified once published; changes publish a new one.
type targetState struct {
	Config  []byte
	Masks   []MAC
	Reserve []MAC
}

func member(list []MAC, m MAC) bool {
	for _, x := range list {
		if x == m {
			return true
		}
	}
	return false
}

// target serves one shelf.slot. Request handling is pure apart from the
// Device and the state file.
type target struct {
	cfg     TargetConfig
	name    string
	bufcnt  uint16
	ident   [SectorSize]byte // IDENTIFY template without capacity
	path    string           // state file, "" if not persisted
	log     *slog.Logger
	mu      sync.Mutex // serialises state changes and their persistence
	state   atomic.Pointer[targetState]
	reads   atomic.Uint64
	writes  atomic.Uint64
	ioerrs  atomic.Uint64
	dropped atomic.Uint64 // frames dropped by the Mac Mask list
	// refusedBcast counts broadcast requests dropped unexecuted (anything
	// but a version 1 Query Config; see core.route).
	refusedBcast atomic.Uint64
	// badVersion counts requests of another AoE version, answered with
	// error 5 (see handle).
	badVersion atomic.Uint64
	// gate admits the frames routed to the target; RemoveTarget closes
	// it and waits until they are answered.
	gate *gate
	// fua is the device as a blockdev.FUAWriter (nil when it is none).
	fua blockdev.FUAWriter
	// com group-commits the target's write responses while the Server's
	// write stage runs (under Server.tmu).
	com *committer
	// stopAnnounce ends the target's scheduled announcements (nil when
	// none run; under Server.tmu).
	stopAnnounce chan struct{}
	// withdrawn: RemoveTarget took the target away; no announcement
	// leaves any more (under mu).
	withdrawn bool
	// inlineWrites: the device's WriteAt only copies into the page cache
	// or memory (blockdev.File, blockdev.Memory), so a receiving worker may
	// call it itself. Any other device (e.g. replicate.Primary, whose
	// WriteAt waits for the log's fdatasync) is written from the write
	// stage, so that many writes are in flight at once.
	inlineWrites bool
}

func newTarget(cfg TargetConfig, node string, logger *slog.Logger) (*target, error) {
	if cfg.Shelf == BroadcastShelf || cfg.Slot == BroadcastSlot {
		return nil, fmt.Errorf("AoE target e%d.%d: shelf 65535 and slot 255 are broadcast addresses; pick a smaller shelf or slot", cfg.Shelf, cfg.Slot)
	}
	if cfg.Device == nil {
		return nil, fmt.Errorf("AoE target %s has no device", cfg.Name())
	}
	if cfg.BufCnt < 0 || cfg.BufCnt > 0xffff {
		return nil, fmt.Errorf("AoE target %s: bufcnt %d is outside 0..65535", cfg.Name(), cfg.BufCnt)
	}
	t := &target{cfg: cfg, name: cfg.Name(), bufcnt: uint16(cfg.BufCnt), log: logger.With("target", cfg.Name()), gate: newGate()}
	t.fua, _ = cfg.Device.(blockdev.FUAWriter)
	if t.bufcnt == 0 {
		t.bufcnt = DefaultBufCnt
	}
	if cfg.Model == "" {
		t.cfg.Model = "tharsis AoE target"
	}
	if cfg.Serial == "" {
		t.cfg.Serial = "tharsis-" + cfg.Name()
		if node != "" {
			t.cfg.Serial += "-" + node
		}
	}
	if cfg.Firmware == "" {
		t.cfg.Firmware = "tharsis1"
	}
	t.inlineWrites = inlineDevice(cfg.Device)
	t.buildIdent()
	st := &targetState{}
	for _, a := range cfg.AllowMACs {
		m, err := MACFrom(a)
		if err != nil {
			return nil, fmt.Errorf("AoE target %s allow_macs: %w", cfg.Name(), err)
		}
		if !member(st.Masks, m) {
			st.Masks = append(st.Masks, m)
		}
	}
	if len(st.Masks) > maxMasks {
		return nil, fmt.Errorf("AoE target %s: allow_macs lists %d addresses, at most %d fit the Mac Mask list", cfg.Name(), len(st.Masks), maxMasks)
	}
	if cfg.StateDir != "" {
		t.path = statePath(cfg.StateDir, cfg.Shelf, cfg.Slot)
		loaded, err := loadState(t.path)
		if err != nil {
			return nil, err
		}
		if loaded != nil {
			st = loaded
		}
	}
	t.state.Store(st)
	return t, nil
}

// setState publishes st and persists it. Callers hold t.mu.
func (t *target) setState(st *targetState) {
	t.state.Store(st)
	if t.path == "" {
		return
	}
	if err := writeState(t.path, st); err != nil {
		// The change is in effect but would be lost on restart: say so.
		t.log.Error("cannot persist AoE state; the change holds until restart", "path", t.path, "err", err)
	}
}

// setIdentString stores s in ATA string format: two characters per word,
// the first in the high byte, padded with spaces (as vblade's setfld).
func setIdentString(id []byte, word, n int, s string) {
	b := id[word*2 : word*2+n]
	for i := range b {
		b[i] = ' '
	}
	for i := 0; i < len(s) && i < n; i++ {
		b[i^1] = s[i]
	}
}

func (t *target) buildIdent() {
	id := t.ident[:]
	put := func(w int, v uint16) { binary.LittleEndian.PutUint16(id[w*2:], v) }
	// The same capability words as vblade, plus FLUSH CACHE EXT
	// (bit 13 of words 83 and 86), which tharsis implements.
	put(47, 0x8000)
	put(49, 0x0200) // LBA supported
	put(50, 0x4000)
	put(83, 0x7400) // bit 10: LBA48, bit 12: FLUSH CACHE, bit 13: FLUSH CACHE EXT
	put(84, 0x4000)
	put(86, 0x3400) // enabled: LBA48, FLUSH CACHE, FLUSH CACHE EXT
	put(87, 0x4000)
	put(93, 0x400b)
	setIdentString(id, 10, 20, t.cfg.Serial)
	setIdentString(id, 23, 8, t.cfg.Firmware)
	setIdentString(id, 27, 40, t.cfg.Model)
}

// putIdent writes the IDENTIFY DEVICE data for a device of the given size
// in sectors into b (512 bytes).
func (t *target) putIdent(b []byte, sectors uint64) {
	copy(b, t.ident[:])
	lba28 := sectors
	if lba28 > 0x0fffffff {
		lba28 = 0x0fffffff
	}
	binary.LittleEndian.PutUint32(b[120:124], uint32(lba28)) // words 60-61
	binary.LittleEndian.PutUint64(b[200:208], sectors&0xffffffffffff)
}

// inlineDevice reports whether d's WriteAt returns without waiting for a
// sync (a variable so that tests can make a fake device count as one).
var inlineDevice = func(d blockdev.Device) bool {
	switch d.(type) {
	case *blockdev.File, *blockdev.Memory:
		return true
	}
	return false
}

// blocks reports whether handling the request frame b[:n] may wait for the
// device to sync: FLUSH CACHE (EXT) always, and writes to a device whose
// WriteAt is not inline (see target.inlineWrites). Such frames are handled
// off the receiving path.
func (t *target) blocks(b []byte, n int) bool {
	if n < ATAFrameLen || Command(b[19]) != CmdATA || b[14]>>4 != Version {
		return false
	}
	switch b[HeaderLen+3] {
	case ATAFlushCache, ATAFlushCacheExt:
		return true
	case ATAWriteSectors, ATAWriteSectorsExt:
		return !t.inlineWrites && !t.cfg.ReadOnly
	}
	return false
}

// env is what request handling needs to know about the interface.
type env struct {
	mac       MAC
	mtu       int // interface MTU
	maxSector int // sectors per ATA frame
}

// Outcome of handling one request.
type outcome struct {
	n     int  // response length; 0: no response
	flush bool // the response acknowledges a write: flush before sending
}

func (t *target) replyHeader(b []byte, e *env, src MAC) {
	copy(b[0:6], src[:])
	copy(b[6:12], e.mac[:])
	b[14] = Version<<4 | uint8(FlagResponse)
	b[15] = 0
	binary.BigEndian.PutUint16(b[16:18], t.cfg.Shelf)
	b[18] = t.cfg.Slot
}

func setError(b []byte, code Error) {
	b[14] |= uint8(FlagError)
	b[15] = uint8(code)
}

// handle answers the request frame b[:n], addressed to t and accepted by its
// Mac Mask list, in place: b must have room for the largest response (a
// read of e.maxSector sectors). It returns the response length, 0 for none.
// Frames shorter than their command's header get no response, as in
// vblade.
//
// A request whose AoE version is not 1 is not executed: it gets error 5
// (unsupported version, AoEr11's error table; the Linux driver's
// aoe_errlist[5]) in a header-only response carrying version 1, the
// version we speak, and the request's command and tag. The argument is not
// echoed: its layout in another version is unknown. vblade 25 does not
// look at the version at all (it defines BadVersion but never uses it) and
// executes such a frame as version 1. Only requests addressed to t alone
// get here: core.route drops broadcast ones, and responses (R flag) are
// never answered.
func (t *target) handle(b []byte, n int, e *env) outcome {
	var src MAC
	copy(src[:], b[6:12])
	cmd := Command(b[19])
	ver := b[14] >> 4
	t.replyHeader(b, e, src) // the handlers below may set the E flag
	var o outcome
	if ver != Version {
		t.badVersion.Add(1)
		setError(b, ErrUnsupportedVersion)
		clear(b[HeaderLen:MinFrameLen])
		return outcome{n: MinFrameLen}
	}
	switch cmd {
	case CmdATA:
		if n < ATAFrameLen {
			return o
		}
		if t.cfg.Stats == nil {
			o = t.ata(b, n, e, src)
			break
		}
		// ata overwrites the command and the sector count.
		acmd, sectors, t0 := b[HeaderLen+3], int(b[HeaderLen+2]), time.Now()
		o = t.ata(b, n, e, src)
		t.count(b, acmd, sectors, time.Since(t0))
	case CmdConfig:
		if n < HeaderLen+ConfigArgLen {
			return o
		}
		o.n = t.config(b, n, e)
	case CmdMask:
		if n < HeaderLen+MaskArgLen {
			return o
		}
		o.n = t.mask(b, n)
	case CmdReserve:
		if n < HeaderLen+ReserveArgLen {
			return o
		}
		o.n = t.reserve(b, n, e, src)
	default:
		// vblade echoes the whole frame with error 1.
		o.n = n
	}
	if o.n == 0 {
		return o
	}
	if cmd > CmdReserve {
		setError(b, ErrUnrecognizedCommand)
	}
	if o.n < MinFrameLen {
		// Pad with zeros: never leak an older frame's bytes.
		if from := max(o.n, n); from < MinFrameLen {
			clear(b[from:MinFrameLen])
		}
		o.n = MinFrameLen
	}
	return o
}

// ata handles an ATA command the way vblade's aoeata and atacmd do, except
// that FLUSH CACHE (EXT) really flushes and I/O errors report UNC.
func (t *target) ata(b []byte, n int, e *env, src MAC) outcome {
	arg := b[HeaderLen:ATAFrameLen]
	aflags := ATAFlags(arg[0])
	reqSectors := int(arg[2])
	cmd := arg[3]
	errReg, status, sectors := arg[1], uint8(0), reqSectors
	o := outcome{n: MinFrameLen}
	if cmd != ATAIdentify {
		if st := t.state.Load(); len(st.Reserve) > 0 && !member(st.Reserve, src) {
			setError(b, ErrTargetReserved)
			return o
		}
	}
	maxBytes := e.maxSector * SectorSize
	data := b[ATAFrameLen:]
	devSectors := uint64(t.cfg.Device.Size()) / SectorSize
	switch cmd {
	default:
		status, errReg = ATAStatusDRDY|ATAStatusERR, ATAErrABRT
	case ATAFlushCache, ATAFlushCacheExt:
		status, errReg = ATAStatusDRDY, 0
		if err := t.cfg.Device.Flush(); err != nil {
			t.ioerrs.Add(1)
			t.log.Error("flush failed; reporting UNC to the initiator", "err", err)
			status, errReg = ATAStatusDRDY|ATAStatusERR, ATAErrUNC
		}
	case ATAIdentify:
		if reqSectors != 1 || maxBytes < SectorSize {
			setError(b, ErrBadArgument)
			return o
		}
		t.putIdent(data[:SectorSize], devSectors)
		status, errReg, sectors = ATAStatusDRDY, 0, 0
	case ATACheckPowerMode:
		status, errReg, sectors = ATAStatusDRDY, 0, 0xff // active or idle
	case ATAReadSectors, ATAReadSectorsExt, ATAWriteSectors, ATAWriteSectorsExt:
		lba := uint64(arg[4]) | uint64(arg[5])<<8 | uint64(arg[6])<<16 | uint64(arg[7])<<24
		if cmd == ATAReadSectors || cmd == ATAWriteSectors {
			lba &= 0x0fffffff // LBA28: the top nibble of LBA3 is the device register
		} else {
			lba |= uint64(arg[8])<<32 | uint64(arg[9])<<40
		}
		write := cmd == ATAWriteSectors || cmd == ATAWriteSectorsExt
		if reqSectors > e.maxSector || reqSectors*SectorSize > maxBytes {
			setError(b, ErrBadArgument)
			return o
		}
		if lba+uint64(reqSectors) > devSectors {
			status, errReg = ATAStatusDRDY|ATAStatusERR, ATAErrIDNF
			break
		}
		nb := reqSectors * SectorSize
		if write && n-ATAFrameLen < nb {
			setError(b, ErrBadArgument)
			return o
		}
		var err error
		switch {
		case write && t.cfg.ReadOnly:
			err = blockdev.ErrReadOnly
		case write && !t.cfg.WriteCache && t.fua != nil:
			// Durable as it is written: joins the log's group commit
			// at once instead of the committer's flush after it.
			_, err = t.fua.WriteAtFUA(data[:nb], int64(lba)*SectorSize)
			t.writes.Add(1)
		case write:
			_, err = t.cfg.Device.WriteAt(data[:nb], int64(lba)*SectorSize)
			t.writes.Add(1)
			o.flush = err == nil && !t.cfg.WriteCache && nb > 0
		default:
			_, err = t.cfg.Device.ReadAt(data[:nb], int64(lba)*SectorSize)
			t.reads.Add(1)
		}
		status, errReg = ATAStatusDRDY, 0
		switch {
		case err == nil:
			sectors = 0
		case errors.Is(err, blockdev.ErrReadOnly):
			status, errReg = ATAStatusDRDY|ATAStatusERR, ATAErrABRT
		case errors.Is(err, blockdev.ErrOutOfRange):
			status, errReg = ATAStatusDRDY|ATAStatusERR, ATAErrIDNF
		default: // I/O errors, blockdev.ErrNoSpace
			t.ioerrs.Add(1)
			t.log.Warn("I/O error; reporting UNC to the initiator", "write", write, "lba", lba, "sectors", reqSectors, "err", err)
			status, errReg = ATAStatusDRDY|ATAStatusERR, ATAErrUNC
		}
	}
	arg[1], arg[2], arg[3] = errReg, uint8(sectors), status
	if aflags&ATAWrite == 0 && reqSectors > 0 {
		// Like vblade: the response of a command without W carries the
		// sectors the command transferred.
		if done := reqSectors - sectors; done > 0 {
			o.n = ATAFrameLen + done*SectorSize
		} else {
			o.n = ATAFrameLen
		}
	}
	return o
}

// count records in t's Stats the ATA command acmd of sectors sectors,
// answered in the response frame b after d.
func (t *target) count(b []byte, acmd uint8, sectors int, d time.Duration) {
	failed := b[14]&uint8(FlagError) != 0 || b[HeaderLen+3]&ATAStatusERR != 0
	op := blockdev.OpOther
	switch acmd {
	case ATAReadSectors, ATAReadSectorsExt:
		op = blockdev.OpRead
	case ATAWriteSectors, ATAWriteSectorsExt:
		op = blockdev.OpWrite
	case ATAFlushCache, ATAFlushCacheExt:
		op = blockdev.OpFlush
	}
	n := 0
	if !failed && (op == blockdev.OpRead || op == blockdev.OpWrite) {
		n = sectors * SectorSize
	}
	t.cfg.Stats.Record(op, n, d, failed)
}

// config handles Query Config like vblade's confcmd.
func (t *target) config(b []byte, n int, e *env) int {
	arg := b[HeaderLen:]
	ccmd := ConfigCommand(arg[5] & 0x0f)
	l := int(binary.BigEndian.Uint16(arg[6:8]))
	if ccmd != ConfigRead && (l > MaxConfigLen || l > n-HeaderLen-ConfigArgLen) {
		return 0 // vblade: "if you can't play nice ..."
	}
	var str []byte
	if ccmd != ConfigRead {
		str = arg[ConfigArgLen : ConfigArgLen+l]
	}
	st := t.state.Load()
	switch ccmd {
	case ConfigTest:
		if l != len(st.Config) || !bytes.Equal(st.Config, str) {
			return 0
		}
	case ConfigPrefix:
		if !bytes.HasPrefix(st.Config, str) {
			return 0
		}
	case ConfigRead:
	case ConfigSet, ConfigForceSet:
		t.mu.Lock()
		st = t.state.Load()
		if ccmd == ConfigSet && len(st.Config) > 0 && !bytes.Equal(st.Config, str) {
			setError(b, ErrConfigStringPresent)
		} else if !bytes.Equal(st.Config, str) {
			nst := *st
			nst.Config = bytes.Clone(str)
			t.setState(&nst)
			st = &nst
			t.log.Info("AoE config string set", "config", string(str))
		}
		t.mu.Unlock()
	default:
		setError(b, ErrBadArgument)
	}
	t.putConfig(arg, st, e, ccmd)
	return HeaderLen + ConfigArgLen + len(st.Config)
}

func (t *target) putConfig(arg []byte, st *targetState, e *env, ccmd ConfigCommand) {
	binary.BigEndian.PutUint16(arg[0:2], t.bufcnt)
	binary.BigEndian.PutUint16(arg[2:4], FirmwareVersion)
	arg[4] = uint8(e.maxSector)
	arg[5] = Version<<4 | uint8(ccmd)&0x0f
	binary.BigEndian.PutUint16(arg[6:8], uint16(len(st.Config)))
	copy(arg[ConfigArgLen:], st.Config)
}

// mask handles Mac Mask List like vblade's aoemask. Directives that the
// frame does not hold are refused with error 2 (vblade reads past the
// frame).
func (t *target) mask(b []byte, n int) int {
	arg := b[HeaderLen:]
	switch MaskCommand(arg[1]) {
	case MaskEdit:
		count := int(arg[3])
		if HeaderLen+MaskArgLen+count*DirectiveLen > n {
			setError(b, ErrBadArgument)
			return HeaderLen + MaskArgLen
		}
		t.mu.Lock()
		st := t.state.Load()
		masks := slices.Clone(st.Masks)
		var merr MaskError
		failed := 0
		for i := 0; i < count; i++ {
			d := arg[MaskArgLen+i*DirectiveLen:]
			var m MAC
			copy(m[:], d[2:8])
			switch DirCommand(d[1]) {
			case DirNone:
			case DirDelete:
				if j := slices.Index(masks, m); j >= 0 {
					masks = slices.Delete(masks, j, j+1)
				}
			case DirAdd:
				if member(masks, m) {
					break
				}
				if len(masks) >= maxMasks {
					merr = MaskErrListFull
				} else {
					masks = append(masks, m)
				}
			default:
				merr = MaskErrBadDirective
			}
			if merr != 0 {
				failed = i
				break
			}
		}
		if !slices.Equal(masks, st.Masks) {
			// Edits before a failing directive stay applied, as in vblade.
			nst := *st
			nst.Masks = masks
			t.setState(&nst)
			t.log.Info("AoE Mac Mask list edited", "masks", fmt.Sprint(masks))
		}
		t.mu.Unlock()
		if merr != 0 {
			arg[2], arg[3] = uint8(merr), uint8(failed)
			return HeaderLen + MaskArgLen
		}
		fallthrough
	case MaskRead:
		st := t.state.Load()
		for i, m := range st.Masks {
			d := arg[MaskArgLen+i*DirectiveLen:]
			d[0], d[1] = 0, 0
			copy(d[2:8], m[:])
		}
		arg[2], arg[3] = 0, uint8(len(st.Masks))
		return HeaderLen + MaskArgLen + len(st.Masks)*DirectiveLen
	default:
		setError(b, ErrBadArgument)
		return HeaderLen + MaskArgLen
	}
}

// reserve handles Reserve/Release like vblade's aoesrr. A list whose
// response would not fit the MTU is refused with error 2 (vblade fails to
// send it and exits).
func (t *target) reserve(b []byte, n int, e *env, src MAC) int {
	arg := b[HeaderLen:]
	switch rcmd := ReserveCommand(arg[0]); rcmd {
	case ReserveRead:
	case ReserveSet, ReserveForceSet:
		t.mu.Lock()
		st := t.state.Load()
		count := int(arg[1])
		switch {
		case rcmd == ReserveSet && len(st.Reserve) > 0 && !member(st.Reserve, src):
			setError(b, ErrTargetReserved)
		case HeaderLen+ReserveArgLen+count*6 > n, ReserveArgLen+count*6 > e.mtu-(HeaderLen-EthernetLen):
			setError(b, ErrBadArgument)
		default:
			list := make([]MAC, count)
			for i := range list {
				copy(list[i][:], arg[ReserveArgLen+i*6:])
			}
			if !slices.Equal(list, st.Reserve) {
				nst := *st
				nst.Reserve = list
				t.setState(&nst)
				t.log.Info("AoE reserve list set", "reserve", fmt.Sprint(list), "by", src.String())
			}
		}
		t.mu.Unlock()
	default:
		setError(b, ErrBadArgument)
	}
	st := t.state.Load()
	arg[1] = uint8(len(st.Reserve))
	for i, m := range st.Reserve {
		copy(arg[ReserveArgLen+i*6:], m[:])
	}
	return HeaderLen + ReserveArgLen + len(st.Reserve)*6
}

// allowed reports whether the Mac Mask list lets src in.
func (t *target) allowed(src MAC) bool {
	st := t.state.Load()
	return len(st.Masks) == 0 || member(st.Masks, src)
}

// announce writes an unsolicited Query Config response into b (which needs
// room for HeaderLen+ConfigArgLen+MaxConfigLen bytes) addressed to dst and
// returns its length.
func (t *target) announce(b []byte, e *env, dst MAC) int {
	st := t.state.Load()
	h := Header{Dst: dst, Src: e.mac, Version: Version, Flags: FlagResponse,
		Shelf: t.cfg.Shelf, Slot: t.cfg.Slot, Command: CmdConfig}
	h.Put(b)
	t.putConfig(b[HeaderLen:], st, e, ConfigRead)
	n := HeaderLen + ConfigArgLen + len(st.Config)
	if n < MinFrameLen {
		clear(b[n:MinFrameLen])
		n = MinFrameLen
	}
	return n
}

// announceDsts returns where announcements go: to broadcast, or, like
// vblade, to each MAC of a non-empty Mac Mask list.
func (t *target) announceDsts() []MAC {
	st := t.state.Load()
	if len(st.Masks) == 0 {
		return []MAC{BroadcastMAC}
	}
	return st.Masks
}
