//go:build linux

package aoe

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/mdlayher/packet"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Frames are built by hand in the buffers they arrived in rather than with
// github.com/mdlayher/ethernet: its Frame.UnmarshalBinary copies the payload
// and MarshalBinary allocates a new buffer per frame, and an AoE response
// only needs the two addresses swapped in place (see README's dependency
// table). github.com/mdlayher/packet opens and binds the socket; the hot path
// uses its SyscallConn for recvmmsg/sendmmsg, because Conn.ReadFrom
// allocates an address per frame and moves one frame per system call.

// mmsghdr is struct mmsghdr of recvmmsg(2) and sendmmsg(2).
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
	_   [4]byte
}

// recvmmsg receives a batch into hdrs without blocking (retrying EINTR) and
// returns how many frames arrived. EAGAIN means nothing is waiting: the
// caller returns false to let the runtime poller wait.
func recvmmsg(fd uintptr, hdrs []mmsghdr) (int, syscall.Errno) {
	for {
		r, _, errno := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&hdrs[0])),
			uintptr(len(hdrs)), unix.MSG_DONTWAIT, 0, 0)
		if errno != unix.EINTR {
			return int(r), errno
		}
	}
}

// sendmmsg sends hdrs without blocking (retrying EINTR) and returns how many
// frames the kernel took. EAGAIN/ENOBUFS mean the socket is full: the
// caller returns false to let the runtime poller wait.
func sendmmsg(fd uintptr, hdrs []mmsghdr) (int, syscall.Errno) {
	for {
		r, _, errno := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&hdrs[0])),
			uintptr(len(hdrs)), unix.MSG_DONTWAIT, 0, 0)
		if errno != unix.EINTR {
			return int(r), errno
		}
	}
}

// Server serves every target of one network interface with one raw socket.
type Server struct {
	*core
	ifi     *net.Interface
	conn    *packet.Conn
	raw     syscall.RawConn
	workers int
	frames  int // frame buffers of the write stage (and its writers)

	// The write stage, created by Serve.
	pool    chan *frame  // free frames
	slowq   chan *frame  // frames for the writers
	commits []*committer // by target.idx

	mu      sync.Mutex
	closed  bool
	serving bool
	done    chan struct{}
}

// NewServer opens a raw AoE socket on iface (which needs CAP_NET_RAW) for
// the given targets. Call Serve to answer requests and Close to release the
// socket. A nil logger logs to slog.Default().
func NewServer(iface string, targets []TargetConfig, logger *slog.Logger) (*Server, error) {
	c, err := newCore(iface, targets, "", logger)
	if err != nil {
		return nil, err
	}
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("AoE: interface %q: %w (check the exports' interfaces)", iface, err)
	}
	mac, err := MACFrom(ifi.HardwareAddr)
	if err != nil {
		return nil, fmt.Errorf("AoE: interface %s has no Ethernet address: %w", iface, err)
	}
	conn, err := packet.Listen(ifi, packet.Raw, EtherType, nil)
	if err != nil {
		if errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("AoE: open raw socket on %s: %w (run as root or grant CAP_NET_RAW)", iface, err)
		}
		return nil, fmt.Errorf("AoE: open raw socket on %s: %w", iface, err)
	}
	s := &Server{core: c, ifi: ifi, conn: conn, done: make(chan struct{})}
	fail := func(err error) (*Server, error) {
		conn.Close()
		return nil, err
	}
	if s.raw, err = conn.SyscallConn(); err != nil {
		return fail(fmt.Errorf("AoE: raw socket on %s: %w", iface, err))
	}
	if err := conn.SetBPF(requestFilter()); err != nil {
		return fail(fmt.Errorf("AoE: attach BPF filter on %s: %w", iface, err))
	}
	mtu := ifi.MTU
	if m, err := s.readMTU(); err == nil {
		mtu = m
	}
	c.frameLen = EthernetLen + min(max(mtu, 9000), 65535)
	c.setEnv(mac, mtu)
	bufs := 0
	for _, t := range c.targets {
		bufs += int(t.bufcnt)
	}
	// Receiving workers: enough buffers for every advertised frame, twice
	// over. Workers hand frames that wait for a sync to the write stage,
	// whose frames (and writer goroutines) also cover every advertised
	// frame twice over (retransmits, several initiators), within a fixed
	// bound so memory stays bounded whatever the bufcnt.
	s.workers = min(max(4, 2*bufs/batchLen), 64)
	s.frames = min(max(2*bufs, 64), maxFrames)
	rcvbuf := min(bufs*c.frameLen*2, 64<<20)
	_ = s.raw.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf) != nil {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf)
		}
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, rcvbuf)
	})
	for _, t := range c.targets {
		mode := "durable writes (acknowledged after flush)"
		if t.cfg.WriteCache {
			mode = "write cache (writes acknowledged before flush)"
		}
		if t.cfg.ReadOnly {
			mode = "read-only"
		}
		t.log.Info("AoE target ready", "mac", mac.String(), "mtu", mtu,
			"sectors_per_frame", c.env.Load().maxSector, "bufcnt", t.bufcnt, "mode", mode)
	}
	return s, nil
}

// requestFilter accepts AoE requests sent to this host: it drops frames for
// other hosts and our own outgoing frames (packet types 3 and 4) and
// responses (R flag).
func requestFilter() []bpf.RawInstruction {
	prog, err := bpf.Assemble([]bpf.Instruction{
		bpf.LoadExtension{Num: bpf.ExtType},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.PACKET_OTHERHOST, SkipTrue: 3},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.PACKET_OUTGOING, SkipTrue: 2},
		bpf.LoadAbsolute{Off: 14, Size: 1},
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: uint32(FlagResponse), SkipFalse: 1},
		bpf.RetConstant{Val: 0},
		bpf.RetConstant{Val: 0x40000},
	})
	if err != nil {
		panic("aoe: BPF program does not assemble: " + err.Error())
	}
	return prog
}

func (s *Server) readMTU() (int, error) {
	ifr, err := unix.NewIfreq(s.iface)
	if err != nil {
		return 0, err
	}
	var ioErr error
	err = s.raw.Control(func(fd uintptr) { ioErr = unix.IoctlIfreq(int(fd), unix.SIOCGIFMTU, ifr) })
	if err == nil {
		err = ioErr
	}
	if err != nil {
		return 0, err
	}
	return int(ifr.Uint32()), nil
}

// refreshMTU re-reads the MTU; when the sectors per frame change it logs
// and announces the targets so initiators learn the new frame size.
func (s *Server) refreshMTU() {
	mtu, err := s.readMTU()
	if err != nil {
		return
	}
	e := s.env.Load()
	if mtu == e.mtu {
		return
	}
	if s.setEnv(e.mac, mtu) {
		s.log.Info("AoE interface MTU changed", "mtu", mtu, "sectors_per_frame", s.env.Load().maxSector)
		if err := s.Announce(); err != nil {
			s.log.Warn("AoE announce after MTU change failed", "err", err)
		}
	}
}

// Serve answers requests until ctx is done or Close is called, then closes
// the socket and returns nil. It announces every target first. It returns
// an error if the socket fails or Serve was already called.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	if s.closed || s.serving {
		s.mu.Unlock()
		return fmt.Errorf("AoE server on %s: Serve called twice or after Close", s.iface)
	}
	s.serving = true
	s.mu.Unlock()
	if err := s.Announce(); err != nil {
		s.log.Warn("AoE announce failed", "err", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopStages := s.startStages()
	errc := make(chan error, s.workers)
	var wg sync.WaitGroup
	for range s.workers {
		w := newWorker(s)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- w.run()
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				s.refreshMTU()
			}
		}
	}()
	var err error
	select {
	case <-ctx.Done():
	case <-s.done:
	case err = <-errc:
	}
	cancel()
	s.Close()
	wg.Wait()
	stopStages() // frames in flight are finished (their responses are not sent)
	return err
}

// Announce broadcasts an unsolicited Query Config response for every target
// (to each MAC of a non-empty Mac Mask list instead, like vblade), so
// initiators learn the target's MAC at once, e.g. after a failover.
func (s *Server) Announce() error {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return errClosed
	}
	e := s.env.Load()
	b := make([]byte, HeaderLen+ConfigArgLen+MaxConfigLen)
	var errs []error
	for _, t := range s.targets {
		for _, dst := range t.announceDsts() {
			n := t.announce(b, e, dst)
			if _, err := s.conn.WriteTo(b[:n], &packet.Addr{HardwareAddr: dst[:]}); err != nil {
				errs = append(errs, fmt.Errorf("announce %s on %s: %w", t.name, s.iface, err))
			}
		}
	}
	return errors.Join(errs...)
}

// Close stops Serve and releases the socket. It does not close the devices.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	close(s.done)
	return s.conn.Close()
}

// maxFrames bounds the write stage's frame buffers per Server (about 4.5 MB
// of 9 KB buffers).
const maxFrames = 512

// A frame is a request buffer that a receiving worker handed to the write
// stage in exchange for a free one: writers handle it (WriteAt may wait for
// a sync), the target's committer flushes the device and sends its
// response, and then it returns to the pool.
type frame struct {
	buf   []byte // s.frameLen bytes
	n     int    // request length; once handled, the response length
	t     *target
	e     *env
	flush bool // the response acknowledges a write: flush before sending
}

// committer group-commits one target's write responses: it takes every
// response queued, flushes the device once for all of them (concurrent
// writes share one fdatasync), then sends them with one sendmmsg. While it
// flushes, workers and writers keep queueing the next group.
type committer struct {
	s     *Server
	t     *target
	q     chan *frame
	batch []*frame
	snd   *sender
}

// startStages creates the frame pool, the writers and one committer per
// target. The returned function stops them once no worker runs any more.
func (s *Server) startStages() (stop func()) {
	s.pool = make(chan *frame, s.frames)
	s.slowq = make(chan *frame, s.frames)
	for range s.frames {
		s.pool <- &frame{buf: make([]byte, s.frameLen)}
	}
	var writers, committers sync.WaitGroup
	for range s.frames {
		writers.Add(1)
		go func() {
			defer writers.Done()
			s.write()
		}()
	}
	for _, t := range s.targets {
		c := &committer{s: s, t: t, q: make(chan *frame, s.frames),
			batch: make([]*frame, 0, s.frames), snd: newSender(s, s.frames)}
		s.commits = append(s.commits, c)
		committers.Add(1)
		go func() {
			defer committers.Done()
			c.run()
		}()
	}
	return func() {
		close(s.slowq)
		writers.Wait()
		for _, c := range s.commits {
			close(c.q)
		}
		committers.Wait()
	}
}

// write is one writer: it handles frames that may block (writes to a
// device whose WriteAt waits for a sync, FLUSH CACHE), so that as many of
// them are in flight as the initiators keep outstanding.
func (s *Server) write() {
	for f := range s.slowq {
		o := f.t.handle(f.buf, f.n, f.e)
		if o.n == 0 {
			s.release(f)
			continue
		}
		f.n, f.flush = o.n, o.flush
		s.commits[f.t.idx].q <- f // never blocks: the queue holds every frame
	}
}

func (s *Server) release(f *frame) {
	f.t, f.e, f.flush = nil, nil, false
	s.pool <- f // never blocks: the pool holds every frame
}

func (c *committer) run() {
	for f := range c.q {
		if len(c.q) == 0 {
			// Writers woken by the same log commit queue their frames
			// one after another: let them run first, so that their
			// responses share this flush and sendmmsg.
			runtime.Gosched()
		}
		c.batch = append(c.batch[:0], f)
	drain:
		for len(c.batch) < cap(c.batch) {
			select {
			case f, ok := <-c.q:
				if !ok {
					break drain
				}
				c.batch = append(c.batch, f)
			default:
				break drain
			}
		}
		c.commit()
	}
}

// commit flushes the device if a queued response acknowledges a write,
// marks those responses ERR|DRDY with UNC if the flush failed, sends the
// batch and returns its frames to the pool.
func (c *committer) commit() {
	var err error
	for _, f := range c.batch {
		if f.flush {
			if err = c.t.cfg.Device.Flush(); err != nil {
				c.t.ioerrs.Add(1)
				c.t.log.Error("flush after write failed; reporting UNC to the initiator", "err", err)
			}
			break
		}
	}
	for _, f := range c.batch {
		if err != nil && f.flush {
			setUNC(f.buf)
		}
		c.snd.add(f.buf[:f.n])
	}
	c.snd.send()
	for i, f := range c.batch {
		c.s.release(f)
		c.batch[i] = nil
	}
}

// setUNC turns the ATA response frame b into ERR|DRDY with UNC.
func setUNC(b []byte) {
	arg := b[HeaderLen:ATAFrameLen]
	arg[1], arg[3] = ATAErrUNC, ATAStatusDRDY|ATAStatusERR
}

// sender queues responses and sends them with sendmmsg.
type sender struct {
	s     *Server
	out   []mmsghdr
	iov   []unix.Iovec
	n     int // queued
	sent  int
	errno syscall.Errno
	fn    func(fd uintptr) bool
}

func newSender(s *Server, n int) *sender {
	q := &sender{s: s, out: make([]mmsghdr, n), iov: make([]unix.Iovec, n)}
	for i := range q.out {
		q.out[i].hdr.Iov = &q.iov[i]
		q.out[i].hdr.SetIovlen(1)
	}
	q.fn = q.do
	return q
}

// add queues b and returns its index; the caller sends before the queue
// is full.
func (q *sender) add(b []byte) int {
	i := q.n
	q.iov[i].Base = &b[0]
	q.iov[i].SetLen(len(b))
	q.n++
	return i
}

// do runs sendmmsg for the queued responses from q.sent on.
func (q *sender) do(fd uintptr) bool {
	for q.sent < q.n {
		r, errno := sendmmsg(fd, q.out[q.sent:q.n])
		switch errno {
		case 0:
			q.sent += r
		case unix.EAGAIN, unix.ENOBUFS:
			return false
		default:
			// A response the interface refuses (e.g. larger than a
			// lowered MTU): drop it, the initiator retransmits.
			q.errno = errno
			q.sent++
		}
	}
	return true
}

// send sends the queue and empties it.
func (q *sender) send() {
	if q.n == 0 {
		return
	}
	q.sent, q.errno = 0, 0
	if err := q.s.raw.Write(q.fn); err != nil {
		q.s.log.Debug("AoE send failed", "err", err)
	}
	if q.errno != 0 {
		q.s.log.Warn("AoE response dropped by the interface", "err", q.errno)
	}
	q.n = 0
}

// worker receives a batch of frames and answers it. It handles reads and
// other quick requests itself; it hands frames whose handling waits for a
// sync to the write stage (writers, then the target's committer) in
// exchange for free buffers, so that it goes on receiving while syncs run.
// Only when every frame of the pool is in use does it handle such a frame
// itself, flushing once per batch.
type worker struct {
	s     *Server
	bufs  [][]byte
	iovs  []unix.Iovec
	names []unix.RawSockaddrLinklayer
	hdrs  []mmsghdr
	snd   *sender   // responses of this batch
	flush []*target // targets written by this batch, not yet flushed
	fixup []int     // indexes into snd of responses that wait on a flush
	fixT  []*target
	extra [][]byte // buffers for broadcast fan-out
	route []*target

	nrecv  int
	errno  syscall.Errno
	readFn func(fd uintptr) bool
}

func newWorker(s *Server) *worker {
	w := &worker{s: s,
		bufs:  make([][]byte, batchLen),
		iovs:  make([]unix.Iovec, batchLen),
		names: make([]unix.RawSockaddrLinklayer, batchLen),
		hdrs:  make([]mmsghdr, batchLen),
		snd:   newSender(s, batchLen+len(s.targets)),
	}
	for i := range w.bufs {
		w.bufs[i] = make([]byte, s.frameLen)
		w.iovs[i].Base = &w.bufs[i][0]
		w.iovs[i].SetLen(s.frameLen)
		w.hdrs[i].hdr.Name = (*byte)(unsafe.Pointer(&w.names[i]))
		w.hdrs[i].hdr.Iov = &w.iovs[i]
		w.hdrs[i].hdr.SetIovlen(1)
	}
	w.readFn = w.doRead
	return w
}

// doRead runs recvmmsg on the non-blocking socket; false asks the runtime
// poller to wait for the socket to become readable.
func (w *worker) doRead(fd uintptr) bool {
	for i := range w.hdrs {
		w.hdrs[i].hdr.Namelen = unix.SizeofSockaddrLinklayer
		w.hdrs[i].len = 0
	}
	r, errno := recvmmsg(fd, w.hdrs)
	if errno == unix.EAGAIN {
		return false
	}
	w.nrecv, w.errno = r, errno
	return true
}

// handoff exchanges the frame buffer w.bufs[i] for a free frame of the pool
// and returns that frame, now holding the buffer; nil if the pool is empty.
func (w *worker) handoff(i int) *frame {
	var f *frame
	select {
	case f = <-w.s.pool:
	default:
		return nil
	}
	f.buf, w.bufs[i] = w.bufs[i], f.buf
	w.iovs[i].Base = &w.bufs[i][0]
	return f
}

func (w *worker) queue(b []byte, t *target, flush bool) {
	i := w.snd.add(b)
	if flush {
		if !containsTarget(w.flush, t) {
			w.flush = append(w.flush, t)
		}
		w.fixup = append(w.fixup, i)
		w.fixT = append(w.fixT, t)
	}
}

func containsTarget(ts []*target, t *target) bool {
	for _, x := range ts {
		if x == t {
			return true
		}
	}
	return false
}

// commit flushes the devices written by the queued responses, marks the
// responses of writes whose flush failed with ERR|DRDY and UNC, and sends
// the queue.
func (w *worker) commit() {
	for _, t := range w.flush {
		if err := t.cfg.Device.Flush(); err != nil {
			t.ioerrs.Add(1)
			t.log.Error("flush after write failed; reporting UNC to the initiator", "err", err)
			for j, i := range w.fixup {
				if w.fixT[j] == t {
					setUNC(unsafe.Slice(w.snd.iov[i].Base, ATAFrameLen))
				}
			}
		}
	}
	w.flush, w.fixup, w.fixT = w.flush[:0], w.fixup[:0], w.fixT[:0]
	w.snd.send()
}

// handle answers the frame w.bufs[i] (n bytes) addressed to t alone.
func (w *worker) handle(i, n int, t *target, e *env) {
	s := w.s
	b := w.bufs[i]
	if t.blocks(b, n) {
		if f := w.handoff(i); f != nil {
			f.t, f.n, f.e = t, n, e
			s.slowq <- f // never blocks: the queue holds every frame
			return
		}
	}
	o := t.handle(b, n, e)
	if o.n == 0 {
		return
	}
	if o.flush {
		// Written to the page cache: the committer flushes it together
		// with every other write that arrives meanwhile.
		if f := w.handoff(i); f != nil {
			f.t, f.n, f.flush = t, o.n, true
			s.commits[t.idx].q <- f
			return
		}
	}
	w.queue(b[:o.n], t, o.flush)
}

func (w *worker) run() error {
	s := w.s
	for {
		if err := s.raw.Read(w.readFn); err != nil {
			if errors.Is(err, net.ErrClosed) || s.isClosed() {
				return nil
			}
			return fmt.Errorf("AoE receive on %s: %w", s.iface, err)
		}
		if w.errno != 0 {
			if w.errno == unix.ENETDOWN {
				runtime.Gosched()
				continue
			}
			return fmt.Errorf("AoE receive on %s: %w", s.iface, w.errno)
		}
		e := s.env.Load()
		for i := 0; i < w.nrecv; i++ {
			b, n := w.bufs[i], int(w.hdrs[i].len)
			if n > len(b) || w.names[i].Pkttype == unix.PACKET_OTHERHOST || w.names[i].Pkttype == unix.PACKET_OUTGOING {
				continue
			}
			w.route = s.route(w.route[:0], b, n)
			if len(w.route) == 0 {
				continue
			}
			if Command(b[19]) == CmdConfig {
				s.refreshMTU() // vblade reads the MTU for every Query Config
				e = s.env.Load()
			}
			if len(w.route) == 1 {
				w.handle(i, n, w.route[0], e)
				continue
			}
			// A broadcast reaching several targets: one response each,
			// sent before the next frame so the extra buffers can be reused.
			w.commit()
			for j, t := range w.route {
				if j >= len(w.extra) {
					w.extra = append(w.extra, make([]byte, s.frameLen))
				}
				x := w.extra[j]
				copy(x, b[:n])
				if o := t.handle(x, n, e); o.n > 0 {
					w.queue(x[:o.n], t, o.flush)
				}
			}
			w.commit()
		}
		w.commit()
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}
