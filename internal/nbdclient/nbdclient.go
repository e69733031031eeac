// Package nbdclient is a minimal NBD client for tharsis's tests and load
// generators: fixed newstyle handshake, NBD_OPT_GO, simple replies, one
// request at a time per connection. It is not for production use.
package nbdclient

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

const (
	nbdMagic        = 0x4e42444d41474943 // "NBDMAGIC"
	optMagic        = 0x49484156454f5054 // "IHAVEOPT"
	optReplyMagic   = 0x3e889045565a9
	requestMagic    = 0x25609513
	simpleReplyMagc = 0x67446698

	optGo     = 7
	repAck    = 1
	repInfo   = 3
	infoExprt = 0

	cmdRead  = 0
	cmdWrite = 1
	cmdDisc  = 2
	cmdFlush = 3
	flagFUA  = 1

	ENOSPC Error = 28 // NBD_ENOSPC, for a write that could not be stored
)

// Conn is one NBD connection to one export.
type Conn struct {
	c      net.Conn
	size   int64
	handle uint64
}

// Size is the export's size as the server announced it.
func (n *Conn) Size() int64 { return n.size }

// Error is an error reply from the server (an NBD errno).
type Error uint32

func (e Error) Error() string { return fmt.Sprintf("NBD error %d", uint32(e)) }

// Dial connects to addr and selects the export name.
func Dial(addr, name string) (*Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return nil, err
	}
	n := &Conn{c: c}
	if err := n.handshake(name); err != nil {
		c.Close()
		return nil, err
	}
	return n, nil
}

func (n *Conn) handshake(name string) error {
	n.c.SetDeadline(time.Now().Add(5 * time.Second))
	defer n.c.SetDeadline(time.Time{})
	var hdr [18]byte
	if _, err := io.ReadFull(n.c, hdr[:]); err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	if binary.BigEndian.Uint64(hdr[:]) != nbdMagic || binary.BigEndian.Uint64(hdr[8:]) != optMagic {
		return errors.New("not a fixed-newstyle NBD server")
	}
	b := binary.BigEndian.AppendUint32(nil, 3) // FIXED_NEWSTYLE | NO_ZEROES
	b = binary.BigEndian.AppendUint64(b, optMagic)
	b = binary.BigEndian.AppendUint32(b, optGo)
	b = binary.BigEndian.AppendUint32(b, uint32(4+len(name)+2))
	b = binary.BigEndian.AppendUint32(b, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, 0)
	if _, err := n.c.Write(b); err != nil {
		return err
	}
	for {
		var rh [20]byte
		if _, err := io.ReadFull(n.c, rh[:]); err != nil {
			return fmt.Errorf("read option reply: %w", err)
		}
		typ, l := binary.BigEndian.Uint32(rh[12:]), binary.BigEndian.Uint32(rh[16:])
		if binary.BigEndian.Uint64(rh[:]) != optReplyMagic || l > 1<<16 {
			return errors.New("bad option reply")
		}
		data := make([]byte, l)
		if _, err := io.ReadFull(n.c, data); err != nil {
			return err
		}
		switch {
		case typ == repAck:
			if n.size == 0 {
				return errors.New("no export size in the OPT_GO reply")
			}
			return nil
		case typ == repInfo && l >= 12 && binary.BigEndian.Uint16(data) == infoExprt:
			n.size = int64(binary.BigEndian.Uint64(data[2:]))
		case typ&(1<<31) != 0:
			return fmt.Errorf("OPT_GO refused (%#x): %s", typ, data)
		}
	}
}

func (n *Conn) request(typ, flags uint16, off int64, length uint32, payload, into []byte) error {
	n.handle++
	b := make([]byte, 28, 28+len(payload))
	binary.BigEndian.PutUint32(b, requestMagic)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], typ)
	binary.BigEndian.PutUint64(b[8:], n.handle)
	binary.BigEndian.PutUint64(b[16:], uint64(off))
	binary.BigEndian.PutUint32(b[24:], length)
	b = append(b, payload...)
	n.c.SetDeadline(time.Now().Add(30 * time.Second))
	defer n.c.SetDeadline(time.Time{})
	if _, err := n.c.Write(b); err != nil {
		return err
	}
	var r [16]byte
	if _, err := io.ReadFull(n.c, r[:]); err != nil {
		return err
	}
	if binary.BigEndian.Uint32(r[:]) != simpleReplyMagc || binary.BigEndian.Uint64(r[8:]) != n.handle {
		return errors.New("bad reply")
	}
	if e := binary.BigEndian.Uint32(r[4:]); e != 0 {
		return Error(e)
	}
	if into != nil {
		_, err := io.ReadFull(n.c, into)
		return err
	}
	return nil
}

func (n *Conn) WriteAt(p []byte, off int64, fua bool) error {
	var f uint16
	if fua {
		f = flagFUA
	}
	return n.request(cmdWrite, f, off, uint32(len(p)), p, nil)
}

func (n *Conn) ReadAt(p []byte, off int64) error {
	return n.request(cmdRead, 0, off, uint32(len(p)), nil, p)
}

func (n *Conn) Flush() error { return n.request(cmdFlush, 0, 0, 0, nil, nil) }

func (n *Conn) Close() error {
	b := binary.BigEndian.AppendUint32(nil, requestMagic)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint16(b, cmdDisc)
	b = append(b, make([]byte, 20)...)
	n.c.SetDeadline(time.Now().Add(time.Second))
	n.c.Write(b)
	return n.c.Close()
}
