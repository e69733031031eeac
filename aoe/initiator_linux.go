//go:build linux

package aoe

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Initiator sends AoE requests on one interface and matches responses by
// tag. It is not safe for concurrent use: open one per goroutine.
type Initiator struct {
	// Timeout is how long a request waits before it is retransmitted
	// (default 200ms); Retries is how often (default 5) before ErrTimeout.
	Timeout time.Duration
	Retries int

	iface string
	mac   MAC
	mtu   int
	conn  *packet.Conn
	raw   syscall.RawConn
	tag   uint32

	// receive batch
	rbufs  [][]byte
	riovs  []unix.Iovec
	rhdrs  []mmsghdr
	nrecv  int
	errno  syscall.Errno
	readFn func(fd uintptr) bool
	// send batch
	shdrs  []mmsghdr
	siovs  []unix.Iovec
	nsend  int
	sent   int
	sendFn func(fd uintptr) bool
}

// NewInitiator opens a raw AoE socket on iface (needs CAP_NET_RAW).
func NewInitiator(iface string) (*Initiator, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("AoE initiator: interface %q: %w", iface, err)
	}
	mac, err := MACFrom(ifi.HardwareAddr)
	if err != nil {
		return nil, fmt.Errorf("AoE initiator: interface %s has no Ethernet address: %w", iface, err)
	}
	conn, err := packet.Listen(ifi, packet.Raw, EtherType, nil)
	if err != nil {
		return nil, fmt.Errorf("AoE initiator: open raw socket on %s: %w (run as root or grant CAP_NET_RAW)", iface, err)
	}
	in := &Initiator{Timeout: 200 * time.Millisecond, Retries: 5, iface: iface, mac: mac, mtu: ifi.MTU, conn: conn}
	if in.raw, err = conn.SyscallConn(); err == nil {
		err = conn.SetBPF(responseFilter())
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("AoE initiator on %s: %w", iface, err)
	}
	_ = in.raw.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 8<<20)
	})
	frame := EthernetLen + min(max(ifi.MTU, 9000), 65535)
	in.rbufs = make([][]byte, batchLen)
	in.riovs = make([]unix.Iovec, batchLen)
	in.rhdrs = make([]mmsghdr, batchLen)
	for i := range in.rbufs {
		in.rbufs[i] = make([]byte, frame)
		in.riovs[i].Base = &in.rbufs[i][0]
		in.riovs[i].SetLen(frame)
		in.rhdrs[i].hdr.Iov = &in.riovs[i]
		in.rhdrs[i].hdr.SetIovlen(1)
	}
	in.readFn = in.doRead
	in.sendFn = in.doSend
	in.tag = uint32(time.Now().UnixNano())
	return in, nil
}

// responseFilter accepts incoming AoE responses only.
func responseFilter() []bpf.RawInstruction {
	prog, err := bpf.Assemble([]bpf.Instruction{
		bpf.LoadExtension{Num: bpf.ExtType},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.PACKET_OUTGOING, SkipTrue: 2},
		bpf.LoadAbsolute{Off: 14, Size: 1},
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: uint32(FlagResponse), SkipTrue: 1},
		bpf.RetConstant{Val: 0},
		bpf.RetConstant{Val: 0x40000},
	})
	if err != nil {
		panic("aoe: BPF program does not assemble: " + err.Error())
	}
	return prog
}

// MAC returns the initiator's Ethernet address.
func (in *Initiator) MAC() MAC { return in.mac }

// Close releases the socket.
func (in *Initiator) Close() error { return in.conn.Close() }

func (in *Initiator) doRead(fd uintptr) bool {
	for i := range in.rhdrs {
		in.rhdrs[i].len = 0
	}
	r, errno := recvmmsg(fd, in.rhdrs)
	if errno == unix.EAGAIN {
		return false
	}
	in.nrecv, in.errno = r, errno
	return true
}

func (in *Initiator) doSend(fd uintptr) bool {
	for in.sent < in.nsend {
		r, errno := sendmmsg(fd, in.shdrs[in.sent:in.nsend])
		switch errno {
		case 0:
			in.sent += r
		case unix.EAGAIN, unix.ENOBUFS:
			return false
		default:
			in.errno = errno
			return true
		}
	}
	return true
}

// recv receives a batch, waiting until deadline (zero: no wait). It returns
// 0 frames at the deadline.
func (in *Initiator) recv(deadline time.Time) (int, error) {
	in.nrecv, in.errno = 0, 0
	if err := in.conn.SetReadDeadline(deadline); err != nil {
		return 0, err
	}
	if err := in.raw.Read(in.readFn); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return 0, nil
		}
		return 0, err
	}
	if in.errno != 0 {
		return 0, in.errno
	}
	return in.nrecv, nil
}

// send transmits frames, each given as up to two iovecs.
func (in *Initiator) flushSend() error {
	if in.nsend == 0 {
		return nil
	}
	in.sent, in.errno = 0, 0
	err := in.raw.Write(in.sendFn)
	in.nsend = 0
	if err == nil && in.errno != 0 {
		err = in.errno
	}
	if err != nil {
		return fmt.Errorf("AoE send on %s: %w", in.iface, err)
	}
	return nil
}

func (in *Initiator) queueSend(parts ...[]byte) {
	if in.nsend == len(in.shdrs) {
		n := max(16, 2*len(in.shdrs))
		hdrs, iovs := make([]mmsghdr, n), make([]unix.Iovec, 2*n)
		copy(hdrs, in.shdrs) // keep what is queued
		copy(iovs, in.siovs)
		for i := range hdrs {
			hdrs[i].hdr.Iov = &iovs[2*i]
		}
		in.shdrs, in.siovs = hdrs, iovs
	}
	i := in.nsend
	k := 0
	for _, p := range parts {
		if len(p) > 0 {
			in.siovs[2*i+k].Base = &p[0]
			in.siovs[2*i+k].SetLen(len(p))
			k++
		}
	}
	in.shdrs[i].hdr.SetIovlen(k)
	in.nsend++
}

func (in *Initiator) nextTag() uint32 {
	in.tag++
	return in.tag &^ (1 << 31) // the Linux driver uses the top bit; stay out of its way
}

// Response is one AoE response.
type Response struct {
	Header Header
	Arg    []byte // everything after the header (a copy)
}

// Exchange sends one request (the AoE argument arg for cmd) to dst,
// addressed to shelf.slot, and returns every response carrying its tag that
// arrives within wait; with first set it returns at the first one. It
// returns ErrNoResponse if none came.
func (in *Initiator) Exchange(ctx context.Context, dst MAC, shelf uint16, slot uint8, cmd Command, arg []byte, wait time.Duration, first bool) ([]Response, error) {
	return in.ExchangeAs(ctx, in.mac, dst, shelf, slot, cmd, arg, wait, first)
}

// ExchangeAs is Exchange with another source MAC in the request, so tests
// can play a second initiator; the response goes to src, which the socket
// still sees on a point-to-point link such as a veth pair.
func (in *Initiator) ExchangeAs(ctx context.Context, src, dst MAC, shelf uint16, slot uint8, cmd Command, arg []byte, wait time.Duration, first bool) ([]Response, error) {
	return in.exchange(ctx, Header{Dst: dst, Src: src, Version: Version, Shelf: shelf, Slot: slot, Command: cmd}, arg, wait, first)
}

// exchange is ExchangeAs for the request header h, whose Tag it sets.
func (in *Initiator) exchange(ctx context.Context, h Header, arg []byte, wait time.Duration, first bool) ([]Response, error) {
	tag, cmd := in.nextTag(), h.Command
	h.Tag = tag
	frame, _ := h.AppendBinary(make([]byte, 0, HeaderLen+len(arg)+MinFrameLen))
	frame = append(frame, arg...)
	if len(frame) < MinFrameLen {
		frame = append(frame, make([]byte, MinFrameLen-len(frame))...)
	}
	in.queueSend(frame)
	if err := in.flushSend(); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(wait)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	var out []Response
	for time.Now().Before(deadline) && ctx.Err() == nil {
		n, err := in.recv(deadline)
		if err != nil {
			return out, err
		}
		for i := 0; i < n; i++ {
			b := in.rbufs[i][:in.rhdrs[i].len]
			var rh Header
			if rh.Decode(b) != nil || rh.Tag != tag || rh.Command != cmd {
				continue
			}
			out = append(out, Response{Header: rh, Arg: slices.Clone(b[HeaderLen:])})
		}
		if first && len(out) > 0 {
			return out, nil
		}
	}
	if len(out) == 0 {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		return nil, ErrNoResponse
	}
	return out, nil
}

// Collect returns the responses that arrive within wait and satisfy match
// (e.g. unsolicited Query Config announcements).
func (in *Initiator) Collect(ctx context.Context, wait time.Duration, match func(Response) bool) ([]Response, error) {
	deadline := time.Now().Add(wait)
	var out []Response
	for time.Now().Before(deadline) && ctx.Err() == nil {
		n, err := in.recv(deadline)
		if err != nil {
			return out, err
		}
		for i := 0; i < n; i++ {
			b := in.rbufs[i][:in.rhdrs[i].len]
			var r Response
			if r.Header.Decode(b) != nil {
				continue
			}
			r.Arg = slices.Clone(b[HeaderLen:])
			if match(r) {
				out = append(out, r)
			}
		}
	}
	return out, ctx.Err()
}

// Discover broadcasts a Query Config read, collects the responses that
// arrive within wait and IDENTIFYs each target found. Targets are sorted by
// shelf, slot and MAC.
func (in *Initiator) Discover(ctx context.Context, wait time.Duration) ([]TargetInfo, error) {
	q, _ := (&Config{Version: Version}).AppendBinary(nil)
	resps, err := in.Exchange(ctx, BroadcastMAC, BroadcastShelf, BroadcastSlot, CmdConfig, q, wait, false)
	if errors.Is(err, ErrNoResponse) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []TargetInfo
	seen := map[[9]byte]bool{}
	for _, r := range resps {
		var c Config
		if r.Header.Flags&FlagError != 0 || len(r.Arg) < ConfigArgLen {
			continue
		}
		_ = c.Decode(r.Arg) // a truncated string still leaves the fixed fields

		key := [9]byte{}
		copy(key[:], r.Header.Src[:])
		binary.BigEndian.PutUint16(key[6:], r.Header.Shelf)
		key[8] = r.Header.Slot
		if seen[key] {
			continue
		}
		seen[key] = true
		t := TargetInfo{Iface: in.iface, MAC: r.Header.Src, Shelf: r.Header.Shelf, Slot: r.Header.Slot,
			BufCnt: c.BufCnt, Firmware: c.Firmware, SectorsPerFrame: int(c.Sectors), Config: slices.Clone(c.String)}
		t.Payload = min(int(c.Sectors), SectorsPerFrame(in.mtu)) * SectorSize
		if err := in.Identify(ctx, &t); err != nil {
			t.State = "identify failed: " + err.Error()
		} else {
			t.State = "up"
		}
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b TargetInfo) int {
		if a.Shelf != b.Shelf {
			return int(a.Shelf) - int(b.Shelf)
		}
		if a.Slot != b.Slot {
			return int(a.Slot) - int(b.Slot)
		}
		return slices.Compare(a.MAC[:], b.MAC[:])
	})
	return out, nil
}

// Identify sends ATA IDENTIFY DEVICE to t and fills its capacity and
// identity strings.
func (in *Initiator) Identify(ctx context.Context, t *TargetInfo) error {
	arg, _ := (&ATA{CmdStat: ATAIdentify, Sectors: 1}).AppendBinary(nil)
	for try := 0; ; try++ {
		resps, err := in.Exchange(ctx, t.MAC, t.Shelf, t.Slot, CmdATA, arg, in.Timeout, true)
		if errors.Is(err, ErrNoResponse) && try < in.Retries {
			continue
		}
		if err != nil {
			return err
		}
		r := resps[0]
		if r.Header.Flags&FlagError != 0 {
			return r.Header.Error
		}
		var a ATA
		if err := a.Decode(r.Arg); err != nil {
			return err
		}
		if a.CmdStat&ATAStatusERR != 0 {
			return &ATAError{Status: a.CmdStat, Err: a.ErrFeat}
		}
		if len(a.Data) < SectorSize {
			return fmt.Errorf("IDENTIFY response from %s carries %d bytes, want 512", t.Name(), len(a.Data))
		}
		id := a.Data[:SectorSize]
		t.Sectors = binary.LittleEndian.Uint64(id[200:208]) & 0xffffffffffff
		if binary.LittleEndian.Uint16(id[166:168])&(1<<10) == 0 {
			t.Sectors = uint64(binary.LittleEndian.Uint32(id[120:124]))
		}
		t.Serial = identString(id, 10, 20)
		t.FirmwareRev = identString(id, 23, 8)
		t.Model = identString(id, 27, 40)
		return nil
	}
}

// IO is one ATA read or write of at most TargetInfo.Payload bytes, for Pipe.
type IO struct {
	Write bool
	LBA   uint64
	Buf   []byte // a multiple of 512 bytes: the data to write, or where to read
	Err   error  // set when done: nil, an Error, an *ATAError or ErrTimeout
	User  any    // for the caller
}

type slot struct {
	io    *IO
	hdr   [ATAFrameLen]byte
	gen   uint16
	sent  time.Time
	tries int
}

// Pipe runs I/Os against t keeping up to window of them outstanding: it
// calls next for each new I/O (nil: no more for now; it is asked again when
// one completes) and done for each completed one, until next returned nil
// and nothing is outstanding, or ctx is done. Reads and writes use READ/
// WRITE SECTORS EXT. Unanswered requests are retransmitted after Timeout,
// Retries times.
func (in *Initiator) Pipe(ctx context.Context, t *TargetInfo, window int, next func() *IO, done func(*IO)) error {
	window = min(max(window, 1), 1<<15)
	slots := make([]slot, window)
	free := make([]int, 0, window)
	for i := window - 1; i >= 0; i-- {
		free = append(free, i)
	}
	outstanding := 0
	exhausted := false
	timeout := in.Timeout
	nextCheck := time.Now().Add(timeout / 2)
	start := func(i int, io *IO) {
		s := &slots[i]
		s.io, s.tries = io, 0
		s.gen++
		n := len(io.Buf) / SectorSize
		a := ATA{Flags: ATAExtended, Sectors: uint8(n), CmdStat: ATAReadSectorsExt, LBA: io.LBA}
		if io.Write {
			a.Flags |= ATAWrite
			a.CmdStat = ATAWriteSectorsExt
		}
		h := Header{Dst: t.MAC, Src: in.mac, Version: Version, Shelf: t.Shelf, Slot: t.Slot,
			Command: CmdATA, Tag: uint32(s.gen)<<16 | uint32(i)}
		h.Put(s.hdr[:])
		a.Put(s.hdr[HeaderLen:])
	}
	transmit := func(i int, now time.Time) {
		s := &slots[i]
		s.sent = now
		s.tries++
		if s.io.Write {
			in.queueSend(s.hdr[:], s.io.Buf)
		} else {
			in.queueSend(s.hdr[:])
		}
	}
	for {
		now := time.Now()
		for !exhausted && len(free) > 0 {
			io := next()
			if io == nil {
				exhausted = true
				break
			}
			if len(io.Buf)%SectorSize != 0 || len(io.Buf) > t.Payload || len(io.Buf) == 0 {
				io.Err = fmt.Errorf("AoE I/O of %d bytes: want a multiple of 512 up to %d", len(io.Buf), t.Payload)
				done(io)
				continue
			}
			i := free[len(free)-1]
			free = free[:len(free)-1]
			start(i, io)
			transmit(i, now)
			outstanding++
		}
		if err := in.flushSend(); err != nil {
			return err
		}
		if outstanding == 0 {
			if exhausted {
				return nil
			}
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if !now.Before(nextCheck) {
			for i := range slots {
				s := &slots[i]
				if s.io == nil || now.Sub(s.sent) < timeout {
					continue
				}
				if s.tries > in.Retries {
					io := s.io
					s.io = nil
					io.Err = ErrTimeout
					free = append(free, i)
					outstanding--
					exhausted = false
					done(io)
					continue
				}
				transmit(i, now)
			}
			if err := in.flushSend(); err != nil {
				return err
			}
			nextCheck = now.Add(timeout / 2)
		}
		n, err := in.recv(nextCheck)
		if err != nil {
			return fmt.Errorf("AoE receive on %s: %w", in.iface, err)
		}
		for k := 0; k < n; k++ {
			b := in.rbufs[k][:in.rhdrs[k].len]
			if len(b) < ATAFrameLen || b[19] != byte(CmdATA) {
				continue
			}
			tag := binary.BigEndian.Uint32(b[20:24])
			i := int(tag & 0xffff)
			if i >= window {
				continue
			}
			s := &slots[i]
			if s.io == nil || uint16(tag>>16) != s.gen || [6]byte(b[6:12]) != t.MAC {
				continue
			}
			io := s.io
			s.io = nil
			io.Err = nil
			switch {
			case b[14]&uint8(FlagError) != 0:
				io.Err = Error(b[15])
			case b[HeaderLen+3]&ATAStatusERR != 0:
				io.Err = &ATAError{Status: b[HeaderLen+3], Err: b[HeaderLen+1]}
			case !io.Write:
				if copy(io.Buf, b[ATAFrameLen:]) < len(io.Buf) {
					io.Err = fmt.Errorf("AoE read response from %s is short", t.Name())
				}
			}
			free = append(free, i)
			outstanding--
			exhausted = false
			done(io)
		}
	}
}

// ReadAt reads len(p) bytes (a multiple of 512) at sector lba of t, with up
// to window frames outstanding.
func (in *Initiator) ReadAt(ctx context.Context, t *TargetInfo, p []byte, lba uint64, window int) error {
	return in.rw(ctx, t, p, lba, window, false)
}

// WriteAt writes p (a multiple of 512 bytes) at sector lba of t, with up to
// window frames outstanding.
func (in *Initiator) WriteAt(ctx context.Context, t *TargetInfo, p []byte, lba uint64, window int) error {
	return in.rw(ctx, t, p, lba, window, true)
}

func (in *Initiator) rw(ctx context.Context, t *TargetInfo, p []byte, lba uint64, window int, write bool) error {
	if len(p)%SectorSize != 0 {
		return fmt.Errorf("AoE I/O of %d bytes is not a multiple of 512", len(p))
	}
	if t.Payload < SectorSize {
		return fmt.Errorf("target %s offers no sectors per frame", t.Name())
	}
	var firstErr error
	off := 0
	err := in.Pipe(ctx, t, window, func() *IO {
		if off >= len(p) || firstErr != nil {
			return nil
		}
		n := min(t.Payload, len(p)-off)
		io := &IO{Write: write, LBA: lba + uint64(off/SectorSize), Buf: p[off : off+n]}
		off += n
		return io
	}, func(io *IO) {
		if io.Err != nil && firstErr == nil {
			firstErr = fmt.Errorf("AoE %s at sector %d: %w", map[bool]string{false: "read", true: "write"}[io.Write], io.LBA, io.Err)
		}
	})
	if err != nil {
		return err
	}
	return firstErr
}

// Stat discovers the targets on each interface (all up interfaces but
// loopback when ifaces is empty), waiting timeout for Query Config
// responses, for `tharsis aoe-stat`.
func Stat(ctx context.Context, ifaces []string, timeout time.Duration) ([]TargetInfo, error) {
	if len(ifaces) == 0 {
		all, err := net.Interfaces()
		if err != nil {
			return nil, err
		}
		for _, ifi := range all {
			if ifi.Flags&net.FlagUp != 0 && ifi.Flags&net.FlagLoopback == 0 && len(ifi.HardwareAddr) == 6 {
				ifaces = append(ifaces, ifi.Name)
			}
		}
	}
	var (
		mu   sync.Mutex
		out  []TargetInfo
		errs []error
		wg   sync.WaitGroup
	)
	// Open every socket here, in the caller's network namespace, then
	// discover in parallel.
	for _, name := range ifaces {
		in, err := NewInitiator(name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer in.Close()
			ts, err := in.Discover(ctx, timeout)
			mu.Lock()
			defer mu.Unlock()
			out = append(out, ts...)
			if err != nil {
				errs = append(errs, err)
			}
		}()
	}
	wg.Wait()
	slices.SortFunc(out, func(a, b TargetInfo) int {
		if a.Shelf != b.Shelf {
			return int(a.Shelf) - int(b.Shelf)
		}
		if a.Slot != b.Slot {
			return int(a.Slot) - int(b.Slot)
		}
		if a.Iface < b.Iface {
			return -1
		}
		if a.Iface > b.Iface {
			return 1
		}
		return 0
	})
	return out, errors.Join(errs...)
}
