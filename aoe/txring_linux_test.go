//go:build linux

package aoe

import (
	"fmt"
	"net"
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tharsis/tharsis/aoe/aoetest"
)

// BenchmarkSendPaths sends batches of 16 read responses of MTU 1500 (two
// sectors) through the transmit ring and with sendmmsg, on a bridge with
// no port (it frees each frame at once, as a NIC's driver does once sent:
// the send path alone, where a dummy interface is not available) and on a veth pair (the peer's receive path runs in
// the sender's system call, and veth copies a ring frame's pages before
// forwarding it, which a NIC does not).
func BenchmarkSendPaths(b *testing.B) {
	for _, dev := range []string{"bridge", "veth"} {
		p := aoetest.NewPair(b, 1500)
		ifname := p.TargetIf
		if dev == "bridge" {
			ifname = "d" + p.TargetIf
			for _, c := range [][]string{{"-n", p.TargetNS, "link", "add", ifname, "type", "bridge"},
				{"-n", p.TargetNS, "link", "set", ifname, "up"}} {
				if out, err := exec.Command("ip", c...).CombinedOutput(); err != nil {
					b.Fatalf("ip %v: %v: %s", c, err, out)
				}
			}
		}
		var ifindex int
		if err := aoetest.Do(p.TargetNS, func() error {
			ifi, err := net.InterfaceByName(ifname)
			if err == nil {
				ifindex = ifi.Index
			}
			return err
		}); err != nil {
			b.Fatal(err)
		}
		frame := make([]byte, EthernetLen+HeaderLen+ATAArgLen+2*512)
		for i := range 6 {
			frame[i], frame[6+i] = 0x02, 0x02
		}
		frame[12], frame[13] = byte(uint16(EtherType)>>8), byte(uint16(EtherType)&0xff)
		iov := make([]unix.Iovec, batchLen)
		hdrs := make([]mmsghdr, batchLen)
		for i := range iov {
			iov[i].Base = &frame[0]
			iov[i].SetLen(len(frame))
			hdrs[i].hdr.Iov = &iov[i]
			hdrs[i].hdr.SetIovlen(1)
		}
		b.Run(fmt.Sprintf("%s/ring", dev), func(b *testing.B) {
			var tx *txRing
			if err := aoetest.Do(p.TargetNS, func() (err error) {
				tx, err = newTxRing(ifindex, EthernetLen+9000, maxFrames/2)
				return err
			}); err != nil {
				b.Fatal(err)
			}
			defer tx.close()
			for b.Loop() {
				for sent := 0; sent < len(iov); {
					n, errno := tx.send(iov[sent:])
					if errno != 0 && errno != unix.EAGAIN && errno != unix.ENOBUFS {
						b.Fatal(errno)
					}
					sent += n
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(iov)), "ns/frame")
		})
		b.Run(fmt.Sprintf("%s/sendmmsg", dev), func(b *testing.B) {
			var fd int
			if err := aoetest.Do(p.TargetNS, func() (err error) {
				if fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0); err != nil {
					return err
				}
				return unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: ifindex})
			}); err != nil {
				b.Fatal(err)
			}
			defer unix.Close(fd)
			for b.Loop() {
				for sent := 0; sent < len(hdrs); {
					n, errno := sendmmsg(uintptr(fd), hdrs[sent:])
					if errno != 0 && errno != unix.EAGAIN && errno != unix.ENOBUFS {
						b.Fatal(errno)
					}
					sent += n
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(hdrs)), "ns/frame")
		})
	}
}
