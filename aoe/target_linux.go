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

// Server serves the targets of one network interface with one raw socket.
// Targets can be added and removed while it serves (AddTarget,
// RemoveTarget) without disturbing the others.
type Server struct {
	*core
	// AnnounceAt is when a target is announced after it starts being
	// served (at Serve, or by AddTarget while serving), counted from then;
	// nil means DefaultAnnounceAt, an empty slice no announcements. Serve
	// and AddTarget read it: change it only while neither runs.
	AnnounceAt []time.Duration
	// QdiscBypass sends responses straight to the driver, past the
	// interface's queueing discipline (PACKET_QDISC_BYPASS): less work
	// per frame on NICs with a qdisc, but taps such as tcpdump no longer
	// see the responses. Serve reads it.
	QdiscBypass bool

	ifi  *net.Interface
	conn *packet.Conn
	raw  syscall.RawConn
	// ring is the receive ring (ring_linux.go); nil: recvmmsg. Unmapped
	// once no worker runs (releaseRing).
	ring *rxRing
	// tx is the transmit ring (txring_linux.go); nil: sendmmsg (also on
	// veth and tun interfaces, where the ring costs more). Closed
	// by Close, after which it takes nothing.
	tx *txRing

	// tmu serialises AddTarget, RemoveTarget and the write stage's start
	// and stop, and guards the fields up to mu. Receiving workers,
	// writers and committers never take it.
	tmu     sync.Mutex
	workers int         // receiving workers (started while serving)
	frames  int         // frame buffers of the write stage, one writer each
	rcvbuf  int         // socket buffer size set
	stages  bool        // the write stage runs (Serve is serving)
	pool    chan *frame // free frames
	slowq   chan *frame // frames for the writers
	writers sync.WaitGroup
	// announcers are the goroutines of scheduled announcements.
	announcers sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	serving bool
	done    chan struct{}
	wg      sync.WaitGroup // receiving workers and the MTU ticker
	errc    chan error     // the first receiving error
}

// NewServer opens a raw AoE socket on iface (which needs CAP_NET_RAW) for
// the given targets (none is fine: AddTarget adds them). Call Serve to
// answer requests and Close to release the socket. A nil logger logs to
// slog.Default().
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
	s := &Server{core: c, ifi: ifi, conn: conn, done: make(chan struct{}), errc: make(chan error, 1)}
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
	if rxRingSlots > 0 {
		var rerr error
		if err := s.raw.Control(func(fd uintptr) { s.ring, rerr = newRxRing(int(fd), c.frameLen, rxRingSlots) }); err != nil {
			rerr = err
		}
		if rerr != nil {
			c.log.Info("AoE receive ring not available; receiving with recvmmsg", "interface", iface, "err", rerr)
		}
	}
	copies := false
	if txRingSlots > 0 && !txRingAnyDriver {
		_ = s.raw.Control(func(fd uintptr) { copies = copiesRingFrames(int(fd), iface) })
	}
	if txRingSlots > 0 && !copies {
		if s.tx, err = newTxRing(ifi.Index, c.frameLen, txRingSlots); err != nil {
			c.log.Info("AoE transmit ring not available; sending with sendmmsg", "interface", iface, "err", err)
		}
	}
	c.setEnv(mac, mtu)
	s.size(c.list())
	for _, t := range c.list() {
		s.logReady(t)
	}
	return s, nil
}

// sizes returns how many receiving workers and write-stage frames serve
// targets that advertise bufs buffers in all. Receiving workers: enough
// buffers for every advertised frame, twice over. Workers hand frames that
// wait for a sync to the write stage, whose frames (and writer goroutines)
// also cover every advertised frame twice over (retransmits, several
// initiators), within a fixed bound so memory stays bounded whatever the
// bufcnt.
func sizes(bufs int) (workers, frames int) {
	return min(max(4, 2*bufs/batchLen), 64), min(max(2*bufs, 64), maxFrames)
}

// size grows the receiving workers, the write stage and the socket buffers
// to what targets need (they never shrink). While serving it starts the
// workers and writers added. Call with s.tmu held.
func (s *Server) size(targets []*target) {
	bufs := 0
	for _, t := range targets {
		bufs += int(t.bufcnt)
	}
	workers, frames := sizes(bufs)
	if frames > s.frames {
		if s.stages {
			for range frames - s.frames {
				s.addFrame()
			}
		}
		s.frames = frames
	}
	if workers > s.workers {
		if s.stages {
			for range workers - s.workers {
				s.startWorker()
			}
		}
		s.workers = workers
	}
	if rcvbuf := min(bufs*s.frameLen*2, 64<<20); rcvbuf > s.rcvbuf {
		s.rcvbuf = rcvbuf
		_ = s.raw.Control(func(fd uintptr) {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf) != nil {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf)
			}
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, rcvbuf)
		})
	}
}

func (s *Server) logReady(t *target) {
	mode := "durable writes (acknowledged after flush)"
	if t.cfg.WriteCache {
		mode = "write cache (writes acknowledged before flush)"
	}
	if t.cfg.ReadOnly {
		mode = "read-only"
	}
	e := s.env.Load()
	t.log.Info("AoE target ready", "mac", e.mac.String(), "mtu", e.mtu,
		"sectors_per_frame", e.maxSector, "bufcnt", t.bufcnt, "mode", mode)
}

// AddTarget starts serving the target tc; the other targets are not
// disturbed. While the Server serves, the target is announced at once and
// then as AnnounceAt says. It fails when the shelf.slot is served already,
// when tc is invalid, or after Close.
func (s *Server) AddTarget(tc TargetConfig) error {
	s.tmu.Lock()
	defer s.tmu.Unlock()
	if s.isClosed() {
		return errClosed
	}
	ts := s.set.Load()
	t, err := s.newTarget(ts, tc)
	if err != nil {
		return err
	}
	ts = ts.with(t)
	s.size(ts.list)
	if s.stages {
		s.startCommitter(t)
	}
	s.set.Store(ts)
	s.logReady(t)
	if s.stages {
		s.scheduleAnnounce(t)
	}
	return nil
}

// RemoveTarget stops serving eSHELF.SLOT at once and returns its final
// state (config string, Mac Mask list, reserve list). From the moment it is
// called the target answers nothing new: frames that arrive for it are
// dropped unanswered, like frames for any shelf.slot not served here (an
// initiator retransmits them, to whichever MAC serves the shelf.slot by
// then), and no more announcements leave. Requests it had already received
// are executed and answered before RemoveTarget returns, so the caller
// knows that the device sees no more I/O from this target (a handover
// seals the log next). If ctx ends first, RemoveTarget returns ctx's error
// and those requests finish in the background. The other targets are not
// disturbed.
func (s *Server) RemoveTarget(ctx context.Context, shelf uint16, slot uint8) (State, error) {
	s.tmu.Lock()
	defer s.tmu.Unlock()
	ts := s.set.Load()
	t := ts.byAddr[addrKey(shelf, slot)]
	if t == nil {
		return State{}, fmt.Errorf("AoE target e%d.%d is not served on %s", shelf, slot, s.iface)
	}
	s.set.Store(ts.without(t))
	t.mu.Lock()
	t.withdrawn = true
	t.mu.Unlock()
	if t.stopAnnounce != nil {
		close(t.stopAnnounce)
		t.stopAnnounce = nil
	}
	idle := t.gate.close()
	// The committer may still send responses of frames inside the gate;
	// it stops once they are out.
	com := t.com
	finish := func() {
		if com != nil {
			com.stop()
		}
	}
	select {
	case <-idle:
		finish()
	case <-ctx.Done():
		go func() {
			<-idle
			finish()
		}()
		return t.state.Load().export(), fmt.Errorf("AoE target e%d.%d on %s: requests in flight not answered yet: %w", shelf, slot, s.iface, ctx.Err())
	}
	t.log.Info("AoE target withdrawn")
	return t.state.Load().export(), nil
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
// the socket and returns nil. Each target is announced at once and then as
// AnnounceAt says. It returns an error if the socket fails or Serve was
// already called.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	if s.closed || s.serving {
		s.mu.Unlock()
		return fmt.Errorf("AoE server on %s: Serve called twice or after Close", s.iface)
	}
	s.serving = true
	s.mu.Unlock()
	if s.QdiscBypass {
		if err := s.setQdiscBypass(); err != nil {
			s.log.Warn("AoE: responses go through the queueing discipline", "interface", s.iface, "err", err)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.tmu.Lock()
	s.startStages()
	for range s.workers {
		s.startWorker()
	}
	for _, t := range s.list() {
		s.scheduleAnnounce(t)
	}
	s.tmu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-s.done:
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
	case err = <-s.errc:
	}
	cancel()
	s.Close()
	s.wg.Wait()
	s.releaseRing()
	s.tmu.Lock()
	s.stopStages() // frames in flight are finished (their responses are not sent)
	s.tmu.Unlock()
	s.announcers.Wait()
	return err
}

// startWorker starts one receiving worker unless the Server is closed.
func (s *Server) startWorker() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	w := newWorker(s)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := w.run(); err != nil {
			select {
			case s.errc <- err:
			default:
			}
		}
	}()
}

// scheduleAnnounce announces t as s.AnnounceAt says, until t is removed or
// the Server closed. Call with s.tmu held.
func (s *Server) scheduleAnnounce(t *target) {
	at := s.AnnounceAt
	if at == nil {
		at = DefaultAnnounceAt
	}
	if len(at) == 0 {
		return
	}
	stop := make(chan struct{})
	t.stopAnnounce = stop
	s.announcers.Add(1)
	go func() {
		defer s.announcers.Done()
		start := time.Now()
		timer := time.NewTimer(time.Until(start.Add(at[0])))
		defer timer.Stop()
		b := make([]byte, HeaderLen+ConfigArgLen+MaxConfigLen)
		for i := range at {
			if i > 0 {
				timer.Reset(time.Until(start.Add(at[i])))
			}
			select {
			case <-stop:
				return
			case <-s.done:
				return
			case <-timer.C:
			}
			if err := s.announceTarget(t, b); err != nil {
				s.log.Warn("AoE announce failed", "target", t.name, "err", err)
			}
		}
	}()
}

// Announce broadcasts an unsolicited Query Config response for every target
// (to each MAC of a non-empty Mac Mask list instead, like vblade), so
// initiators learn the target's MAC at once, e.g. after a failover.
func (s *Server) Announce() error {
	if s.isClosed() {
		return errClosed
	}
	b := make([]byte, HeaderLen+ConfigArgLen+MaxConfigLen)
	var errs []error
	for _, t := range s.list() {
		errs = append(errs, s.announceTarget(t, b))
	}
	return errors.Join(errs...)
}

// announceTarget sends t's announcements, using b as the frame buffer;
// nothing once t was removed.
func (s *Server) announceTarget(t *target, b []byte) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.withdrawn {
		return nil
	}
	e := s.env.Load()
	var errs []error
	for _, dst := range t.announceDsts() {
		n := t.announce(b, e, dst)
		if _, err := s.conn.WriteTo(b[:n], &packet.Addr{HardwareAddr: dst[:]}); err != nil {
			errs = append(errs, fmt.Errorf("announce %s on %s: %w", t.name, s.iface, err))
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
	err := s.conn.Close()
	if s.tx != nil {
		_ = s.tx.close()
	}
	if !s.serving {
		s.releaseRingLocked()
	}
	return err
}

// releaseRing unmaps the receive ring once no worker runs.
func (s *Server) releaseRing() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.releaseRingLocked()
}

func (s *Server) releaseRingLocked() {
	if s.ring != nil {
		_ = s.ring.close()
		s.ring = nil
	}
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
	q     chan *frame // holds every frame there can be (maxFrames)
	batch []*frame
	snd   *sender
	once  sync.Once
	done  chan struct{}
}

// startStages creates the frame pool, the writers and a committer per
// target. Call with s.tmu held.
func (s *Server) startStages() {
	s.pool = make(chan *frame, maxFrames)
	s.slowq = make(chan *frame, maxFrames)
	s.stages = true
	for range s.frames {
		s.addFrame()
	}
	for _, t := range s.list() {
		s.startCommitter(t)
	}
}

// addFrame adds a frame to the pool and a writer. Call with s.tmu held
// while the stages run.
func (s *Server) addFrame() {
	s.pool <- &frame{buf: make([]byte, s.frameLen)}
	s.writers.Add(1)
	go func() {
		defer s.writers.Done()
		s.write()
	}()
}

// startCommitter starts t's committer. Call with s.tmu held while the
// stages run.
func (s *Server) startCommitter(t *target) {
	c := &committer{s: s, t: t, q: make(chan *frame, maxFrames),
		batch: make([]*frame, 0, maxFrames), snd: newSender(s, maxFrames), done: make(chan struct{})}
	t.com = c
	go func() {
		defer close(c.done)
		c.run()
	}()
}

// stop ends the committer once it has sent what is queued; no frame may be
// queued afterwards.
func (c *committer) stop() {
	c.once.Do(func() { close(c.q) })
	<-c.done
}

// stopStages stops the writers and the committers once no worker runs any
// more. Call with s.tmu held.
func (s *Server) stopStages() {
	if !s.stages {
		return
	}
	s.stages = false
	close(s.slowq)
	s.writers.Wait()
	for _, t := range s.list() {
		if t.com != nil {
			t.com.stop()
		}
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
		f.t.com.q <- f // never blocks: the queue holds every frame
	}
}

// release lets f's frame out of its target's gate and returns f to the
// pool.
func (s *Server) release(f *frame) {
	if f.t != nil {
		f.t.gate.leave()
	}
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

// sender queues responses and sends them through the transmit ring, or
// with sendmmsg what the ring does not take.
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

// add queues b and returns its index. The queue grows when full (only a
// broadcast reaching more targets than a batch holds fills it).
func (q *sender) add(b []byte) int {
	i := q.n
	if i == len(q.out) {
		q.out = append(q.out, make([]mmsghdr, len(q.out)+1)...)
		q.iov = append(q.iov, make([]unix.Iovec, len(q.iov)+1)...)
		for j := range q.out {
			q.out[j].hdr.Iov = &q.iov[j]
			q.out[j].hdr.SetIovlen(1)
		}
	}
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
	if tx := q.s.tx; tx != nil {
		q.sent, q.errno = tx.send(q.iov[:q.n])
	}
	if q.sent < q.n {
		if err := q.s.raw.Write(q.fn); err != nil {
			q.s.log.Debug("AoE send failed", "err", err)
		}
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
	held  []*target // targets whose frames wait in snd (their gates to leave)
	fixup []int     // indexes into snd of responses that wait on a flush
	fixT  []*target
	extra [][]byte // buffers for broadcast fan-out
	route []*target

	nrecv  int
	errno  syscall.Errno
	spin   bool // doRead polls the empty ring for a while before waiting
	readFn func(fd uintptr) bool
}

func newWorker(s *Server) *worker {
	w := &worker{s: s,
		bufs:  make([][]byte, batchLen),
		iovs:  make([]unix.Iovec, batchLen),
		names: make([]unix.RawSockaddrLinklayer, batchLen),
		hdrs:  make([]mmsghdr, batchLen),
		snd:   newSender(s, batchLen),
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

// doRead takes the frames waiting in the receive ring, or without a ring
// runs recvmmsg on the non-blocking socket; false asks the runtime poller
// to wait for the socket to become readable.
func (w *worker) doRead(fd uintptr) bool {
	if r := w.s.ring; r != nil {
		w.nrecv, w.errno = r.recv(w.bufs, w.hdrs, w.names), 0
		if w.nrecv == 0 && w.spin {
			w.spin = false
			w.nrecv = r.poll(w.bufs, w.hdrs, w.names, ringSpin)
		}
		return w.nrecv > 0
	}
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

// queue queues the response b of t's frame; its gate is left once sent.
func (w *worker) queue(b []byte, t *target, flush bool) {
	i := w.snd.add(b)
	w.held = append(w.held, t)
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
	for i, t := range w.held {
		t.gate.leave()
		w.held[i] = nil
	}
	w.held = w.held[:0]
}

// handle answers the frame w.bufs[i] (n bytes) addressed to t alone, which
// admitted it through its gate: the frame leaves the gate with its response
// (or at once when it gets none).
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
		t.gate.leave()
		return
	}
	if o.flush {
		// Written to the page cache: the committer flushes it together
		// with every other write that arrives meanwhile.
		if f := w.handoff(i); f != nil {
			f.t, f.n, f.flush = t, o.n, true
			t.com.q <- f // never blocks: the queue holds every frame
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
				} else {
					t.gate.leave()
				}
			}
			w.commit()
		}
		w.commit()
		// A batch of one frame: a latency-bound initiator, whose next
		// request is worth polling for (larger batches mean requests
		// queue up anyway, and waiting lets the next batch fill).
		w.spin = w.nrecv == 1
	}
}

// setQdiscBypass sets PACKET_QDISC_BYPASS on the sockets that send
// responses.
func (s *Server) setQdiscBypass() error {
	var err error
	if cerr := s.raw.Control(func(fd uintptr) { err = qdiscBypass(int(fd)) }); cerr != nil {
		return cerr
	}
	if err == nil && s.tx != nil {
		err = qdiscBypass(s.tx.fd)
	}
	if err != nil {
		return fmt.Errorf("PACKET_QDISC_BYPASS: %w", err)
	}
	return nil
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}
