// Command fua drives an NBD export with random writes that carry the FUA
// flag (each must be durable before its reply), keeping -qd requests in
// flight on one connection, and prints the write IOPS. fio's nbd engine
// cannot set FUA (it has no such option, and --sync=1 only opens files
// O_SYNC), so bench/replicate.sh uses this for the FUA column.
//
//	go run ./bench/replicate/fua -addr 127.0.0.1:10809 -name r0 -qd 32 -bs 4096 -seconds 20
package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"time"
)

const (
	nbdMagic      = 0x4e42444d41474943 // "NBDMAGIC"
	optMagic      = 0x49484156454f5054 // "IHAVEOPT"
	optReplyMagic = 0x3e889045565a9
	requestMagic  = 0x25609513
	replyMagic    = 0x67446698
	optGo         = 7
	repAck        = 1
	repInfo       = 3
	cmdWrite      = 1
	cmdDisc       = 2
	cmdFlagFUA    = 1
)

func main() {
	addr := flag.String("addr", "127.0.0.1:10809", "NBD server address")
	name := flag.String("name", "", "export name")
	qd := flag.Int("qd", 32, "requests in flight")
	bs := flag.Int("bs", 4096, "bytes per write")
	seconds := flag.Float64("seconds", 10, "run time")
	fua := flag.Bool("fua", true, "set the FUA flag on every write")
	flag.Parse()
	iops, err := run(*addr, *name, *qd, *bs, time.Duration(*seconds*float64(time.Second)), *fua)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fua:", err)
		os.Exit(1)
	}
	fmt.Printf("%.0f\n", iops)
}

func run(addr, name string, qd, bs int, d time.Duration, fua bool) (float64, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	size, err := handshake(c, name)
	if err != nil {
		return 0, err
	}
	if size < int64(bs) {
		return 0, fmt.Errorf("export of %d bytes is smaller than one write", size)
	}
	var flags uint16
	if fua {
		flags = cmdFlagFUA
	}
	tokens := make(chan struct{}, qd)
	for range qd {
		tokens <- struct{}{}
	}
	readErr := make(chan error, 1)
	done := make(chan int64, 1)
	stop := time.Now().Add(d)
	var sent int64
	go func() {
		var n int64
		var r [16]byte
		for {
			if _, err := io.ReadFull(c, r[:]); err != nil {
				readErr <- err
				return
			}
			if binary.BigEndian.Uint32(r[:]) != replyMagic {
				readErr <- errors.New("bad reply magic")
				return
			}
			if e := binary.BigEndian.Uint32(r[4:]); e != 0 {
				readErr <- fmt.Errorf("write failed with NBD error %d", e)
				return
			}
			n++
			if binary.BigEndian.Uint64(r[8:]) == 0 { // the last one
				done <- n
				return
			}
			tokens <- struct{}{}
		}
	}()
	rng := rand.New(rand.NewPCG(1, 2))
	req := make([]byte, 28+bs)
	for i := 28; i < len(req); i++ {
		req[i] = byte(rng.Uint32())
	}
	blocks := size / int64(bs)
	start := time.Now()
	for {
		select {
		case <-tokens:
		case err := <-readErr:
			return 0, err
		}
		last := !time.Now().Before(stop)
		sent++
		handle := uint64(sent)
		if last {
			// Wait for every other request, then send the last (handle 0).
			for range qd - 1 {
				select {
				case <-tokens:
				case err := <-readErr:
					return 0, err
				}
			}
			handle = 0
		}
		binary.BigEndian.PutUint32(req, requestMagic)
		binary.BigEndian.PutUint16(req[4:], flags)
		binary.BigEndian.PutUint16(req[6:], cmdWrite)
		binary.BigEndian.PutUint64(req[8:], handle)
		binary.BigEndian.PutUint64(req[16:], uint64(rng.Int64N(blocks)*int64(bs)))
		binary.BigEndian.PutUint32(req[24:], uint32(bs))
		if _, err := c.Write(req); err != nil {
			return 0, err
		}
		if last {
			break
		}
	}
	var n int64
	select {
	case n = <-done:
	case err := <-readErr:
		return 0, err
	}
	took := time.Since(start)
	disc := binary.BigEndian.AppendUint32(nil, requestMagic)
	disc = binary.BigEndian.AppendUint16(disc, 0)
	disc = binary.BigEndian.AppendUint16(disc, cmdDisc)
	c.Write(append(disc, make([]byte, 20)...))
	return float64(n) / took.Seconds(), nil
}

// handshake does the fixed-newstyle handshake with NBD_OPT_GO and returns
// the export size.
func handshake(c net.Conn, name string) (int64, error) {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	var hdr [18]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return 0, fmt.Errorf("read greeting: %w", err)
	}
	if binary.BigEndian.Uint64(hdr[:]) != nbdMagic || binary.BigEndian.Uint64(hdr[8:]) != optMagic {
		return 0, errors.New("not a fixed-newstyle NBD server")
	}
	b := binary.BigEndian.AppendUint32(nil, 3) // FIXED_NEWSTYLE | NO_ZEROES
	b = binary.BigEndian.AppendUint64(b, optMagic)
	b = binary.BigEndian.AppendUint32(b, optGo)
	b = binary.BigEndian.AppendUint32(b, uint32(4+len(name)+2))
	b = binary.BigEndian.AppendUint32(b, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, 0)
	if _, err := c.Write(b); err != nil {
		return 0, err
	}
	var size int64
	for {
		var rh [20]byte
		if _, err := io.ReadFull(c, rh[:]); err != nil {
			return 0, fmt.Errorf("read option reply: %w", err)
		}
		typ, l := binary.BigEndian.Uint32(rh[12:]), binary.BigEndian.Uint32(rh[16:])
		if binary.BigEndian.Uint64(rh[:]) != optReplyMagic || l > 1<<16 {
			return 0, errors.New("bad option reply")
		}
		data := make([]byte, l)
		if _, err := io.ReadFull(c, data); err != nil {
			return 0, err
		}
		switch {
		case typ == repAck:
			if size == 0 {
				return 0, errors.New("no export size in the OPT_GO reply")
			}
			return size, nil
		case typ == repInfo && l >= 12 && binary.BigEndian.Uint16(data) == 0:
			size = int64(binary.BigEndian.Uint64(data[2:]))
		case typ&(1<<31) != 0:
			return 0, fmt.Errorf("NBD_OPT_GO refused (%#x): %s", typ, data)
		}
	}
}
