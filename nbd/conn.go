package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tharsis/tharsis/blockdev"
	"github.com/tharsis/tharsis/internal/netlimit"
)

// conn is one client connection.
type conn struct {
	srv        *Server
	nc         net.Conn  // the TCP connection: deadlines and Close
	w          io.Writer // where the handshake writes: nc, or tc after STARTTLS
	log        *slog.Logger
	br         *bufio.Reader
	maxPayload uint32
	closing    atomic.Bool
	done       chan struct{} // closed when serve returns
	gate       *netlimit.Gate
	mem        *MemoryBudget
	ctx        context.Context // ends with beginShutdown or serve; bounds waits for mem
	cancel     context.CancelFunc
	rdl        time.Time // the read deadline last set by the reader
	reqTimeout time.Duration
	idle       time.Duration

	// Guarded by srv.mu: the name of the export the client chose, recorded
	// before the reply that commits the choice is sent (see Server.pick).
	picked  string
	hasPick bool

	scratch []byte // handshake replies
	optBuf  []byte // handshake option data

	// TLS, fixed when the connection is accepted; tc is set by STARTTLS.
	tlsConfig      *tls.Config
	tlsMode        connTLS
	tc             *tls.Conn
	tt             *tlsTransport // under tc
	clientVerified bool          // tc's client presented a certificate that verified

	// Chosen in the handshake.
	noZeroes   bool
	structured bool
	metaSet    bool   // base:allocation selected by NBD_OPT_SET_META_CONTEXT
	metaExport string // for this export
	exp        Export
	size       int64
	flags      uint16
	// blockStatus: the chosen export is the one base:allocation was
	// selected for, so BLOCK_STATUS is answered.
	blockStatus bool

	// Transmission.
	budget   *budget
	work     chan *op // to idle workers
	nworkers int      // workers started; only the reader touches it
	replies  chan *op
	workers  sync.WaitGroup
	bufs     net.Buffers // the writer's iovecs (a field, so WriteTo does not allocate)
	failed   atomic.Bool // the writer failed; replies are dropped
}

// op is one request on its way from the reader through a worker to the
// writer. ops are pooled.
type op struct {
	req   request
	buf   *[]byte // WRITE payload or READ data, from getBuf
	errno uint32
	msg   string    // error text for structured replies
	cost  int64     // budget held, of the connection and of srv.Memory
	start time.Time // when the request's header was read (Export.Stats)
}

var opPool = sync.Pool{New: func() any { return new(op) }}

func newConn(s *Server, nc net.Conn, gate *netlimit.Gate, mem *MemoryBudget) *conn {
	ctx, cancel := context.WithCancel(context.Background())
	tlsConfig, tlsMode := s.tlsState()
	return &conn{
		srv:        s,
		nc:         nc,
		w:          nc,
		tlsConfig:  tlsConfig,
		tlsMode:    tlsMode,
		log:        s.logger().With("remote", nc.RemoteAddr().String()),
		br:         bufio.NewReaderSize(nc, 64<<10),
		maxPayload: s.maxPayload(),
		scratch:    make([]byte, 0, 512),
		done:       make(chan struct{}),
		gate:       gate,
		mem:        mem,
		ctx:        ctx,
		cancel:     cancel,
		reqTimeout: s.requestTimeout(),
		idle:       s.IdleTimeout,
	}
}

// beginShutdown makes the connection stop reading requests (and stop
// waiting for memory to read one); requests already read are still
// answered.
func (c *conn) beginShutdown() {
	c.closing.Store(true)
	c.cancel()
	c.nc.SetReadDeadline(time.Now())
}

// serve runs the connection until the client disconnects, the server shuts
// down or the client breaks the protocol.
func (c *conn) serve() {
	defer c.srv.connWG.Done()
	defer close(c.done)
	defer c.srv.trackConn(c, false)
	defer c.gate.Leave()
	defer c.cancel()
	defer c.close()
	defer func() {
		if v := recover(); v != nil {
			c.log.Error("nbd: connection panicked; closing it", "panic", v, "stack", string(debug.Stack()))
		}
	}()

	c.nc.SetDeadline(time.Now().Add(c.srv.handshakeTimeout()))
	if err := c.handshake(); err != nil {
		if !errors.Is(err, errAbort) && !c.closing.Load() && !isClosed(err) {
			c.log.Info("nbd: handshake failed", "err", err)
		}
		return
	}
	c.nc.SetDeadline(time.Time{})
	if c.closing.Load() {
		c.nc.SetReadDeadline(time.Now())
	}
	c.log.Debug("nbd: client connected", "export", c.exp.Name, "structured", c.structured)
	c.transmit()
}

// close closes the connection; over TLS it first sends close_notify, as the
// spec asks (tls.Conn.Close bounds that write), unless sending failed.
func (c *conn) close() {
	if c.tc != nil && !c.failed.Load() {
		c.tc.Close()
		return
	}
	c.nc.Close()
}

// isClosed reports errors that only say the peer went away.
func isClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded)
}

// transmit runs the transmission phase: this goroutine reads requests, a
// goroutine per request does the I/O, and one writer goroutine sends the
// replies in batches.
func (c *conn) transmit() {
	c.budget = newBudget(c.srv.maxInflight(), maxInflightRequests)
	// Every op in flight holds a budget slot, so at most
	// maxInflightRequests replies are ever queued and senders never block.
	c.replies = make(chan *op, maxInflightRequests)
	c.work = make(chan *op)
	writerDone := make(chan struct{})
	go c.writer(writerDone)

	err := c.readLoop()
	if err != nil && !c.closing.Load() && !isClosed(err) {
		c.log.Info("nbd: closing connection", "err", err)
	}
	close(c.work)
	c.workers.Wait()
	close(c.replies)
	<-writerDone
}

// readLoop reads requests until DISC or an error. Between requests it waits
// up to c.idle (forever when 0); once a request has begun, its header and
// payload must arrive within c.reqTimeout, not counting the time spent
// waiting for budget.
func (c *conn) readLoop() error {
	var hdr [requestLen]byte
	for {
		start, err := c.awaitRequest()
		if err != nil {
			return err
		}
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			return c.readErr(err, "header")
		}
		o := opPool.Get().(*op)
		if c.exp.Stats != nil {
			o.start = time.Now()
		}
		if err := o.req.unmarshal(hdr[:]); err != nil {
			opPool.Put(o)
			return err
		}
		r := &o.req
		if r.typ == cmdDisc {
			opPool.Put(o)
			return nil
		}

		if r.typ == cmdWrite {
			if r.length > c.maxPayload {
				// Skip the payload to stay in sync; memory stays bounded.
				if err := c.setReadDeadline(start.Add(c.reqTimeout)); err != nil {
					opPool.Put(o)
					return err
				}
				if _, err := io.CopyN(io.Discard, c.br, int64(r.length)); err != nil {
					opPool.Put(o)
					return c.readErr(err, "payload")
				}
				c.fail(o, errOverflow, "write larger than the advertised maximum block size")
				continue
			}
			// Budget first: the buffer is allocated only once granted.
			waited, err := c.reserve(o, payloadCost(r.length))
			if err != nil {
				opPool.Put(o)
				return err
			}
			o.buf = getBuf(int(r.length))
			if c.br.Buffered() < len(*o.buf) {
				if err := c.setReadDeadline(start.Add(c.reqTimeout + waited)); err != nil {
					c.finish(o)
					return err
				}
			}
			if _, err := io.ReadFull(c.br, *o.buf); err != nil {
				c.finish(o)
				return c.readErr(err, "payload")
			}
		} else if r.typ == cmdRead && r.length <= c.maxPayload {
			if _, err := c.reserve(o, payloadCost(r.length)); err != nil {
				opPool.Put(o)
				return err
			}
		} else if r.typ == cmdBlockStatus {
			if _, err := c.reserve(o, payloadCost(maxBlockStatusExtents*descriptorLen)); err != nil {
				opPool.Put(o)
				return err
			}
		} else {
			c.budget.acquire(0)
		}

		if errno, msg := check(r, c.size, c.exp.ReadOnly, c.maxPayload, c.blockStatus); errno != 0 {
			o.errno, o.msg = errno, msg
			c.replies <- o
			continue
		}
		c.dispatch(o)
	}
}

// errClosing ends the reader when the connection is being shut down.
var errClosing = errors.New("nbd: connection shutting down")

// setReadDeadline sets the read deadline if it changes. It returns
// errClosing when beginShutdown ran, whose deadline must not be replaced.
func (c *conn) setReadDeadline(t time.Time) error {
	if !t.Equal(c.rdl) {
		c.rdl = t
		c.nc.SetReadDeadline(t)
	}
	if c.closing.Load() {
		return errClosing
	}
	return nil
}

// awaitRequest waits until the next request begins (or is already
// buffered) and returns when it began, with the read deadline set for the
// rest of it.
func (c *conn) awaitRequest() (time.Time, error) {
	if c.br.Buffered() >= requestLen {
		return time.Now(), nil // no read until the payload, which sets its own deadline
	}
	if c.br.Buffered() == 0 {
		var idle time.Time
		if c.idle > 0 {
			idle = time.Now().Add(c.idle)
		}
		if err := c.setReadDeadline(idle); err != nil {
			return time.Time{}, err
		}
		if _, err := c.br.Peek(1); err != nil {
			if c.idle > 0 && errors.Is(err, os.ErrDeadlineExceeded) && !c.closing.Load() {
				return time.Time{}, fmt.Errorf("no request for %v (idle timeout)", c.idle)
			}
			return time.Time{}, err
		}
	}
	start := time.Now()
	return start, c.setReadDeadline(start.Add(c.reqTimeout))
}

// readErr names a request timeout, which isClosed would hide.
func (c *conn) readErr(err error, part string) error {
	if errors.Is(err, os.ErrDeadlineExceeded) && !c.closing.Load() {
		return fmt.Errorf("request %s not received within %v of its first byte (request timeout)", part, c.reqTimeout)
	}
	return err
}

// reserve takes cost bytes of the connection's and the server's budgets
// for o, waiting while either is spent, and returns how long it waited. It
// fails only when the connection shuts down while waiting; then o holds
// nothing.
func (c *conn) reserve(o *op, cost int64) (time.Duration, error) {
	t0 := time.Now()
	c.budget.acquire(cost)
	if err := c.mem.acquire(c.ctx, cost); err != nil {
		c.budget.release(cost)
		return 0, err
	}
	o.cost = cost
	return time.Since(t0), nil
}

// dispatch hands o to an idle worker, or starts a new one. Workers live as
// long as the connection, so a steady stream of requests starts no
// goroutines; their number never exceeds maxInflightRequests, since every
// request in flight holds a budget slot.
func (c *conn) dispatch(o *op) {
	select {
	case c.work <- o:
		return
	default:
	}
	if c.nworkers < maxInflightRequests {
		c.nworkers++
		c.workers.Add(1)
		go c.worker(o)
		return
	}
	c.work <- o
}

// worker performs o and then every request it receives until the
// connection ends.
func (c *conn) worker(o *op) {
	defer c.workers.Done()
	c.perform(o)
	for o := range c.work {
		c.perform(o)
	}
}

// fail answers o with an error without holding budget for a payload.
func (c *conn) fail(o *op, errno uint32, msg string) {
	c.budget.acquire(0)
	o.errno, o.msg = errno, msg
	c.replies <- o
}

// check validates a request against the export before any I/O; meta says
// the connection selected base:allocation for it. It returns the error to
// answer with, or 0. It is pure.
func check(r *request, size int64, readOnly bool, maxPayload uint32, meta bool) (uint32, string) {
	var allowed uint16 = cmdFlagFUA
	switch r.typ {
	case cmdRead, cmdWrite, cmdTrim:
	case cmdWriteZeroes:
		allowed |= cmdFlagNoHole
	case cmdBlockStatus:
		if !meta {
			return errInval, "BLOCK_STATUS needs a metadata context: select base:allocation with NBD_OPT_SET_META_CONTEXT"
		}
		allowed |= cmdFlagReqOne
	case cmdFlush:
		if r.offset != 0 || r.length != 0 {
			return errInval, "FLUSH must have offset and length 0"
		}
	default:
		return errInval, fmt.Sprintf("command %s is not supported", r.typ)
	}
	if r.flags&^allowed != 0 {
		return errInval, fmt.Sprintf("flags %#x are not valid for %s", r.flags, r.typ)
	}
	if r.typ == cmdFlush {
		return 0, ""
	}
	write := r.typ != cmdRead && r.typ != cmdBlockStatus
	if write && readOnly {
		return errPerm, "export is read-only"
	}
	if (r.typ == cmdRead || r.typ == cmdWrite) && r.length > maxPayload {
		return errOverflow, "request larger than the advertised maximum block size"
	}
	if r.length == 0 {
		return errInval, "zero-length request"
	}
	if r.offset > uint64(size) || uint64(r.length) > uint64(size)-r.offset {
		if r.typ == cmdWrite || r.typ == cmdWriteZeroes {
			return errNoSpc, "request reaches past the end of the export"
		}
		return errInval, "request reaches past the end of the export"
	}
	return 0, ""
}

// perform executes one validated request and queues its reply. A panic in
// the device is answered with EIO.
func (c *conn) perform(o *op) {
	defer func() {
		if v := recover(); v != nil {
			c.log.Error("nbd: device panicked; answering EIO", "command", o.req.typ, "panic", v, "stack", string(debug.Stack()))
			if o.req.typ == cmdRead {
				putBuf(o.buf)
				o.buf = nil
			}
			o.errno, o.msg = errIO, "device failed"
			c.replies <- o
		}
	}()
	dev := c.exp.Device
	r := &o.req
	off := int64(r.offset)
	var err error
	switch r.typ {
	case cmdRead:
		o.buf = getBuf(int(r.length))
		var n int
		n, err = dev.ReadAt(*o.buf, off)
		if err != nil && n == len(*o.buf) && errors.Is(err, io.EOF) {
			err = nil
		}
		if err != nil {
			putBuf(o.buf)
			o.buf = nil
		}
	case cmdWrite:
		if r.flags&cmdFlagFUA != 0 {
			// The write and its durability in one: a replicated
			// resource joins the log's group commit at once.
			_, err = blockdev.WriteAtFUA(dev, *o.buf, off)
		} else {
			_, err = dev.WriteAt(*o.buf, off)
		}
		putBuf(o.buf)
		o.buf = nil
	case cmdFlush:
		err = dev.Flush()
	case cmdTrim:
		err = dev.Trim(off, int64(r.length))
	case cmdWriteZeroes:
		err = dev.WriteZeroes(off, int64(r.length))
	case cmdBlockStatus:
		o.buf, err = blockStatus(dev, off, int64(r.length), r.flags&cmdFlagReqOne != 0)
	}
	if err == nil && r.flags&cmdFlagFUA != 0 && (r.typ == cmdTrim || r.typ == cmdWriteZeroes) {
		err = dev.Flush()
	}
	if err != nil {
		o.errno, o.msg = errnoOf(err)
		c.log.Warn("nbd: device error", "command", r.typ, "offset", r.offset, "length", r.length, "err", err)
	}
	c.replies <- o
}

// extentPool holds the extent lists of BLOCK_STATUS requests.
var extentPool = sync.Pool{New: func() any {
	s := make([]blockdev.Extent, 0, maxBlockStatusExtents)
	return &s
}}

// blockStatus maps [off, off+length) of dev (a range check already
// passed) and returns the base:allocation descriptors in a buffer from
// getBuf: at most maxBlockStatusExtents of them, one with reqOne. They
// start at off and end at off+length at the latest.
func blockStatus(dev blockdev.Device, off, length int64, reqOne bool) (*[]byte, error) {
	limit := maxBlockStatusExtents
	if reqOne {
		limit = 1
	}
	es := extentPool.Get().(*[]blockdev.Extent)
	defer extentPool.Put(es)
	var err error
	*es, err = blockdev.Extents(dev, (*es)[:0], off, length, limit)
	if err != nil {
		return nil, err
	}
	buf := getBuf(descriptorLen * len(*es))
	b := (*buf)[:0]
	for _, e := range *es {
		var flags uint32
		if e.Hole {
			flags |= stateHole
		}
		if e.Zero {
			flags |= stateZero
		}
		b = appendDescriptor(b, uint32(e.Length), flags) // ≤ length, a u32
	}
	*buf = b
	return buf, nil
}

// errnoOf maps a device error to the NBD error value.
func errnoOf(err error) (uint32, string) {
	switch {
	case errors.Is(err, blockdev.ErrNoSpace):
		return errNoSpc, "no space left to store the write"
	case errors.Is(err, blockdev.ErrReadOnly):
		return errPerm, "device is read-only"
	case errors.Is(err, blockdev.ErrOutOfRange):
		return errInval, "request out of the device's range"
	default:
		return errIO, "I/O error on the server's device"
	}
}

// finish releases what o holds and returns it to the pool.
func (c *conn) finish(o *op) {
	putBuf(o.buf)
	c.budget.release(o.cost)
	if o.cost > 0 {
		c.mem.release(o.cost)
	}
	*o = op{}
	opPool.Put(o)
}

// Limits of one writer batch.
const (
	maxBatch = 128
)

// writer sends replies until c.replies is closed. It takes every reply
// that is ready and sends them with one writev, so a burst of replies costs
// one system call. After a write error it keeps draining (and releasing)
// replies without sending.
func (c *conn) writer(done chan<- struct{}) {
	defer close(done)
	arena := make([]byte, 0, maxBatch*maxReplyPrefixLen)
	iov := make([][]byte, 0, 2*maxBatch)
	batch := make([]*op, 0, maxBatch)
	// Over TLS every Write is at least one record, so small pieces are
	// gathered first and sealed together.
	var bw *bufio.Writer
	if c.tc != nil {
		bw = bufio.NewWriterSize(c.tc, tlsGather)
	}
	for o := range c.replies {
		batch = append(batch[:0], o)
	fill:
		for len(batch) < maxBatch {
			select {
			case o, ok := <-c.replies:
				if !ok {
					break fill
				}
				batch = append(batch, o)
			default:
				break fill
			}
		}
		c.record(batch)
		if !c.failed.Load() {
			arena, iov = arena[:0], iov[:0]
			arenaTail := false // the last iovec ends at the arena's end
			for _, o := range batch {
				start := len(arena)
				arena = c.appendReply(arena, o)
				if arenaTail {
					last := &iov[len(iov)-1]
					*last = arena[start-len(*last) : len(arena)]
				} else {
					iov = append(iov, arena[start:len(arena)])
				}
				arenaTail = true
				if o.errno == 0 && (o.req.typ == cmdRead || o.req.typ == cmdBlockStatus) {
					iov = append(iov, *o.buf)
					arenaTail = false
				}
			}
			c.bufs = iov
			c.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
			var err error
			if bw == nil {
				_, err = c.bufs.WriteTo(c.nc)
			} else {
				err = c.sendTLS(bw, iov)
			}
			if err != nil {
				c.failed.Store(true)
				if !isClosed(err) {
					c.log.Info("nbd: cannot send replies; closing connection", "err", err)
				}
				c.nc.Close() // unblocks the reader
			}
		}
		for _, o := range batch {
			c.finish(o)
		}
	}
}

// sendTLS seals iov in few records and sends them in few system calls:
// pieces shorter than a record (reply headers, short reads) are gathered in
// bw and sealed together, longer ones are sealed straight from their
// buffers, and c.tt holds the records until the batch is sealed.
func (c *conn) sendTLS(bw *bufio.Writer, iov [][]byte) error {
	c.tt.hold()
	err := sealAll(bw, c.tc, iov)
	if rerr := c.tt.release(); err == nil {
		err = rerr
	}
	return err
}

// sealAll writes iov to tc, the short pieces through bw, and flushes bw.
func sealAll(bw *bufio.Writer, tc io.Writer, iov [][]byte) error {
	for _, b := range iov {
		if len(b) < tlsMaxRecord {
			if _, err := bw.Write(b); err != nil {
				return err
			}
			continue
		}
		if err := bw.Flush(); err != nil {
			return err
		}
		if _, err := tc.Write(b); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// record counts the replies of batch in the export's Stats before they are
// sent, so a client that has its reply finds its request counted.
func (c *conn) record(batch []*op) {
	st := c.exp.Stats
	if st == nil {
		return
	}
	now := time.Now()
	for _, o := range batch {
		r := &o.req
		n := 0
		if o.errno == 0 && (r.typ == cmdRead || r.typ == cmdWrite) {
			n = int(r.length)
		}
		st.Record(opOf(r.typ), n, now.Sub(o.start), o.errno != 0)
	}
}

// opOf maps an NBD command to the Op it is counted as.
func opOf(t command) blockdev.Op {
	switch t {
	case cmdRead:
		return blockdev.OpRead
	case cmdWrite:
		return blockdev.OpWrite
	case cmdFlush:
		return blockdev.OpFlush
	case cmdTrim:
		return blockdev.OpTrim
	case cmdWriteZeroes:
		return blockdev.OpWriteZeroes
	}
	return blockdev.OpOther
}

// appendReply appends the reply header for o (not the read data).
func (c *conn) appendReply(b []byte, o *op) []byte {
	r := &o.req
	if !c.structured {
		return appendSimpleReply(b, o.errno, r.handle)
	}
	if o.errno != 0 {
		return appendErrorChunk(b, r.handle, o.errno, o.msg)
	}
	switch r.typ {
	case cmdRead:
		return appendReadChunkPrefix(b, r.handle, r.offset, r.length)
	case cmdBlockStatus:
		return appendBlockStatusPrefix(b, r.handle, metaBaseAllocationID, len(*o.buf)/descriptorLen)
	}
	return appendSimpleReply(b, 0, r.handle)
}
