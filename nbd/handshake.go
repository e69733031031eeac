package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// errAbort ends a handshake that the client ended (NBD_OPT_ABORT) or that
// cannot continue; the connection is closed without logging an error.
var errAbort = errors.New("nbd: client ended the handshake")

// transmissionFlags returns the flags advertised for e.
func transmissionFlags(e Export) uint16 {
	f := uint16(flagHasFlags | flagSendFlush | flagCanMultiConn)
	if e.ReadOnly {
		f |= flagReadOnly
	} else {
		f |= flagSendFUA | flagSendTrim | flagSendWriteZeroes
	}
	return f
}

// handshake runs the fixed newstyle negotiation. It returns nil once an
// export is chosen (c.exp is set and the transmission phase begins), errAbort
// when the client ended the session, or another error for a broken or
// hostile client.
func (c *conn) handshake() error {
	b := c.scratch[:0]
	b = binary.BigEndian.AppendUint64(b, magicInit)
	b = binary.BigEndian.AppendUint64(b, magicOpt)
	b = binary.BigEndian.AppendUint16(b, flagFixedNewstyle|flagNoZeroes)
	if _, err := c.w.Write(b); err != nil {
		return fmt.Errorf("send greeting: %w", err)
	}
	var hdr [optionHeaderLen]byte
	if _, err := io.ReadFull(c.br, hdr[:4]); err != nil {
		return fmt.Errorf("read client flags: %w", err)
	}
	cflags := binary.BigEndian.Uint32(hdr[:4])
	if cflags&^(flagCFixedNewstyle|flagCNoZeroes) != 0 {
		return fmt.Errorf("client sent unknown handshake flags %#x; it does not speak this protocol", cflags)
	}
	c.noZeroes = cflags&flagCNoZeroes != 0

	for range maxOptions {
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			return fmt.Errorf("read option: %w", err)
		}
		var oh optionHeader
		if err := oh.unmarshal(hdr[:]); err != nil {
			return fmt.Errorf("read option: %w", err)
		}
		if oh.length > maxOptionLen {
			if _, err := io.CopyN(io.Discard, c.br, int64(oh.length)); err != nil {
				return fmt.Errorf("skip oversized option %d: %w", oh.option, err)
			}
			if oh.option == optExportName {
				return fmt.Errorf("export name of %d bytes is too long", oh.length)
			}
			if err := c.optReply(oh.option, repErrTooBig, "option data too long"); err != nil {
				return err
			}
			continue
		}
		data := c.optData(int(oh.length))
		if _, err := io.ReadFull(c.br, data); err != nil {
			return fmt.Errorf("read option %d data: %w", oh.option, err)
		}
		done, err := c.option(oh.option, data)
		if err != nil || done {
			return err
		}
	}
	return fmt.Errorf("client sent more than %d options without choosing an export", maxOptions)
}

// optData returns a buffer of n bytes for option data, reusing the
// connection's scratch space when it is large enough.
func (c *conn) optData(n int) []byte {
	if n <= cap(c.optBuf) {
		return c.optBuf[:n]
	}
	c.optBuf = make([]byte, n) // n <= maxOptionLen
	return c.optBuf
}

// option handles one option. done reports that the transmission phase
// begins.
func (c *conn) option(opt uint32, data []byte) (done bool, err error) {
	if r := c.tlsRefusal(opt); r.typ != 0 {
		if opt == optExportName {
			return false, fmt.Errorf("plain client asked for export %q on a TLS-only server (NBD_OPT_EXPORT_NAME cannot be refused politely); it needs a TLS client", data)
		}
		return false, c.optReply(opt, r.typ, r.msg)
	}
	switch opt {
	case optExportName:
		e, r, ok := c.srv.pick(c, string(data))
		if !ok {
			return false, fmt.Errorf("client asked for unknown export %q (NBD_OPT_EXPORT_NAME cannot be refused politely)", data)
		}
		if r.typ != 0 {
			return false, fmt.Errorf("client asked for export %q, refused (NBD_OPT_EXPORT_NAME cannot be refused politely): %s", data, r.msg)
		}
		c.choose(e)
		b := binary.BigEndian.AppendUint64(c.scratch[:0], uint64(c.size))
		b = binary.BigEndian.AppendUint16(b, c.flags)
		if !c.noZeroes {
			b = append(b, make([]byte, 124)...)
		}
		if _, err := c.w.Write(b); err != nil {
			return false, fmt.Errorf("send export info: %w", err)
		}
		return true, nil

	case optStartTLS:
		return false, c.startTLS(data)

	case optAbort:
		c.optReply(opt, repAck, "") // the client may already be gone
		return false, errAbort

	case optList:
		if len(data) != 0 {
			return false, c.optReply(opt, repErrInvalid, "NBD_OPT_LIST takes no data")
		}
		b := c.scratch[:0]
		var d []byte
		for _, e := range c.srv.exportList() {
			if !c.listed(e) {
				continue
			}
			d = appendServerReply(d[:0], e.Name, e.Description)
			b = appendOptionReply(b, opt, repServer, d)
		}
		b = appendOptionReply(b, opt, repAck, nil)
		c.scratch = b[:0]
		_, err := c.w.Write(b)
		return false, err

	case optStructuredReply:
		if len(data) != 0 {
			return false, c.optReply(opt, repErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data")
		}
		c.structured = true
		return false, c.optReply(opt, repAck, "")

	case optListMetaContext, optSetMetaContext:
		return false, c.metaContext(opt, data)

	case optInfo, optGo:
		req, err := parseInfoRequest(data)
		if err != nil {
			return false, c.optReply(opt, repErrInvalid, err.Error())
		}
		var e Export
		var r refusal
		var ok bool
		if opt == optGo {
			e, r, ok = c.srv.pick(c, req.name)
		} else if e, ok = c.srv.lookup(req.name); ok {
			r = c.exportRefusal(e)
		}
		if !ok {
			return false, c.optReply(opt, repErrUnknown,
				fmt.Sprintf("no export named %q; list them with nbdinfo --list", req.name))
		}
		if r.typ != 0 {
			return false, c.optReply(opt, r.typ, r.msg)
		}
		flags := transmissionFlags(e)
		size := e.Device.Size()
		b := c.scratch[:0]
		var d []byte
		d = appendInfoExport(d, uint64(size), flags)
		b = appendOptionReply(b, opt, repInfo, d)
		for _, t := range req.infos {
			switch t {
			case infoName:
				d = appendInfoString(d[:0], infoName, e.Name)
				b = appendOptionReply(b, opt, repInfo, d)
			case infoDescription:
				if e.Description != "" {
					d = appendInfoString(d[:0], infoDescription, e.Description)
					b = appendOptionReply(b, opt, repInfo, d)
				}
			}
		}
		d = appendInfoBlockSize(d[:0], 1, 4096, c.maxPayload)
		b = appendOptionReply(b, opt, repInfo, d)
		b = appendOptionReply(b, opt, repAck, nil)
		c.scratch = b[:0]
		if _, err := c.w.Write(b); err != nil {
			return false, fmt.Errorf("send export info: %w", err)
		}
		if opt == optGo {
			c.choose(e)
			return true, nil
		}
		return false, nil

	default:
		return false, c.optReply(opt, repErrUnsup, fmt.Sprintf("option %d is not supported", opt))
	}
}

// choose selects e for the transmission phase. The metadata context set
// for another export is dropped.
func (c *conn) choose(e Export) {
	c.exp = e
	c.size = e.Device.Size()
	c.flags = transmissionFlags(e)
	c.blockStatus = c.metaSet && c.metaExport == e.Name
}

// metaContext answers NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT. The only context is base:allocation, offered
// on every export (a device that cannot tell reports all data). LIST works
// at any time; SET needs structured replies first, as the spec says, and
// replaces the earlier selection (a failed SET leaves none).
func (c *conn) metaContext(opt uint32, data []byte) error {
	list := opt == optListMetaContext
	if !list {
		c.metaSet, c.metaExport = false, ""
		if !c.structured {
			return c.optReply(opt, repErrInvalid, "NBD_OPT_SET_META_CONTEXT needs NBD_OPT_STRUCTURED_REPLY first")
		}
	}
	req, err := parseMetaRequest(data)
	if err != nil {
		return c.optReply(opt, repErrInvalid, err.Error())
	}
	e, ok := c.srv.lookup(req.name)
	if !ok {
		return c.optReply(opt, repErrUnknown,
			fmt.Sprintf("no export named %q; list them with nbdinfo --list", req.name))
	}
	if r := c.exportRefusal(e); r.typ != 0 {
		return c.optReply(opt, r.typ, r.msg)
	}
	found := list && len(req.queries) == 0 // an empty LIST asks for all
	for _, q := range req.queries {
		found = found || selectsBaseAllocation(q, list)
	}
	b := c.scratch[:0]
	if found {
		var id uint32 // LIST replies carry 0
		if !list {
			id = metaBaseAllocationID
			c.metaSet, c.metaExport = true, e.Name
		}
		b = appendOptionReply(b, opt, repMeta, appendMetaContext(nil, id, metaBaseAllocation))
	}
	b = appendOptionReply(b, opt, repAck, nil)
	c.scratch = b[:0]
	if _, err := c.w.Write(b); err != nil {
		return fmt.Errorf("send metadata contexts: %w", err)
	}
	return nil
}

// optReply sends one option reply; for an error type msg is its text.
func (c *conn) optReply(opt, typ uint32, msg string) error {
	if len(msg) > maxStringLen {
		msg = msg[:maxStringLen]
	}
	b := binary.BigEndian.AppendUint64(c.scratch[:0], magicOptReply)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(msg)))
	b = append(b, msg...)
	c.scratch = b[:0]
	if _, err := c.w.Write(b); err != nil {
		return fmt.Errorf("send option reply: %w", err)
	}
	return nil
}
