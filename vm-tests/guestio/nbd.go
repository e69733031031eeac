package main

// guestio nbd attaches an NBD export to /dev/nbdN through the kernel's
// generic netlink interface and keeps it attached, as nbd-client 3.27
// `-persist` does (Debian 12's nbd-client 3.24 ignores -persist on the
// netlink interface and, with -nonetlink, the kernel fails the requests
// in flight when the connection drops): it sets a dead-connection timeout,
// so that the kernel parks requests while no connection is up, and a
// request timeout, so that requests lost with a dead connection are sent
// again; it listens for NBD_CMD_LINK_DEAD, connects again to the same
// address (the resource's service_address) and hands the new socket to
// the kernel with NBD_CMD_RECONFIGURE. Events go to stderr with
// CLOCK_MONOTONIC times.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// From include/uapi/linux/nbd-netlink.h.
const (
	nbdCmdConnect     = 1
	nbdCmdReconfigure = 3
	nbdCmdLinkDead    = 4

	nbdAttrIndex       = 1
	nbdAttrSizeBytes   = 2
	nbdAttrBlockSize   = 3
	nbdAttrTimeout     = 4
	nbdAttrServerFlags = 5
	nbdAttrSockets     = 7
	nbdAttrDeadConn    = 8
	nbdSockItem        = 1
	nbdSockFD          = 1
)

type nbdOpts struct {
	addr, name string
	index      int
	timeout    time.Duration // request timeout: a request unanswered this long is sent again
	dead       time.Duration // how long requests wait for a new connection
}

func nbdAttach(o nbdOpts) error {
	conn, size, flags, err := nbdDial(o.addr, o.name)
	if err != nil {
		return err
	}
	g, err := newGenl()
	if err != nil {
		return err
	}
	family, group, err := g.family("nbd", "nbd_mc_group")
	if err != nil {
		return fmt.Errorf("generic netlink family nbd (is the nbd module loaded?): %w", err)
	}
	// Events come on a socket of their own (requests skip what is not
	// their answer), joined before connecting: no LINK_DEAD is missed.
	ev, err := newGenl()
	if err != nil {
		return err
	}
	if err := unix.SetsockoptInt(ev.fd, unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, int(group)); err != nil {
		return fmt.Errorf("join nbd_mc_group: %w", err)
	}
	var a attrs
	a.u32(nbdAttrIndex, uint32(o.index))
	a.u64(nbdAttrSizeBytes, uint64(size))
	a.u64(nbdAttrBlockSize, 512)
	a.u64(nbdAttrServerFlags, uint64(flags))
	a.u64(nbdAttrTimeout, uint64(o.timeout/time.Second))
	a.u64(nbdAttrDeadConn, uint64(o.dead/time.Second))
	if err := a.socket(conn); err != nil {
		return err
	}
	if err := g.request(family, nbdCmdConnect, a.b); err != nil {
		return fmt.Errorf("NBD_CMD_CONNECT: %w", err)
	}
	conn.Close() // the kernel holds its own reference
	logf("connected /dev/nbd%d to %s export %q: %d bytes, flags %#x", o.index, o.addr, o.name, size, flags)
	for {
		cmd, index, err := ev.event(family)
		if err != nil {
			return err
		}
		if cmd != nbdCmdLinkDead || index != o.index {
			logf("netlink event: command %d, device %d", cmd, index)
			continue
		}
		logf("link dead on /dev/nbd%d: connecting to %s again", o.index, o.addr)
		for tries := 1; ; tries++ {
			conn, nsize, _, err := nbdDial(o.addr, o.name)
			if err == nil && nsize != size {
				conn.Close()
				err = fmt.Errorf("the export's size changed from %d to %d bytes", size, nsize)
			}
			if err == nil {
				var a attrs
				a.u32(nbdAttrIndex, uint32(o.index))
				if err = a.socket(conn); err == nil {
					err = g.request(family, nbdCmdReconfigure, a.b)
				}
				conn.Close()
				if err == nil {
					logf("reconnected /dev/nbd%d to %s (attempt %d, local %s)", o.index, o.addr, tries, conn.LocalAddr())
					break
				}
				err = fmt.Errorf("NBD_CMD_RECONFIGURE: %w", err)
			}
			if tries == 1 || tries%20 == 0 {
				logf("reconnect attempt %d: %v", tries, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "guestio nbd %d: %s\n", now(), fmt.Sprintf(format, args...))
}

// nbdDial connects and negotiates (fixed newstyle, NBD_OPT_GO) up to the
// transmission phase, which the kernel then speaks.
func nbdDial(addr, name string) (*net.TCPConn, int64, uint16, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return nil, 0, 0, err
	}
	conn := c.(*net.TCPConn)
	size, flags, err := nbdHandshake(conn, name)
	if err != nil {
		conn.Close()
		return nil, 0, 0, fmt.Errorf("NBD handshake with %s: %w", addr, err)
	}
	return conn, size, flags, nil
}

func nbdHandshake(c net.Conn, name string) (int64, uint16, error) {
	const optMagic = 0x49484156454f5054
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	var hdr [18]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return 0, 0, err
	}
	if binary.BigEndian.Uint64(hdr[:]) != 0x4e42444d41474943 || binary.BigEndian.Uint64(hdr[8:]) != optMagic || hdr[17]&1 == 0 {
		return 0, 0, errors.New("not a fixed-newstyle NBD server")
	}
	b := binary.BigEndian.AppendUint32(nil, 3) // FIXED_NEWSTYLE | NO_ZEROES
	b = binary.BigEndian.AppendUint64(b, optMagic)
	b = binary.BigEndian.AppendUint32(b, 7) // NBD_OPT_GO
	b = binary.BigEndian.AppendUint32(b, uint32(4+len(name)+2))
	b = binary.BigEndian.AppendUint32(b, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, 0)
	if _, err := c.Write(b); err != nil {
		return 0, 0, err
	}
	var size int64
	var flags uint16
	for {
		var rh [20]byte
		if _, err := io.ReadFull(c, rh[:]); err != nil {
			return 0, 0, err
		}
		typ, l := binary.BigEndian.Uint32(rh[12:]), binary.BigEndian.Uint32(rh[16:])
		if binary.BigEndian.Uint64(rh[:]) != 0x3e889045565a9 || l > 1<<16 {
			return 0, 0, errors.New("bad option reply")
		}
		data := make([]byte, l)
		if _, err := io.ReadFull(c, data); err != nil {
			return 0, 0, err
		}
		switch {
		case typ == 1: // NBD_REP_ACK
			if size == 0 {
				return 0, 0, errors.New("no NBD_INFO_EXPORT in the reply to NBD_OPT_GO")
			}
			return size, flags, nil
		case typ == 3 && l >= 12 && binary.BigEndian.Uint16(data) == 0: // NBD_REP_INFO, NBD_INFO_EXPORT
			size = int64(binary.BigEndian.Uint64(data[2:]))
			flags = binary.BigEndian.Uint16(data[10:])
		case typ&(1<<31) != 0:
			return 0, 0, fmt.Errorf("NBD_OPT_GO refused (%#x): %s", typ, data)
		}
	}
}

// attrs builds netlink attributes.
type attrs struct{ b []byte }

func (a *attrs) add(typ uint16, v []byte) {
	a.b = binary.NativeEndian.AppendUint16(a.b, uint16(4+len(v)))
	a.b = binary.NativeEndian.AppendUint16(a.b, typ)
	a.b = append(a.b, v...)
	for len(a.b)%4 != 0 {
		a.b = append(a.b, 0)
	}
}

func (a *attrs) u32(typ uint16, v uint32) { a.add(typ, binary.NativeEndian.AppendUint32(nil, v)) }
func (a *attrs) u64(typ uint16, v uint64) { a.add(typ, binary.NativeEndian.AppendUint64(nil, v)) }

// socket adds NBD_ATTR_SOCKETS { NBD_SOCK_ITEM { NBD_SOCK_FD } } for c.
func (a *attrs) socket(c *net.TCPConn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	raw.Control(func(fd uintptr) {
		var fdAttr, item attrs
		fdAttr.u32(nbdSockFD, uint32(fd))
		item.add(nbdSockItem|unix.NLA_F_NESTED, fdAttr.b)
		a.add(nbdAttrSockets|unix.NLA_F_NESTED, item.b)
	})
	return nil
}

// genl is a generic netlink socket.
type genl struct {
	fd  int
	seq uint32
}

func newGenl() (*genl, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_GENERIC)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &genl{fd: fd}, nil
}

// send sends one generic netlink request with NLM_F_ACK.
func (g *genl) send(family uint16, cmd uint8, payload []byte) (uint32, error) {
	g.seq++
	msg := binary.NativeEndian.AppendUint32(nil, uint32(unix.NLMSG_HDRLEN+unix.GENL_HDRLEN+len(payload)))
	msg = binary.NativeEndian.AppendUint16(msg, family)
	msg = binary.NativeEndian.AppendUint16(msg, unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	msg = binary.NativeEndian.AppendUint32(msg, g.seq)
	msg = binary.NativeEndian.AppendUint32(msg, 0)
	msg = append(msg, cmd, 1, 0, 0) // genlmsghdr: cmd, version, reserved
	msg = append(msg, payload...)
	return g.seq, unix.Sendto(g.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
}

// request sends a request and waits for its acknowledgement.
func (g *genl) request(family uint16, cmd uint8, payload []byte) error {
	_, err := g.exchange(family, cmd, payload)
	return err
}

// exchange sends a request and returns the payloads (after the genetlink
// header) of the replies that came before its acknowledgement.
func (g *genl) exchange(family uint16, cmd uint8, payload []byte) ([][]byte, error) {
	seq, err := g.send(family, cmd, payload)
	if err != nil {
		return nil, err
	}
	var replies [][]byte
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(g.fd, buf, 0)
		if err != nil {
			return nil, err
		}
		for b := buf[:n]; len(b) >= unix.NLMSG_HDRLEN; {
			l := int(binary.NativeEndian.Uint32(b))
			if l < unix.NLMSG_HDRLEN || l > len(b) {
				return nil, errors.New("short netlink message")
			}
			typ, mseq := binary.NativeEndian.Uint16(b[4:]), binary.NativeEndian.Uint32(b[8:])
			m := b[:l]
			b = b[min(len(b), (l+3)&^3):]
			if mseq != seq {
				continue // a multicast event or an old answer
			}
			if typ == unix.NLMSG_ERROR {
				if errno := int32(binary.NativeEndian.Uint32(m[unix.NLMSG_HDRLEN:])); errno != 0 {
					return nil, unix.Errno(-errno)
				}
				return replies, nil
			}
			if len(m) >= unix.NLMSG_HDRLEN+unix.GENL_HDRLEN {
				replies = append(replies, bytes.Clone(m[unix.NLMSG_HDRLEN+unix.GENL_HDRLEN:])) // buf is reused
			}
		}
	}
}

// family resolves a generic netlink family and one of its multicast groups.
func (g *genl) family(name, group string) (uint16, uint32, error) {
	var a attrs
	a.add(unix.CTRL_ATTR_FAMILY_NAME, append([]byte(name), 0))
	replies, err := g.exchange(unix.GENL_ID_CTRL, unix.CTRL_CMD_GETFAMILY, a.b)
	if err != nil {
		return 0, 0, err
	}
	var id uint16
	var gid uint32
	for _, r := range replies {
		for typ, v := range parseAttrs(r) {
			switch typ {
			case unix.CTRL_ATTR_FAMILY_ID:
				id = binary.NativeEndian.Uint16(v)
			case unix.CTRL_ATTR_MCAST_GROUPS:
				for _, grp := range parseAttrs(v) {
					ga := parseAttrs(grp)
					if n := ga[unix.CTRL_ATTR_MCAST_GRP_NAME]; len(n) > 0 && string(n[:len(n)-1]) == group {
						gid = binary.NativeEndian.Uint32(ga[unix.CTRL_ATTR_MCAST_GRP_ID])
					}
				}
			}
		}
	}
	if id == 0 || gid == 0 {
		return 0, 0, fmt.Errorf("no family %s with multicast group %s", name, group)
	}
	return id, gid, nil
}

// event waits for the next message of family and returns its command and
// NBD_ATTR_INDEX.
func (g *genl) event(family uint16) (uint8, int, error) {
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(g.fd, buf, 0)
		if err != nil {
			return 0, 0, err
		}
		for b := buf[:n]; len(b) >= unix.NLMSG_HDRLEN; {
			l := int(binary.NativeEndian.Uint32(b))
			if l < unix.NLMSG_HDRLEN || l > len(b) {
				break
			}
			m := b[:l]
			b = b[min(len(b), (l+3)&^3):]
			if binary.NativeEndian.Uint16(m[4:]) != family || len(m) < unix.NLMSG_HDRLEN+unix.GENL_HDRLEN {
				continue
			}
			cmd := m[unix.NLMSG_HDRLEN]
			index := -1
			if v := parseAttrs(m[unix.NLMSG_HDRLEN+unix.GENL_HDRLEN:])[nbdAttrIndex]; len(v) == 4 {
				index = int(binary.NativeEndian.Uint32(v))
			}
			return cmd, index, nil
		}
	}
}

// parseAttrs splits netlink attributes by type (nested flag cleared); for
// a list of nested items the keys are the item numbers.
func parseAttrs(b []byte) map[uint16][]byte {
	out := map[uint16][]byte{}
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b))
		typ := binary.NativeEndian.Uint16(b[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if l < 4 || l > len(b) {
			break
		}
		out[typ] = b[4:l]
		b = b[min(len(b), (l+3)&^3):]
	}
	return out
}
