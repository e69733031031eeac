// Package wire is the codec of tharsis's replication protocol: the framed,
// versioned messages that nodes exchange over TCP on their replication
// addresses to authenticate each other, ask for status, ship the transaction
// log and run a fast full sync. It does no I/O beyond reading and writing
// frames on a stream (Conn) and is fuzzed.
//
// # Frames
//
// Every message travels in one frame: a 12-byte header followed by the body.
// Integers are little-endian. The layout is part of the protocol and must not
// change without bumping Version:
//
//	+0   magic    uint32  0x50524854 ("THRP" as bytes)
//	+4   length   uint32  body length, at most the reader's limit
//	+8   version  uint8   1
//	+9   type     uint8   Type of the message (1..18)
//	+10  flags    uint16  0 (reserved)
//	+12  body     length bytes, laid out per type (see each message)
//
// A reader checks the magic, the version and the length against its limit
// (MaxFrame, or MaxHandshakeFrame before authentication) before it allocates
// anything. Strings are a uint16 length and the bytes; a message's trailing
// bulk data (segment bytes, chunk bytes, status JSON) is the rest of the body.
//
// # Compression
//
// A fetcher says in Fetch which encodings of segment data it decodes
// (Accept); a server whose resource is configured to compress may then send
// CompressedData frames instead of SegmentData, each compressed on its own
// (zstd, stateless: every frame is self-contained). Accept is a trailing
// field that a node of an older release does not know (its decoder refuses
// a Fetch with it), so a fetcher sends it only to a server whose status
// lists FeatureFetchAccept; without Accept a server sends SegmentData only,
// which keeps fetchers of older releases working. The frame version stays 1.
//
// # Designations
//
// A fetcher also says in Fetch which designation of the resource it follows
// (primary and generation): a server that follows an older one refuses it
// (CodeStale; its log may be the losing side of a fork) and learns the newer
// one. It is a trailing field after Accept, sent only to a server whose
// status lists FeatureFetchDesignation, for the same reason as Accept.
//
// Nothing is encrypted: the log, chunks and status cross the network in the
// clear. Authentication (Hello, Challenge, Response) proves that both ends
// know the cluster secret, but does not protect the data from an observer or
// the stream from tampering after the handshake.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Constants of the frame format.
const (
	Magic      uint32 = 0x50524854
	Version           = 1
	HeaderSize        = 12
	// MaxFrame bounds the body of any frame after authentication: a log
	// record (64 MiB payload at most) plus room for the message fields.
	MaxFrame = 64<<20 + 64<<10
	// MaxHandshakeFrame bounds frames before the peer is authenticated.
	MaxHandshakeFrame = 4096
	// NonceSize and MACSize are the sizes of the handshake's nonces and
	// HMAC-SHA256 values.
	NonceSize = 32
	MACSize   = 32
	// SumSize is the size of one chunk checksum (SHA-256 truncated).
	SumSize = 16
	// MaxString bounds decoded strings.
	MaxString = 4096
)

// Errors of the decoders.
var (
	// ErrBadMagic: the stream does not carry this protocol (not a tharsis peer).
	ErrBadMagic = errors.New("not a tharsis replication stream (bad magic)")
	// ErrVersion: the peer speaks another version of the protocol.
	ErrVersion = errors.New("unsupported replication protocol version")
	// ErrTooLarge: a frame is longer than the reader accepts.
	ErrTooLarge = errors.New("replication frame too large")
	// ErrMalformed wraps every other decoding error.
	ErrMalformed = errors.New("malformed replication message")
)

// Type is the type of a message. The zero value is invalid.
type Type uint8

// Message types.
const (
	TypeHello           Type = 1  // client → server: who I am, my nonce
	TypeChallenge       Type = 2  // server → client: who I am, my nonce, my proof
	TypeResponse        Type = 3  // client → server: my proof
	TypeWelcome         Type = 4  // server → client: authenticated
	TypeError           Type = 5  // either way: a request failed (or the peer is refused)
	TypeStatusRequest   Type = 6  // client → server
	TypeStatus          Type = 7  // server → client: status JSON
	TypeFetch           Type = 8  // client → server: stream the log of a resource from a position
	TypeSegmentData     Type = 9  // server → client: whole records of one segment
	TypeHeartbeat       Type = 10 // server → client: the source's log end, while idle
	TypeChecksumRequest Type = 11 // client → server: checksums of a range of chunks
	TypeChecksums       Type = 12 // server → client
	TypeChunkRequest    Type = 13 // client → server: the bytes of one chunk
	TypeChunkData       Type = 14 // server → client
	TypeRole            Type = 15 // either way: a role message (JSON), answered by another (empty JSON: received)
	TypeEmergency       Type = 16 // either way: the chunks a primary wrote without its log (JSON request and answer)
	TypeCompressedData  Type = 17 // server → client: SegmentData with compressed data (only when the Fetch accepted it)
	TypeAck             Type = 18 // client → server on a fetch stream: the fetched log is durable here up to a position
	typeMax                  = 18
)

var typeNames = [...]string{"invalid", "hello", "challenge", "response", "welcome", "error", "status-request", "status",
	"fetch", "segment-data", "heartbeat", "checksum-request", "checksums", "chunk-request", "chunk-data", "role", "emergency", "compressed-data", "ack"}

// String returns the type's name.
func (t Type) String() string {
	if int(t) < len(typeNames) {
		return typeNames[t]
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Position is a place in a transaction log (see replicate.Position).
type Position struct {
	Segment uint64
	Offset  int64
	Seq     uint64
}

// Message is one protocol message.
type Message interface {
	// Type is the message's type.
	Type() Type
	// AppendBody appends the encoded body to b.
	AppendBody(b []byte) []byte
	// decode decodes the body; slices may alias body.
	decode(body []byte) error
}

// Hello opens a connection: the client's node name and nonce.
//
//	node string | nonce [32]byte
type Hello struct {
	Node  string
	Nonce [NonceSize]byte
}

// Challenge answers Hello: the server's node name, nonce and proof
// (HMAC-SHA256 over the secret; see replicate's auth).
//
//	node string | nonce [32]byte | mac [32]byte
type Challenge struct {
	Node  string
	Nonce [NonceSize]byte
	MAC   [MACSize]byte
}

// Response is the client's proof.
//
//	mac [32]byte
type Response struct{ MAC [MACSize]byte }

// Welcome says the client is authenticated. Empty body.
type Welcome struct{}

// Error codes.
const (
	CodeInternal      uint16 = 1 // anything else
	CodeAuth          uint16 = 2 // authentication failed
	CodeNoResource    uint16 = 3 // the peer holds no log of the resource
	CodeGone          uint16 = 4 // the peer no longer holds the records asked for
	CodeNotConsistent uint16 = 5 // the peer's data device is not consistent (no sync from it)
	CodeBadRequest    uint16 = 6 // the request makes no sense
	CodeDiverged      uint16 = 7 // the peer's log is not the current history (or not open yet): no log from it
	CodeCorrupt       uint16 = 8 // the peer's copy of the log is damaged at the records asked for next
	CodeStale         uint16 = 9 // the peer follows an older designation than the fetcher (its log may be a losing fork)
)

// Error reports a failed request.
//
//	code uint16 | message string
type Error struct {
	Code    uint16
	Message string
}

// Error implements error.
func (e *Error) Error() string { return e.Message }

// StatusRequest asks for the node's status. Empty body.
type StatusRequest struct{}

// Status is the node's status as JSON (replicate.NodeStatus).
//
//	json (rest of body)
type Status struct{ JSON []byte }

// Fetch asks for the log of Resource after From; the server answers with a
// stream of SegmentData (or CompressedData, when Accept allows it) and
// Heartbeat until the connection closes.
//
//	resource string | from Position (segment u64, offset i64, seq u64) |
//	    [accept u32 | [generation u64 | primary string]]
//
// Accept is present when not 0 or when Designation follows (see
// Compression and Designations in the package doc).
type Fetch struct {
	Resource string
	From     Position
	// Accept is the set of encodings the fetcher decodes, a bit 1<<e for
	// each Encoding e; 0: plain SegmentData only.
	Accept uint32
	// Designation is the fetcher's designation of the resource (nil: not
	// said, as by fetchers of older releases).
	Designation *Designation
}

// Designation names a resource's designated primary and its generation
// (see replicate.Designation).
type Designation struct {
	Primary    string
	Generation uint64
}

// Encoding is a compression of segment data (CompressedData.Encoding).
type Encoding uint8

// Encodings.
const (
	EncodingZstd Encoding = 1 // zstd (RFC 8878), one zstd frame per message
)

// String returns the encoding's name as the config spells it.
func (e Encoding) String() string {
	if e == EncodingZstd {
		return "zstd"
	}
	return fmt.Sprintf("encoding(%d)", uint8(e))
}

// Bit returns e's bit in Fetch.Accept.
func (e Encoding) Bit() uint32 { return 1 << (e & 31) }

// FeatureFetchAccept is listed in the status of a node whose ship server
// reads Fetch.Accept.
const FeatureFetchAccept = "fetch-accept"

// FeatureFetchDesignation is listed in the status of a node whose ship
// server reads Fetch.Designation.
const FeatureFetchDesignation = "fetch-designation"

// CompressedData is a SegmentData whose Data is compressed with Encoding;
// RawLen is the length of the data decompressed (at most the reader's
// frame limit).
//
//	segment string | offset i64 | end Position | encoding u8 | raw_len u32 | data (rest of body)
type CompressedData struct {
	Segment  string
	Offset   int64
	End      Position
	Encoding Encoding
	RawLen   uint32
	Data     []byte
}

// SegmentData carries whole records of segment Segment starting at byte
// Offset, and the source's log end when it was sent.
//
//	segment string | offset i64 | end Position | data (rest of body)
type SegmentData struct {
	Segment string
	Offset  int64
	End     Position
	Data    []byte
}

// Heartbeat carries the source's log end while there is nothing to send.
//
//	end Position
type Heartbeat struct{ End Position }

// ChecksumRequest asks for the checksums of Count chunks of ChunkSize bytes
// from chunk First of the resource's data device.
//
//	resource string | chunk_size u32 | first u64 | count u32
type ChecksumRequest struct {
	Resource  string
	ChunkSize uint32
	First     uint64
	Count     uint32
}

// Checksums answers ChecksumRequest: the device size and SumSize bytes per
// chunk (fewer chunks than asked at the end of the device).
//
//	first u64 | size i64 | sums (rest of body, a multiple of SumSize)
type Checksums struct {
	First uint64
	Size  int64
	Sums  []byte
}

// ChunkRequest asks for the bytes of chunk Index.
//
//	resource string | chunk_size u32 | index u64
type ChunkRequest struct {
	Resource  string
	ChunkSize uint32
	Index     uint64
}

// Role carries a message between the role cores of two nodes (a
// replicate.RoleMessage as JSON): a handover request, its answers, an abort.
// The receiver answers with a Role frame of its own (empty JSON object:
// delivered) or an Error.
//
//	json (rest of body)
type Role struct{ JSON []byte }

// Emergency asks a primary which chunks it wrote without its log
// (emergency mode) and carries the answer, both as JSON (replicate's
// EmergencyRequest and EmergencyChunks).
type Emergency struct{ JSON []byte }

// Ack is the back channel of a fetch stream: the fetching node sends it
// after each fdatasync of what it fetched, saying its copy of the log is
// durable up to Durable (a record boundary). A primary counts it towards
// synchronous acknowledgement (ack_secondaries). A server that does not
// count acknowledgements reads and drops it, so the message needs no new
// protocol version.
//
//	durable Position
type Ack struct{ Durable Position }

// ChunkData answers ChunkRequest (shorter at the end of the device).
//
//	index u64 | data (rest of body)
type ChunkData struct {
	Index uint64
	Data  []byte
}

func (*Hello) Type() Type           { return TypeHello }
func (*Challenge) Type() Type       { return TypeChallenge }
func (*Response) Type() Type        { return TypeResponse }
func (*Welcome) Type() Type         { return TypeWelcome }
func (*Error) Type() Type           { return TypeError }
func (*StatusRequest) Type() Type   { return TypeStatusRequest }
func (*Status) Type() Type          { return TypeStatus }
func (*Fetch) Type() Type           { return TypeFetch }
func (*SegmentData) Type() Type     { return TypeSegmentData }
func (*Heartbeat) Type() Type       { return TypeHeartbeat }
func (*ChecksumRequest) Type() Type { return TypeChecksumRequest }
func (*Checksums) Type() Type       { return TypeChecksums }
func (*ChunkRequest) Type() Type    { return TypeChunkRequest }
func (*ChunkData) Type() Type       { return TypeChunkData }
func (*Role) Type() Type            { return TypeRole }
func (*Emergency) Type() Type       { return TypeEmergency }
func (*CompressedData) Type() Type  { return TypeCompressedData }
func (*Ack) Type() Type             { return TypeAck }

// New returns an empty message of type t, or nil for an unknown type.
func New(t Type) Message {
	switch t {
	case TypeHello:
		return &Hello{}
	case TypeChallenge:
		return &Challenge{}
	case TypeResponse:
		return &Response{}
	case TypeWelcome:
		return &Welcome{}
	case TypeError:
		return &Error{}
	case TypeStatusRequest:
		return &StatusRequest{}
	case TypeStatus:
		return &Status{}
	case TypeFetch:
		return &Fetch{}
	case TypeSegmentData:
		return &SegmentData{}
	case TypeHeartbeat:
		return &Heartbeat{}
	case TypeChecksumRequest:
		return &ChecksumRequest{}
	case TypeChecksums:
		return &Checksums{}
	case TypeChunkRequest:
		return &ChunkRequest{}
	case TypeChunkData:
		return &ChunkData{}
	case TypeRole:
		return &Role{}
	case TypeEmergency:
		return &Emergency{}
	case TypeCompressedData:
		return &CompressedData{}
	case TypeAck:
		return &Ack{}
	}
	return nil
}

// AppendFrame appends m as a whole frame (header and body) to b.
func AppendFrame(b []byte, m Message) []byte {
	start := len(b)
	b = binary.LittleEndian.AppendUint32(b, Magic)
	b = append(b, 0, 0, 0, 0, Version, byte(m.Type()), 0, 0)
	b = m.AppendBody(b)
	binary.LittleEndian.PutUint32(b[start+4:], uint32(len(b)-start-HeaderSize))
	return b
}

// ParseHeader checks a frame header and returns the message type and the
// body length. It returns ErrBadMagic, ErrVersion, ErrTooLarge (length over
// max) or an error wrapping ErrMalformed, and never panics.
func ParseHeader(h []byte, max int) (Type, int, error) {
	if len(h) < HeaderSize {
		return 0, 0, io.ErrUnexpectedEOF
	}
	if binary.LittleEndian.Uint32(h) != Magic {
		return 0, 0, ErrBadMagic
	}
	if h[8] != Version {
		return 0, 0, fmt.Errorf("%w %d (this node speaks %d)", ErrVersion, h[8], Version)
	}
	t := Type(h[9])
	if t == 0 || t > typeMax {
		return 0, 0, fmt.Errorf("%w: unknown type %d", ErrMalformed, h[9])
	}
	if h[10] != 0 || h[11] != 0 {
		return 0, 0, fmt.Errorf("%w: reserved flags set", ErrMalformed)
	}
	n := binary.LittleEndian.Uint32(h[4:])
	if uint64(n) > uint64(max) {
		return 0, 0, fmt.Errorf("%w: %s frame of %d bytes, limit %d", ErrTooLarge, t, n, max)
	}
	return t, int(n), nil
}

// Decode decodes the body of a message of type t. Byte slices of the result
// (SegmentData.Data, ChunkData.Data, Checksums.Sums, Status.JSON) alias body:
// copy them to keep them. It never panics.
func Decode(t Type, body []byte) (Message, error) {
	m := New(t)
	if m == nil {
		return nil, fmt.Errorf("%w: unknown type %d", ErrMalformed, uint8(t))
	}
	if err := m.decode(body); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, t, err)
	}
	return m, nil
}

// DecodeFrame decodes one whole frame at the start of b and returns the
// message and the frame's length. It returns io.ErrUnexpectedEOF when b holds
// less than a frame.
func DecodeFrame(b []byte, max int) (Message, int, error) {
	t, n, err := ParseHeader(b, max)
	if err != nil {
		return nil, 0, err
	}
	if len(b)-HeaderSize < n {
		return nil, 0, io.ErrUnexpectedEOF
	}
	m, err := Decode(t, b[HeaderSize:HeaderSize+n])
	return m, HeaderSize + n, err
}

// ---- body encoders and decoders ----

func appendString(b []byte, s string) []byte {
	if len(s) > MaxString {
		s = s[:MaxString]
	}
	b = binary.LittleEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

func appendPos(b []byte, p Position) []byte {
	b = binary.LittleEndian.AppendUint64(b, p.Segment)
	b = binary.LittleEndian.AppendUint64(b, uint64(p.Offset))
	return binary.LittleEndian.AppendUint64(b, p.Seq)
}

// dec reads fields from a body; the first error sticks.
type dec struct {
	b   []byte
	err error
}

var errShort = errors.New("body too short")

func (d *dec) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || len(d.b) < n {
		d.err = errShort
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *dec) u16() uint16 {
	if v := d.take(2); v != nil {
		return binary.LittleEndian.Uint16(v)
	}
	return 0
}

func (d *dec) u32() uint32 {
	if v := d.take(4); v != nil {
		return binary.LittleEndian.Uint32(v)
	}
	return 0
}

func (d *dec) u64() uint64 {
	if v := d.take(8); v != nil {
		return binary.LittleEndian.Uint64(v)
	}
	return 0
}

func (d *dec) i64() int64 {
	v := int64(d.u64())
	if v < 0 && d.err == nil {
		d.err = errors.New("negative offset or size")
	}
	return v
}

func (d *dec) str() string {
	n := int(d.u16())
	if n > MaxString && d.err == nil {
		d.err = fmt.Errorf("string of %d bytes", n)
	}
	return string(d.take(n))
}

func (d *dec) pos() Position {
	return Position{Segment: d.u64(), Offset: d.i64(), Seq: d.u64()}
}

func (d *dec) fixed(dst []byte) { copy(dst, d.take(len(dst))) }

func (d *dec) rest() []byte {
	if d.err != nil {
		return nil
	}
	v := d.b[:len(d.b):len(d.b)]
	d.b = nil
	return v
}

// end fails if bytes are left over.
func (d *dec) end() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%d stray bytes", len(d.b))
	}
	return d.err
}

func (m *Hello) AppendBody(b []byte) []byte { return append(appendString(b, m.Node), m.Nonce[:]...) }
func (m *Hello) decode(body []byte) error {
	d := dec{b: body}
	m.Node = d.str()
	d.fixed(m.Nonce[:])
	return d.end()
}

func (m *Challenge) AppendBody(b []byte) []byte {
	return append(append(appendString(b, m.Node), m.Nonce[:]...), m.MAC[:]...)
}
func (m *Challenge) decode(body []byte) error {
	d := dec{b: body}
	m.Node = d.str()
	d.fixed(m.Nonce[:])
	d.fixed(m.MAC[:])
	return d.end()
}

func (m *Response) AppendBody(b []byte) []byte { return append(b, m.MAC[:]...) }
func (m *Response) decode(body []byte) error {
	d := dec{b: body}
	d.fixed(m.MAC[:])
	return d.end()
}

func (m *Welcome) AppendBody(b []byte) []byte { return b }
func (m *Welcome) decode(body []byte) error   { return (&dec{b: body}).end() }

func (m *Error) AppendBody(b []byte) []byte {
	return appendString(binary.LittleEndian.AppendUint16(b, m.Code), m.Message)
}
func (m *Error) decode(body []byte) error {
	d := dec{b: body}
	m.Code = d.u16()
	m.Message = d.str()
	return d.end()
}

func (m *StatusRequest) AppendBody(b []byte) []byte { return b }
func (m *StatusRequest) decode(body []byte) error   { return (&dec{b: body}).end() }

func (m *Status) AppendBody(b []byte) []byte { return append(b, m.JSON...) }
func (m *Status) decode(body []byte) error {
	d := dec{b: body}
	m.JSON = d.rest()
	return d.end()
}

func (m *Role) AppendBody(b []byte) []byte { return append(b, m.JSON...) }
func (m *Role) decode(body []byte) error {
	d := dec{b: body}
	m.JSON = d.rest()
	return d.end()
}

func (m *Emergency) AppendBody(b []byte) []byte { return append(b, m.JSON...) }
func (m *Emergency) decode(body []byte) error {
	d := dec{b: body}
	m.JSON = d.rest()
	return d.end()
}

func (m *Fetch) AppendBody(b []byte) []byte {
	b = appendPos(appendString(b, m.Resource), m.From)
	if m.Accept != 0 || m.Designation != nil {
		b = binary.LittleEndian.AppendUint32(b, m.Accept)
	}
	if m.Designation != nil {
		b = appendString(binary.LittleEndian.AppendUint64(b, m.Designation.Generation), m.Designation.Primary)
	}
	return b
}
func (m *Fetch) decode(body []byte) error {
	d := dec{b: body}
	m.Resource = d.str()
	m.From = d.pos()
	if d.err == nil && len(d.b) > 0 {
		m.Accept = d.u32()
		if d.err == nil && len(d.b) > 0 {
			m.Designation = &Designation{Generation: d.u64()}
			m.Designation.Primary = d.str()
		} else if m.Accept == 0 && d.err == nil {
			d.err = errors.New("accept 0 present without a designation (it is sent as absent)")
		}
	}
	return d.end()
}

func (m *CompressedData) AppendBody(b []byte) []byte {
	b = appendString(b, m.Segment)
	b = binary.LittleEndian.AppendUint64(b, uint64(m.Offset))
	b = append(appendPos(b, m.End), byte(m.Encoding))
	b = binary.LittleEndian.AppendUint32(b, m.RawLen)
	return append(b, m.Data...)
}
func (m *CompressedData) decode(body []byte) error {
	d := dec{b: body}
	m.Segment = d.str()
	m.Offset = d.i64()
	m.End = d.pos()
	if e := d.take(1); e != nil {
		m.Encoding = Encoding(e[0])
	}
	m.RawLen = d.u32()
	m.Data = d.rest()
	return d.end()
}

func (m *SegmentData) AppendBody(b []byte) []byte {
	b = appendString(b, m.Segment)
	b = binary.LittleEndian.AppendUint64(b, uint64(m.Offset))
	return append(appendPos(b, m.End), m.Data...)
}
func (m *SegmentData) decode(body []byte) error {
	d := dec{b: body}
	m.Segment = d.str()
	m.Offset = d.i64()
	m.End = d.pos()
	m.Data = d.rest()
	return d.end()
}

func (m *Heartbeat) AppendBody(b []byte) []byte { return appendPos(b, m.End) }
func (m *Heartbeat) decode(body []byte) error {
	d := dec{b: body}
	m.End = d.pos()
	return d.end()
}

func (m *Ack) AppendBody(b []byte) []byte { return appendPos(b, m.Durable) }
func (m *Ack) decode(body []byte) error {
	d := dec{b: body}
	m.Durable = d.pos()
	return d.end()
}

func (m *ChecksumRequest) AppendBody(b []byte) []byte {
	b = binary.LittleEndian.AppendUint32(appendString(b, m.Resource), m.ChunkSize)
	return binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint64(b, m.First), m.Count)
}
func (m *ChecksumRequest) decode(body []byte) error {
	d := dec{b: body}
	m.Resource = d.str()
	m.ChunkSize = d.u32()
	m.First = d.u64()
	m.Count = d.u32()
	return d.end()
}

func (m *Checksums) AppendBody(b []byte) []byte {
	b = binary.LittleEndian.AppendUint64(b, m.First)
	return append(binary.LittleEndian.AppendUint64(b, uint64(m.Size)), m.Sums...)
}
func (m *Checksums) decode(body []byte) error {
	d := dec{b: body}
	m.First = d.u64()
	m.Size = d.i64()
	m.Sums = d.rest()
	if d.err == nil && len(m.Sums)%SumSize != 0 {
		return fmt.Errorf("%d checksum bytes, not a multiple of %d", len(m.Sums), SumSize)
	}
	return d.end()
}

func (m *ChunkRequest) AppendBody(b []byte) []byte {
	b = binary.LittleEndian.AppendUint32(appendString(b, m.Resource), m.ChunkSize)
	return binary.LittleEndian.AppendUint64(b, m.Index)
}
func (m *ChunkRequest) decode(body []byte) error {
	d := dec{b: body}
	m.Resource = d.str()
	m.ChunkSize = d.u32()
	m.Index = d.u64()
	return d.end()
}

func (m *ChunkData) AppendBody(b []byte) []byte {
	return append(binary.LittleEndian.AppendUint64(b, m.Index), m.Data...)
}
func (m *ChunkData) decode(body []byte) error {
	d := dec{b: body}
	m.Index = d.u64()
	m.Data = d.rest()
	return d.end()
}
