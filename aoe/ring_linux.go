//go:build linux

package aoe

import (
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The Server receives through a PACKET_RX_RING (TPACKET_V2) mapped into
// the process when the kernel allows one: the kernel copies every frame
// the BPF filter accepts into the next free slot from the softirq that
// delivers it (on a veth pair, the sending side's; on a NIC, the receive
// interrupt's), and a receiving worker copies it from the slot into its
// buffer with no system call. A worker only asks the kernel anything when
// the ring is empty: it then polls the ring for a while if it has just
// answered frames (ringSpin), and waits on the runtime poller, which the
// kernel wakes per frame (packet_poll). Without a ring every batch costs a
// recvmmsg, and every wait one more that finds nothing (EAGAIN), which is
// a third of the system calls of a latency-bound (window 1) request.
//
// A frame is copied out of its slot at once, not handled in place: the
// kernel fills slots strictly in turn and drops every frame while the next
// one is still taken, so one request held up in a slot (a read missing the
// page cache, a preempted worker) would stall the whole ring once the
// others have gone round it (tried: TestAddRemoveUnderLoad lost requests).
//
// TPACKET_V2, not V3: V3 hands over whole blocks, on a timer of at least a
// millisecond when frames trickle in, which a window-1 initiator would
// wait for; V2 hands over each frame at once. github.com/mdlayher/packet
// has no ring support, so the ring is set up here with golang.org/x/sys
// (see README's dependency table). Where the ring cannot be set up (an old
// or restricted kernel) the Server falls back to recvmmsg.

// rxRingSlots is how many frames the ring holds: every advertised frame of
// targets with bufcnt up to maxFrames/2 in all, twice over (like the write
// stage); a full ring drops frames, which initiators retransmit. 0
// disables the ring (tests of the recvmmsg path).
var rxRingSlots = maxFrames

// tpacketHdrLen is TPACKET2_HDRLEN's first part: where struct
// sockaddr_ll starts in a slot.
const tpacketHdrLen = (unix.SizeofTpacket2Hdr + unix.TPACKET_ALIGNMENT - 1) &^ (unix.TPACKET_ALIGNMENT - 1)

// ring is a mapped TPACKET_V2 ring of slots, each starting with its
// struct tpacket2_hdr (whose first word, tp_status, is shared with the
// kernel).
type ring struct {
	mem      []byte
	slot     int // bytes per slot
	perBlock int // slots per block
	block    int // bytes per block
	slots    int
}

// newRing sets up a TPACKET_V2 ring (opt: PACKET_RX_RING or
// PACKET_TX_RING) of at least slots slots on the packet socket fd, each
// holding frames of up to frameLen bytes, and maps it.
func newRing(fd, opt, frameLen, slots int) (ring, error) {
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VERSION, unix.TPACKET_V2); err != nil {
		return ring{}, fmt.Errorf("PACKET_VERSION TPACKET_V2: %w", err)
	}
	// The kernel puts a received SOCK_RAW frame's Ethernet header at
	// TPACKET_ALIGN(TPACKET2_HDRLEN + 16) - 14; 16 more bytes of room
	// cover that alignment.
	align := func(n, a int) int { return (n + a - 1) &^ (a - 1) }
	slot := align(tpacketHdrLen+unix.SizeofSockaddrLinklayer+16+16+frameLen, unix.TPACKET_ALIGNMENT)
	block := 1 << 16 // a power of two: the kernel allocates blocks by page order
	for block < slot {
		block <<= 1
	}
	page := os.Getpagesize()
	block = align(block, page)
	perBlock := block / slot
	blocks := (slots + perBlock - 1) / perBlock
	req := unix.TpacketReq{Block_size: uint32(block), Block_nr: uint32(blocks),
		Frame_size: uint32(slot), Frame_nr: uint32(blocks * perBlock)}
	if err := unix.SetsockoptTpacketReq(fd, unix.SOL_PACKET, opt, &req); err != nil {
		return ring{}, fmt.Errorf("ring of %d blocks of %d bytes: %w", blocks, block, err)
	}
	mem, err := unix.Mmap(fd, 0, blocks*block, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return ring{}, fmt.Errorf("map the ring (%d bytes): %w", blocks*block, err)
	}
	return ring{mem: mem, slot: slot, perBlock: perBlock, block: block, slots: blocks * perBlock}, nil
}

// at returns slot i.
func (r *ring) at(i int) []byte {
	off := i/r.perBlock*r.block + i%r.perBlock*r.slot
	return r.mem[off : off+r.slot : off+r.slot]
}

// status is the tp_status word of slot s.
func status(s []byte) *uint32 {
	return (*uint32)(unsafe.Pointer(&s[0]))
}

// rxRing is a mapped PACKET_RX_RING. head is only used by the worker that
// holds the socket's read lock (RawConn.Read), so it needs no lock.
type rxRing struct {
	ring
	head int
}

// newRxRing sets up a receive ring of at least slots slots on the packet
// socket fd, each holding frames of up to frameLen bytes.
func newRxRing(fd, frameLen, slots int) (*rxRing, error) {
	r, err := newRing(fd, unix.PACKET_RX_RING, frameLen, slots)
	if err != nil {
		return nil, fmt.Errorf("PACKET_RX_RING: %w", err)
	}
	return &rxRing{ring: r}, nil
}

// recv copies the frames waiting in the ring, up to len(bufs), into bufs
// and hands their slots back to the kernel: hdrs[i].len is frame i's length
// (larger than len(bufs[i]) when it did not fit: the caller drops it) and
// names[i].Pkttype its packet type, as recvmmsg fills them. It returns how
// many frames it took, 0 when the ring is empty.
func (r *rxRing) recv(bufs [][]byte, hdrs []mmsghdr, names []unix.RawSockaddrLinklayer) int {
	n := 0
	for n < len(bufs) {
		s := r.at(r.head)
		st := status(s)
		if atomic.LoadUint32(st)&unix.TP_STATUS_USER == 0 {
			break
		}
		h := (*unix.Tpacket2Hdr)(unsafe.Pointer(&s[0]))
		ll := (*unix.RawSockaddrLinklayer)(unsafe.Pointer(&s[tpacketHdrLen]))
		names[n].Pkttype = ll.Pkttype
		l, mac, snap := int(h.Len), int(h.Mac), int(h.Snaplen)
		if mac > len(s) || snap > len(s)-mac {
			snap, l = 0, len(bufs[n])+1 // malformed: dropped by the caller
		}
		copy(bufs[n], s[mac:mac+snap])
		hdrs[n].len = uint32(l)
		atomic.StoreUint32(st, unix.TP_STATUS_KERNEL)
		r.head++
		if r.head == r.slots {
			r.head = 0
		}
		n++
	}
	return n
}

// ringSpin is how long a worker that has just answered a batch of one
// frame polls the empty receive ring before it waits on the runtime poller. A
// latency-bound (window 1) initiator's next request comes within it (on
// the bench's veth pair, 20 µs caught about 80 % of them, 50 µs 95 %), so
// the worker no longer parks and is woken per request (two epoll_pwait and
// a context switch, and for writes through os.File the wake-up of the
// runtime's sysmon thread); it costs up to ringSpin of CPU after the last
// request of a burst.
var ringSpin = 50 * time.Microsecond

// poll is recv, polling the ring for up to d while it is empty, letting
// other goroutines run in between.
func (r *rxRing) poll(bufs [][]byte, hdrs []mmsghdr, names []unix.RawSockaddrLinklayer, d time.Duration) int {
	if d <= 0 {
		return 0
	}
	start := time.Now()
	for {
		runtime.Gosched()
		if n := r.recv(bufs, hdrs, names); n > 0 || time.Since(start) >= d {
			return n
		}
	}
}

// close unmaps the ring; nothing may use it any more.
func (r *ring) close() error {
	return unix.Munmap(r.mem)
}
