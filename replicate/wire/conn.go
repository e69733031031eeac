package wire

import (
	"bufio"
	"io"
)

// Conn reads and writes frames on a stream. It is not safe for concurrent
// use by several readers or several writers; one reader and one writer may
// run concurrently.
type Conn struct {
	r    *bufio.Reader
	w    *bufio.Writer
	rbuf []byte
	wbuf []byte
	// Max bounds the body of a received frame; 0 means MaxHandshakeFrame
	// (raise it to MaxFrame once the peer is authenticated).
	Max int
}

// NewConn wraps rw.
func NewConn(rw io.ReadWriter) *Conn {
	return &Conn{r: bufio.NewReaderSize(rw, 256<<10), w: bufio.NewWriterSize(rw, 256<<10)}
}

// Send encodes m into the write buffer; call Flush to send it.
func (c *Conn) Send(m Message) error {
	c.wbuf = AppendFrame(c.wbuf[:0], m)
	_, err := c.w.Write(c.wbuf)
	if cap(c.wbuf) > 1<<20 {
		c.wbuf = nil
	}
	return err
}

// Flush writes buffered frames to the stream.
func (c *Conn) Flush() error { return c.w.Flush() }

// SendFlush sends m and flushes.
func (c *Conn) SendFlush(m Message) error {
	if err := c.Send(m); err != nil {
		return err
	}
	return c.Flush()
}

// Buffered reports whether a received frame (or part of one) is waiting.
func (c *Conn) Buffered() bool { return c.r.Buffered() > 0 }

// Recv reads and decodes the next frame. Byte slices of the message alias
// the connection's read buffer and are valid only until the next Recv. The
// length is checked against Max before anything is allocated.
func (c *Conn) Recv() (Message, error) {
	max := c.Max
	if max == 0 {
		max = MaxHandshakeFrame
	}
	var h [HeaderSize]byte
	if _, err := io.ReadFull(c.r, h[:]); err != nil {
		return nil, err
	}
	t, n, err := ParseHeader(h[:], max)
	if err != nil {
		return nil, err
	}
	if cap(c.rbuf) < n {
		c.rbuf = make([]byte, n)
	}
	body := c.rbuf[:n]
	if _, err := io.ReadFull(c.r, body); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	m, err := Decode(t, body)
	if cap(c.rbuf) > 8<<20 && n <= 1<<20 {
		// Do not keep a huge buffer after a huge record.
		c.rbuf = nil
	}
	return m, err
}
