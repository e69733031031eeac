//go:build linux

package aoe

import (
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The Server sends responses through a PACKET_TX_RING (TPACKET_V2) when
// the kernel allows one: a batch of responses is copied into the ring's
// slots and sent with one sendto(2) of no data, instead of a sendmmsg that
// copies in a message header and builds and copies every frame. The kernel
// attaches the slot's pages to the frame it sends (no copy) and hands the
// slot back when the frame is freed.
//
// The ring is on a second packet socket that only sends (bound to no
// protocol, it receives nothing), because a socket with a transmit ring
// sends everything through it: the receiving socket keeps sendmmsg for what
// the ring cannot take (a full ring, a frame larger than a slot). Slots are
// filled and handed to the kernel strictly in turn, which is also the order
// the kernel sends them in, so the ring is filled under a mutex (the kernel
// serialises senders of one socket anyway). PACKET_LOSS makes the kernel
// skip a frame it refuses (larger than the MTU) rather than stop the ring
// there; the initiator retransmits.
//
// Not on veth and tun interfaces, which copy a ring frame's pages into new
// ones before passing the frame on (skb_orphan_frags: the slot could be
// reused while the peer still reads it): that costs more than sendmmsg's
// copy. Measured (BenchmarkSendPaths, bench/RESULTS.md): the send path
// alone, on an interface that frees frames like a NIC driver once sent,
// costs about 30 % less per frame through the ring; on the bench's veth
// pair the target's CPU per request rises by about 5 %.
//
// With Server.QdiscBypass both sockets set PACKET_QDISC_BYPASS: responses
// go to the driver without the interface's queueing discipline, and taps
// such as tcpdump no longer see them.

// txRingSlots is how many responses the transmit ring holds: every
// advertised frame of targets with bufcnt up to maxFrames/2 in all; when
// it is full the rest go with sendmmsg. 0 disables the ring (tests of the
// sendmmsg path).
var txRingSlots = maxFrames / 2

// txRingAnyDriver sets the ring up on veth and tun interfaces too (tests
// of the ring on veth pairs).
var txRingAnyDriver = false

// copiesRingFrames reports whether the driver of interface iface copies
// the pages of a ring frame before passing the frame on (veth, tun), per
// ethtool's driver name; fd is any socket.
func copiesRingFrames(fd int, iface string) bool {
	info, err := unix.IoctlGetEthtoolDrvinfo(fd, iface)
	if err != nil {
		return false
	}
	d := unix.ByteSliceToString(info.Driver[:])
	return d == "veth" || d == "tun"
}

// txRing is a mapped PACKET_TX_RING on its own socket.
type txRing struct {
	ring
	fd   int
	addr unix.RawSockaddrLinklayer // where frames go: the interface, AoE

	mu     sync.Mutex
	head   int // the next slot to fill, and the next the kernel sends
	closed bool
}

// newTxRing opens a send-only packet socket on the interface ifindex with
// a transmit ring of slots slots, each holding frames of up to frameLen
// bytes.
func newTxRing(ifindex, frameLen, slots int) (*txRing, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open a send socket: %w", err)
	}
	fail := func(err error) (*txRing, error) {
		unix.Close(fd)
		return nil, err
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: ifindex}); err != nil {
		return fail(fmt.Errorf("bind the send socket: %w", err))
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_LOSS, 1); err != nil {
		return fail(fmt.Errorf("PACKET_LOSS: %w", err))
	}
	r, err := newRing(fd, unix.PACKET_TX_RING, frameLen, slots)
	if err != nil {
		return fail(fmt.Errorf("PACKET_TX_RING: %w", err))
	}
	// Frames in flight count against the send buffer: with one smaller
	// than the ring the kernel would stop sending before the ring is full.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, r.slots*r.slot) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, r.slots*r.slot)
	}
	t := &txRing{ring: r, fd: fd}
	t.addr.Family = unix.AF_PACKET
	t.addr.Protocol = htons(EtherType)
	t.addr.Ifindex = int32(ifindex)
	return t, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// slotBusy are the tp_status bits of a slot the kernel has not handed back.
const slotBusy = unix.TP_STATUS_SEND_REQUEST | unix.TP_STATUS_SENDING | unix.TP_STATUS_WRONG_FORMAT

// send copies the frames of iov, from the first, into free slots and has
// the kernel send them. It returns how many it took, fewer than len(iov)
// when the ring is full or closed or a frame is larger than a slot (the
// caller sends the others), and the error of the kick, if any.
func (t *txRing) send(iov []unix.Iovec) (int, unix.Errno) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return 0, 0
	}
	n := 0
	for ; n < len(iov); n++ {
		s := t.at(t.head)
		l := int(iov[n].Len)
		st := status(s)
		if l > len(s)-tpacketHdrLen || atomic.LoadUint32(st)&slotBusy != 0 {
			break
		}
		copy(s[tpacketHdrLen:], unsafe.Slice(iov[n].Base, l))
		(*unix.Tpacket2Hdr)(unsafe.Pointer(&s[0])).Len = uint32(l)
		atomic.StoreUint32(st, unix.TP_STATUS_SEND_REQUEST)
		if t.head++; t.head == t.slots {
			t.head = 0
		}
	}
	if n == 0 {
		return 0, 0
	}
	for {
		_, _, errno := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(t.fd), 0, 0, unix.MSG_DONTWAIT,
			uintptr(unsafe.Pointer(&t.addr)), unix.SizeofSockaddrLinklayer)
		if errno != unix.EINTR {
			return n, errno
		}
	}
}

// qdiscBypass sets PACKET_QDISC_BYPASS on the packet socket fd.
func qdiscBypass(fd int) error {
	return unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1)
}

// close unmaps the ring and closes its socket; send takes nothing
// afterwards.
func (t *txRing) close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	err := t.ring.close()
	if cerr := unix.Close(t.fd); err == nil {
		err = cerr
	}
	return err
}
