package aoe

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"
)

// errClosed is returned by Announce, AddTarget and RemoveTarget after Close.
var errClosed = errors.New("AoE server is closed")

// batchLen is how many frames a worker receives, handles and sends per
// system call.
const batchLen = 16

// DefaultAnnounceAt is when a Server announces a target after it starts
// serving it (at Serve, or at AddTarget while serving): an unsolicited
// Query Config response at once, then again 0.5, 1, 2 and 4 s later.
//
// The Linux aoe driver adds a MAC for a shelf.slot whenever it sees a Query
// Config response from it (aoecmd_cfg_rsp: gettgt, else addtgt) and sends
// new requests to it at once, but it only asks by itself every 60 s
// (aoemain.c discover_timer). After a handover, frames it sent to the old
// primary's MAC are moved to another MAC it knows once one of them waited
// HARD_SCORN_SECS (10 s; aoecmd.c rexmit_timer → scorn → reassign_frame).
// One announcement suffices when it arrives; the repeats cover a lost
// frame (a busy or just-started initiator, a bridge port still learning)
// while the first lands well inside those 10 s, and the last inside 5 s.
// See README "AoE and handovers".
var DefaultAnnounceAt = []time.Duration{0, 500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second}

// gate counts the frames a target is handling. A receiving worker enters it
// for each frame it routes to the target and leaves once the response is
// sent (or the frame is dropped); closing it refuses new frames and
// reports when the last one has left. It never blocks the hot path.
type gate struct {
	n    atomic.Int64 // frames inside, plus gateClosed once closed
	idle chan struct{}
}

const gateClosed = 1 << 62

func newGate() *gate { return &gate{idle: make(chan struct{})} }

// enter admits a frame unless the gate is closed.
func (g *gate) enter() bool {
	for {
		v := g.n.Load()
		if v&gateClosed != 0 {
			return false
		}
		if g.n.CompareAndSwap(v, v+1) {
			return true
		}
	}
}

// leave lets a frame out.
func (g *gate) leave() {
	if g.n.Add(-1) == gateClosed {
		close(g.idle)
	}
}

// close refuses new frames and returns a channel closed once every frame
// inside has left. Call it once.
func (g *gate) close() <-chan struct{} {
	if g.n.Or(gateClosed) == 0 {
		close(g.idle)
	}
	return g.idle
}

// targetSet is the targets of one interface; a published value is never
// modified (AddTarget and RemoveTarget publish a new one).
type targetSet struct {
	list   []*target
	byAddr map[uint32]*target
}

func addrKey(shelf uint16, slot uint8) uint32 { return uint32(shelf)<<8 | uint32(slot) }

// with returns a copy of ts with t added.
func (ts *targetSet) with(t *target) *targetSet {
	n := &targetSet{list: append(slices.Clip(ts.list), t), byAddr: make(map[uint32]*target, len(ts.byAddr)+1)}
	for k, v := range ts.byAddr {
		n.byAddr[k] = v
	}
	n.byAddr[addrKey(t.cfg.Shelf, t.cfg.Slot)] = t
	return n
}

// without returns a copy of ts without t.
func (ts *targetSet) without(t *target) *targetSet {
	n := &targetSet{byAddr: make(map[uint32]*target, len(ts.byAddr))}
	for _, x := range ts.list {
		if x != t {
			n.list = append(n.list, x)
			n.byAddr[addrKey(x.cfg.Shelf, x.cfg.Slot)] = x
		}
	}
	return n
}

// core is the platform-independent part of a Server: the targets of one
// interface and how a received frame reaches them.
type core struct {
	iface string
	node  string
	log   *slog.Logger
	set   atomic.Pointer[targetSet]
	env   atomic.Pointer[env]
	// frameLen is the size of every frame buffer: the Ethernet header plus
	// max(MTU at start, 9000). It bounds the sectors per frame offered.
	frameLen int
}

func newCore(iface string, targets []TargetConfig, node string, logger *slog.Logger) (*core, error) {
	if logger == nil {
		logger = slog.Default()
	}
	c := &core{iface: iface, node: node, log: logger.With("iface", iface)}
	ts := &targetSet{byAddr: map[uint32]*target{}}
	for _, tc := range targets {
		t, err := c.newTarget(ts, tc)
		if err != nil {
			return nil, err
		}
		ts = ts.with(t)
	}
	c.set.Store(ts)
	return c, nil
}

// newTarget makes the target of tc, refusing a shelf.slot that ts serves.
func (c *core) newTarget(ts *targetSet, tc TargetConfig) (*target, error) {
	if old := ts.byAddr[addrKey(tc.Shelf, tc.Slot)]; old != nil {
		return nil, fmt.Errorf("AoE target %s is configured twice on %s; give each export its own shelf.slot", old.name, c.iface)
	}
	return newTarget(tc, c.node, c.log)
}

// list returns the targets served now.
func (c *core) list() []*target { return c.set.Load().list }

// Targets returns the names (e1.1) of the targets served now.
func (c *core) Targets() []string {
	var out []string
	for _, t := range c.list() {
		out = append(out, t.name)
	}
	return out
}

// TargetState returns the current state of eSHELF.SLOT, or false when it is
// not served here.
func (c *core) TargetState(shelf uint16, slot uint8) (State, bool) {
	t := c.set.Load().byAddr[addrKey(shelf, slot)]
	if t == nil {
		return State{}, false
	}
	return t.state.Load().export(), true
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
// frames of another EtherType address none. Every target appended has
// admitted the frame through its gate: the caller calls t.gate.leave()
// once the frame's response is sent or dropped. A target being removed
// admits nothing: the frame is dropped as if the target were gone.
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
	ts := c.set.Load()
	if shelf != BroadcastShelf && slot != BroadcastSlot {
		if t := ts.byAddr[addrKey(shelf, slot)]; t != nil {
			if !t.allowed(src) {
				t.dropped.Add(1)
			} else if t.gate.enter() {
				dst = append(dst, t)
			}
		}
		return dst
	}
	discovery := Command(b[19]) == CmdConfig && b[14]>>4 == Version
	for _, t := range ts.list {
		if (shelf == BroadcastShelf || shelf == t.cfg.Shelf) && (slot == BroadcastSlot || slot == t.cfg.Slot) {
			switch {
			case !discovery:
				t.refusedBcast.Add(1)
			case !t.allowed(src):
				t.dropped.Add(1)
			case t.gate.enter():
				dst = append(dst, t)
			}
		}
	}
	return dst
}
