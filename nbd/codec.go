package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Magic numbers and constants of the wire format. They are part of the
// protocol and must not change.
const (
	magicInit            = 0x4e42444d41474943 // "NBDMAGIC"
	magicOpt             = 0x49484156454f5054 // "IHAVEOPT"
	magicOptReply        = 0x0003e889045565a9
	magicRequest         = 0x25609513
	magicSimpleReply     = 0x67446698
	magicStructuredReply = 0x668e33ef
)

// Handshake flags (server) and client flags.
const (
	flagFixedNewstyle  = 1 << 0
	flagNoZeroes       = 1 << 1
	flagCFixedNewstyle = 1 << 0
	flagCNoZeroes      = 1 << 1
)

// Transmission flags.
const (
	flagHasFlags        = 1 << 0
	flagReadOnly        = 1 << 1
	flagSendFlush       = 1 << 2
	flagSendFUA         = 1 << 3
	flagRotational      = 1 << 4
	flagSendTrim        = 1 << 5
	flagSendWriteZeroes = 1 << 6
	flagSendDF          = 1 << 7
	flagCanMultiConn    = 1 << 8
)

// Options.
const (
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
	optListMetaContext = 9 // not 10 as in early drafts of the extension
	optSetMetaContext  = 10
)

// Option reply types.
const (
	repAck    = 1
	repServer = 2
	repInfo   = 3
	repMeta   = 4 // NBD_REP_META_CONTEXT

	repErrUnsup    = 1<<31 + 1
	repErrPolicy   = 1<<31 + 2
	repErrInvalid  = 1<<31 + 3
	repErrTLSReqd  = 1<<31 + 5
	repErrUnknown  = 1<<31 + 6
	repErrShutdown = 1<<31 + 7
	repErrTooBig   = 1<<31 + 9
)

// Info types of NBD_REP_INFO.
const (
	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3
)

// command is the type of a transmission request.
type command uint16

const (
	cmdRead        command = 0
	cmdWrite       command = 1
	cmdDisc        command = 2
	cmdFlush       command = 3
	cmdTrim        command = 4
	cmdCache       command = 5
	cmdWriteZeroes command = 6
	cmdBlockStatus command = 7
)

var commandNames = [...]string{"READ", "WRITE", "DISC", "FLUSH", "TRIM", "CACHE", "WRITE_ZEROES", "BLOCK_STATUS"}

func (c command) String() string {
	if int(c) < len(commandNames) {
		return commandNames[c]
	}
	return fmt.Sprintf("command(%d)", uint16(c))
}

// Command flags.
const (
	cmdFlagFUA    = 1 << 0
	cmdFlagNoHole = 1 << 1
	cmdFlagDF     = 1 << 2
	cmdFlagReqOne = 1 << 3
)

// Structured reply flags and types.
const (
	replyFlagDone        = 1 << 0
	replyTypeNone        = 0
	replyTypeOffsetData  = 1
	replyTypeBlockStatus = 5
	replyTypeError       = 1<<15 + 1
)

// The one metadata context the server knows: base:allocation, its ID in
// this server (any nonzero value would do; LIST replies carry 0), and the
// flags of its block status descriptors.
const (
	metaBaseAllocation   = "base:allocation"
	metaBaseNamespace    = "base:"
	metaBaseAllocationID = 1
	stateHole            = 1 << 0
	stateZero            = 1 << 1
)

// maxBlockStatusExtents bounds the descriptors of one BLOCK_STATUS reply
// (and the lseeks it costs); a longer map ends early, which the protocol
// allows, and the client asks again from where it ended.
const maxBlockStatusExtents = 2048

// Error values of replies.
const (
	errPerm     = 1
	errIO       = 5
	errNoMem    = 12
	errInval    = 22
	errNoSpc    = 28
	errOverflow = 75
	errShutdown = 108
)

// Sizes of the fixed headers.
const (
	requestLen         = 28 // magic, flags, type, handle, offset, length
	simpleReplyLen     = 16 // magic, error, handle
	chunkHeaderLen     = 20 // magic, flags, type, handle, length
	readChunkPrefixLen = chunkHeaderLen + 8
	optionHeaderLen    = 16 // magic, option, length
	optionReplyHeadLen = 20 // magic, option, type, length
	maxErrorMessageLen = 128
	maxStringLen       = 4096 // the spec's limit on export names and messages
	maxReplyPrefixLen  = chunkHeaderLen + 6 + maxErrorMessageLen
	blockStatusLen     = chunkHeaderLen + 4 // the chunk header and the context ID
	descriptorLen      = 8                  // length, status flags
)

// errBadMagic is returned by decoders when a header does not start with the
// magic number its position requires; the stream is out of sync.
var errBadMagic = errors.New("nbd: bad magic number (client out of sync)")

// request is a transmission-phase request header.
type request struct {
	flags  uint16
	typ    command
	handle uint64
	offset uint64
	length uint32
}

// unmarshal decodes a request header from b. It returns
// io.ErrUnexpectedEOF if b is shorter than a header and errBadMagic if the
// magic is wrong. It never panics and retains nothing of b.
func (r *request) unmarshal(b []byte) error {
	if len(b) < requestLen {
		return io.ErrUnexpectedEOF
	}
	if binary.BigEndian.Uint32(b[0:4]) != magicRequest {
		return errBadMagic
	}
	r.flags = binary.BigEndian.Uint16(b[4:6])
	r.typ = command(binary.BigEndian.Uint16(b[6:8]))
	r.handle = binary.BigEndian.Uint64(b[8:16])
	r.offset = binary.BigEndian.Uint64(b[16:24])
	r.length = binary.BigEndian.Uint32(b[24:28])
	return nil
}

// appendBinary appends the encoded request header (without payload) to b.
func (r *request) appendBinary(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, magicRequest)
	b = binary.BigEndian.AppendUint16(b, r.flags)
	b = binary.BigEndian.AppendUint16(b, uint16(r.typ))
	b = binary.BigEndian.AppendUint64(b, r.handle)
	b = binary.BigEndian.AppendUint64(b, r.offset)
	return binary.BigEndian.AppendUint32(b, r.length)
}

// appendSimpleReply appends a simple reply header.
func appendSimpleReply(b []byte, errno uint32, handle uint64) []byte {
	b = binary.BigEndian.AppendUint32(b, magicSimpleReply)
	b = binary.BigEndian.AppendUint32(b, errno)
	return binary.BigEndian.AppendUint64(b, handle)
}

// appendChunkHeader appends a structured reply chunk header.
func appendChunkHeader(b []byte, flags, typ uint16, handle uint64, length uint32) []byte {
	b = binary.BigEndian.AppendUint32(b, magicStructuredReply)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, handle)
	return binary.BigEndian.AppendUint32(b, length)
}

// appendReadChunkPrefix appends the header and offset of a final
// NBD_REPLY_TYPE_OFFSET_DATA chunk carrying n data bytes; the data follows.
func appendReadChunkPrefix(b []byte, handle, offset uint64, n uint32) []byte {
	b = appendChunkHeader(b, replyFlagDone, replyTypeOffsetData, handle, n+8)
	return binary.BigEndian.AppendUint64(b, offset)
}

// appendErrorChunk appends a final NBD_REPLY_TYPE_ERROR chunk with a message
// for humans, cut to maxErrorMessageLen bytes.
func appendErrorChunk(b []byte, handle uint64, errno uint32, msg string) []byte {
	if len(msg) > maxErrorMessageLen {
		msg = msg[:maxErrorMessageLen]
	}
	b = appendChunkHeader(b, replyFlagDone, replyTypeError, handle, uint32(6+len(msg)))
	b = binary.BigEndian.AppendUint32(b, errno)
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	return append(b, msg...)
}

// optionHeader is the header of a client option during the handshake.
type optionHeader struct {
	option uint32
	length uint32
}

// unmarshal decodes an option header. It returns io.ErrUnexpectedEOF for a
// short b and errBadMagic for a wrong magic.
func (h *optionHeader) unmarshal(b []byte) error {
	if len(b) < optionHeaderLen {
		return io.ErrUnexpectedEOF
	}
	if binary.BigEndian.Uint64(b[0:8]) != magicOpt {
		return errBadMagic
	}
	h.option = binary.BigEndian.Uint32(b[8:12])
	h.length = binary.BigEndian.Uint32(b[12:16])
	return nil
}

// appendBinary appends the encoded option header (without data) to b.
func (h *optionHeader) appendBinary(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, magicOpt)
	b = binary.BigEndian.AppendUint32(b, h.option)
	return binary.BigEndian.AppendUint32(b, h.length)
}

// appendOptionReply appends an option reply header followed by data.
func appendOptionReply(b []byte, option, typ uint32, data []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, magicOptReply)
	b = binary.BigEndian.AppendUint32(b, option)
	b = binary.BigEndian.AppendUint32(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// errInvalidOption is returned by parseInfoRequest for data that does not
// match the layout of NBD_OPT_INFO/NBD_OPT_GO.
var errInvalidOption = errors.New("nbd: malformed option data")

// infoRequest is the data of NBD_OPT_INFO and NBD_OPT_GO.
type infoRequest struct {
	name  string
	infos []uint16
}

// parseInfoRequest decodes the data of NBD_OPT_INFO or NBD_OPT_GO:
//
//	name length (u32) name[length] count (u16) info type (u16) × count
//
// It returns errInvalidOption (wrapped with the reason) when a length
// disagrees with len(data) or the name is longer than the spec allows. The
// returned value does not alias data.
func parseInfoRequest(data []byte) (infoRequest, error) {
	var r infoRequest
	if len(data) < 4 {
		return r, fmt.Errorf("%w: %d bytes, need at least 6", errInvalidOption, len(data))
	}
	n := binary.BigEndian.Uint32(data)
	rest := data[4:]
	if n > maxStringLen || uint64(n)+2 > uint64(len(rest)) {
		return r, fmt.Errorf("%w: export name length %d does not fit %d bytes of data", errInvalidOption, n, len(data))
	}
	r.name = string(rest[:n])
	rest = rest[n:]
	count := binary.BigEndian.Uint16(rest)
	rest = rest[2:]
	if len(rest) != 2*int(count) {
		return r, fmt.Errorf("%w: %d information requests announced, %d bytes follow", errInvalidOption, count, len(rest))
	}
	if count > 0 {
		r.infos = make([]uint16, count)
		for i := range r.infos {
			r.infos[i] = binary.BigEndian.Uint16(rest[2*i:])
		}
	}
	return r, nil
}

// appendInfoRequest encodes an infoRequest (the inverse of parseInfoRequest).
func appendInfoRequest(b []byte, r infoRequest) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(r.name)))
	b = append(b, r.name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.infos)))
	for _, t := range r.infos {
		b = binary.BigEndian.AppendUint16(b, t)
	}
	return b
}

// appendInfoExport appends the data of an NBD_INFO_EXPORT reply.
func appendInfoExport(b []byte, size uint64, flags uint16) []byte {
	b = binary.BigEndian.AppendUint16(b, infoExport)
	b = binary.BigEndian.AppendUint64(b, size)
	return binary.BigEndian.AppendUint16(b, flags)
}

// appendInfoString appends the data of an NBD_INFO_NAME or
// NBD_INFO_DESCRIPTION reply.
func appendInfoString(b []byte, typ uint16, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, typ)
	return append(b, s...)
}

// appendInfoBlockSize appends the data of an NBD_INFO_BLOCK_SIZE reply.
func appendInfoBlockSize(b []byte, minimum, preferred, maximum uint32) []byte {
	b = binary.BigEndian.AppendUint16(b, infoBlockSize)
	b = binary.BigEndian.AppendUint32(b, minimum)
	b = binary.BigEndian.AppendUint32(b, preferred)
	return binary.BigEndian.AppendUint32(b, maximum)
}

// appendServerReply appends the data of an NBD_REP_SERVER reply: the name,
// then the description for humans.
func appendServerReply(b []byte, name, description string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(name)))
	b = append(b, name...)
	return append(b, description...)
}

// metaRequest is the data of NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT.
type metaRequest struct {
	name    string
	queries []string
}

// parseMetaRequest decodes the data of NBD_OPT_LIST_META_CONTEXT or
// NBD_OPT_SET_META_CONTEXT:
//
//	name length (u32) name[length] count (u32) { query length (u32) query[length] } × count
//
// It returns errInvalidOption (wrapped with the reason) when a length
// disagrees with len(data) or a string is longer than the spec allows. It
// allocates nothing from a count before checking that the data holds it.
// The returned value does not alias data.
func parseMetaRequest(data []byte) (metaRequest, error) {
	var r metaRequest
	name, rest, err := parseString(data, "export name")
	if err != nil {
		return r, err
	}
	r.name = name
	if len(rest) < 4 {
		return r, fmt.Errorf("%w: no query count after the export name", errInvalidOption)
	}
	count := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	if uint64(count)*4 > uint64(len(rest)) {
		return r, fmt.Errorf("%w: %d queries announced, %d bytes follow", errInvalidOption, count, len(rest))
	}
	if count > 0 {
		r.queries = make([]string, 0, count)
	}
	for range count {
		var q string
		if q, rest, err = parseString(rest, "query"); err != nil {
			return r, err
		}
		r.queries = append(r.queries, q)
	}
	if len(rest) != 0 {
		return r, fmt.Errorf("%w: %d bytes after the last query", errInvalidOption, len(rest))
	}
	return r, nil
}

// parseString decodes a u32 length and that many bytes of string at the
// start of b and returns the string and what follows.
func parseString(b []byte, what string) (string, []byte, error) {
	if len(b) < 4 {
		return "", nil, fmt.Errorf("%w: %s length missing", errInvalidOption, what)
	}
	n := binary.BigEndian.Uint32(b)
	b = b[4:]
	if n > maxStringLen || uint64(n) > uint64(len(b)) {
		return "", nil, fmt.Errorf("%w: %s length %d does not fit %d bytes of data", errInvalidOption, what, n, len(b))
	}
	return string(b[:n]), b[n:], nil
}

// appendMetaRequest encodes a metaRequest (the inverse of parseMetaRequest).
func appendMetaRequest(b []byte, r metaRequest) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(r.name)))
	b = append(b, r.name...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(r.queries)))
	for _, q := range r.queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// appendMetaContext appends the data of an NBD_REP_META_CONTEXT reply.
func appendMetaContext(b []byte, id uint32, name string) []byte {
	b = binary.BigEndian.AppendUint32(b, id)
	return append(b, name...)
}

// selectsBaseAllocation reports whether query names base:allocation: by
// its name, or (list only) by its namespace "base:". Other namespaces, and
// "base:" in a SET, select nothing.
func selectsBaseAllocation(query string, list bool) bool {
	return query == metaBaseAllocation || list && query == metaBaseNamespace
}

// appendBlockStatusPrefix appends the header of a final
// NBD_REPLY_TYPE_BLOCK_STATUS chunk of n descriptors and the context ID;
// the descriptors follow.
func appendBlockStatusPrefix(b []byte, handle uint64, id uint32, n int) []byte {
	b = appendChunkHeader(b, replyFlagDone, replyTypeBlockStatus, handle, uint32(4+descriptorLen*n))
	return binary.BigEndian.AppendUint32(b, id)
}

// appendDescriptor appends one block status descriptor.
func appendDescriptor(b []byte, length, flags uint32) []byte {
	b = binary.BigEndian.AppendUint32(b, length)
	return binary.BigEndian.AppendUint32(b, flags)
}
