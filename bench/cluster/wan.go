package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// wan is a userspace stand-in for `tc netem delay D rate R` on kernels
// without sch_netem: it joins two interfaces (the bridge-side ends of two
// nodes' veth pairs, run inside the bridge namespace instead of a bridge)
// and forwards every frame from one to the other after serialising it at
// the link rate and delaying it by the one-way delay, in each direction
// independently, with a tail-drop queue of -queue worth of the link.
//
// The sockets use PACKET_VNET_HDR, so segmentation-offloaded frames (up to
// 64 KiB) pass whole with their virtio-net header and the kernel segments
// them on the way out: the relay handles a 1 Gbit/s TCP stream with a few
// thousand frames per second. The rate is charged per frame byte (headers of
// the later segments of an offloaded frame are not), within ~3 %.
func wan(args []string) error {
	fs := flag.NewFlagSet("wan", flag.ExitOnError)
	a := fs.String("a", "", "first interface")
	b := fs.String("b", "", "second interface")
	delay := fs.Duration("delay", 25*time.Millisecond, "one-way delay, each direction")
	mbit := fs.Float64("rate-mbit", 1000, "link rate in Mbit/s, each direction")
	queue := fs.Duration("queue", 200*time.Millisecond, "queue limit in time at the link rate (tail drop beyond)")
	fs.Parse(args)
	sa, err := packetSocket(*a)
	if err != nil {
		return err
	}
	sb, err := packetSocket(*b)
	if err != nil {
		return err
	}
	bytesPerSec := *mbit * 1e6 / 8
	var wg sync.WaitGroup
	stats := make([]*linkStats, 2)
	for i, dir := range [][2]int{{sa, sb}, {sb, sa}} {
		st := &linkStats{}
		stats[i] = st
		l := &link{from: dir[0], to: dir[1], delay: *delay, bytesPerSec: bytesPerSec, queue: *queue, q: make(chan frame, 1<<16), st: st}
		wg.Add(2)
		go func() { defer wg.Done(); l.receive() }()
		go func() { defer wg.Done(); l.send() }()
	}
	fmt.Printf("wan: %s <-> %s, delay %s, %.0f Mbit/s, queue %s\n", *a, *b, *delay, *mbit, *queue)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	<-sig
	for i, st := range stats {
		fmt.Printf("wan: direction %d: %d frames, %d bytes forwarded, %d frames dropped\n", i, st.frames, st.bytes, st.drops)
	}
	return nil
}

const vnetHdrLen = 10 // struct virtio_net_hdr

func packetSocket(ifname string) (int, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return -1, err
	}
	proto := htons(unix.ETH_P_ALL)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(proto))
	if err != nil {
		return -1, fmt.Errorf("packet socket on %s: %w", ifname, err)
	}
	for _, o := range []struct{ level, opt, v int }{
		{unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1},
		{unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1},
		{unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64 << 20},
		{unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 64 << 20},
	} {
		if err := unix.SetsockoptInt(fd, o.level, o.opt, o.v); err != nil {
			return -1, fmt.Errorf("%s: setsockopt %d/%d: %w", ifname, o.level, o.opt, err)
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
		return -1, fmt.Errorf("bind packet socket to %s: %w", ifname, err)
	}
	return fd, nil
}

func htons(v uint16) uint16 { return binary.BigEndian.Uint16(binary.NativeEndian.AppendUint16(nil, v)) }

type frame struct {
	b      []byte
	depart time.Time
}

type linkStats struct {
	mu                   sync.Mutex
	frames, bytes, drops int64
}

// link is one direction of the emulated wire.
type link struct {
	from, to    int
	delay       time.Duration
	bytesPerSec float64
	queue       time.Duration
	q           chan frame
	st          *linkStats
	busyUntil   time.Time // when the serialiser finishes the last queued frame
}

var pool = sync.Pool{New: func() any { return make([]byte, 65536+vnetHdrLen+64) }}

func (l *link) receive() {
	for {
		buf := pool.Get().([]byte)
		n, _, err := unix.Recvfrom(l.from, buf, 0)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			fmt.Fprintln(os.Stderr, "wan: receive:", err)
			return
		}
		now := time.Now()
		wire := time.Duration(float64(n-vnetHdrLen) / l.bytesPerSec * float64(time.Second))
		start := l.busyUntil
		if start.Before(now) {
			start = now
		}
		if start.Sub(now) > l.queue {
			l.st.mu.Lock()
			l.st.drops++
			l.st.mu.Unlock()
			pool.Put(buf)
			continue
		}
		l.busyUntil = start.Add(wire)
		select {
		case l.q <- frame{b: buf[:n], depart: l.busyUntil.Add(l.delay)}:
		default: // the queue of frames in flight is full
			pool.Put(buf)
		}
	}
}

func (l *link) send() {
	for f := range l.q {
		if d := time.Until(f.depart); d > 0 {
			time.Sleep(d)
		}
		if err := unix.Sendto(l.to, f.b, 0, nil); err != nil && err != unix.ENOBUFS {
			fmt.Fprintln(os.Stderr, "wan: send:", err)
		}
		l.st.mu.Lock()
		l.st.frames++
		l.st.bytes += int64(len(f.b) - vnetHdrLen)
		l.st.mu.Unlock()
		pool.Put(f.b[:cap(f.b)])
	}
}
