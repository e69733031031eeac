package aoe

import (
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
)

// errClosed is returned by Announce after Close.
var errClosed = errors.New("AoE server is closed")

// batchLen is how many frames a worker receives, handles and sends per
// system call.
const batchLen = 16

// core is the platform-independent part of a Server: the targets of one
// interface and how a received frame reaches them.
type core struct {
	iface   string
	log     *slog.Logger
	targets []*target
	byAddr  map[uint32]*target
	env     atomic.Pointer[env]
	// frameLen is the size of every frame buffer: the Ethernet header plus
	// max(MTU at start, 9000). It bounds the sectors per frame offered.
	frameLen int
}

func newCore(iface string, targets []TargetConfig, node string, logger *slog.Logger) (*core, error) {
	if logger == nil {
		logger = slog.Default()
	}
	c := &core{iface: iface, log: logger.With("iface", iface), byAddr: map[uint32]*target{}}
	if len(targets) == 0 {
		return nil, fmt.Errorf("AoE server on %s: no targets to serve", iface)
	}
	for _, tc := range targets {
		t, err := newTarget(tc, node, c.log)
		if err != nil {
			return nil, err
		}
		key := uint32(tc.Shelf)<<8 | uint32(tc.Slot)
		if _, dup := c.byAddr[key]; dup {
			return nil, fmt.Errorf("AoE target %s is configured twice on %s; give each export its own shelf.slot", t.name, iface)
		}
		c.byAddr[key] = t
		t.idx = len(c.targets)
		c.targets = append(c.targets, t)
	}
	return c, nil
}

// setEnv publishes the interface's MAC and MTU. It reports whether the
// sectors per frame changed.
func (c *core) setEnv(mac MAC, mtu int) bool {
	n := SectorsPerFrame(mtu)
	if lim := (c.frameLen - ATAFrameLen) / SectorSize; n > lim {
		n = lim
	}
	old := c.env.Load()
	c.env.Store(&env{mac: mac, mtu: mtu, maxSector: n})
	return old == nil || old.maxSector != n || old.mtu != mtu
}

// route appends to dst the targets that the request frame b[:n] addresses
// and whose Mac Mask list lets its sender in. Responses, short frames and
// frames of another EtherType address none.
//
// A broadcast address (shelf 0xffff, slot 0xff, or both) reaches its
// targets only with a version 1 Query Config, which is how initiators
// discover targets. Any other broadcast request (ATA, Mac Mask List,
// Reserve/Release, unknown commands, other AoE versions) is dropped
// unexecuted and counted in each addressed target's refusedBcast: executed,
// one ATA WRITE to e65535.255 would write every target on the segment
// (vblade 25 does exactly that: its aoe() accepts maj 0xffff and min 0xff
// for every command). It gets no error response either: no initiator sends
// such a request on purpose (the Linux driver's aoecmd_cfg_rsp refuses a
// broadcast shelf or slot as a target address, "broadcast shelf number
// invalid", so its ATA requests never carry one), none of AoEr11's error
// codes says "not by broadcast", and an answer from every target to every
// such frame would turn one broadcast into a storm of responses.
func (c *core) route(dst []*target, b []byte, n int) []*target {
	if n < HeaderLen || b[12] != EtherType>>8 || b[13] != EtherType&0xff || b[14]&uint8(FlagResponse) != 0 {
		return dst
	}
	var src MAC
	copy(src[:], b[6:12])
	shelf := uint16(b[16])<<8 | uint16(b[17])
	slot := b[18]
	if shelf != BroadcastShelf && slot != BroadcastSlot {
		if t := c.byAddr[uint32(shelf)<<8|uint32(slot)]; t != nil {
			if t.allowed(src) {
				dst = append(dst, t)
			} else {
				t.dropped.Add(1)
			}
		}
		return dst
	}
	discovery := Command(b[19]) == CmdConfig && b[14]>>4 == Version
	for _, t := range c.targets {
		if (shelf == BroadcastShelf || shelf == t.cfg.Shelf) && (slot == BroadcastSlot || slot == t.cfg.Slot) {
			switch {
			case !discovery:
				t.refusedBcast.Add(1)
			case t.allowed(src):
				dst = append(dst, t)
			default:
				t.dropped.Add(1)
			}
		}
	}
	return dst
}
