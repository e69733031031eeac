package replicate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Constants of the on-disk record format (see the package doc). They are part
// of the format and must not be changed.
const (
	recordMagic   = 0x474c4854 // "THLG" read as little-endian bytes
	recordVersion = 1
	// HeaderSize is the size of a record header in bytes.
	HeaderSize = 56
	// MaxPayload bounds the payload of one record; longer writes are split.
	// A decoder rejects a larger length before allocating anything.
	MaxPayload = 64 << 20
)

// Kind is what a record does.
//
//enumcheck:exhaustive
type Kind uint8

// Record kinds. The zero value is invalid.
const (
	KindWrite       Kind = 1 // write Payload at Offset
	KindTrim        Kind = 2 // discard Length bytes at Offset
	KindWriteZeroes Kind = 3 // zero Length bytes at Offset
	KindResize      Kind = 4 // the device is now Length bytes
	KindSegmentEnd  Kind = 5 // last record of a sealed segment
	// KindEmergency marks where the primary left emergency mode: after the
	// record before it, the primary wrote to its disk without logging, so
	// a secondary's replay stops before it (consistent, outdated) until a
	// sync of the chunks written meanwhile.
	KindEmergency Kind = 6
)

var kindNames = [...]string{"invalid", "write", "trim", "write-zeroes", "resize", "segment-end", "emergency"}

// String returns the kind's name.
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Record is one entry of the log.
type Record struct {
	Kind    Kind
	Segment uint64 // sequence number of the segment holding the record
	Seq     uint64 // global record sequence number
	Offset  int64  // device offset (write, trim, write-zeroes)
	Length  int64  // bytes affected; for KindResize the new size
	Synced  int64  // segment offset known durable when the record was written
	Payload []byte // KindWrite only; len(Payload) == Length
}

// ErrInvalidRecord is wrapped by every decoding error other than a short
// buffer (io.ErrUnexpectedEOF).
var ErrInvalidRecord = errors.New("invalid log record")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

const crcMaskDelta = 0xa282ead8

// maskCRC masks a CRC32C as LevelDB and pebble do.
func maskCRC(c uint32) uint32 { return ((c >> 15) | (c << 17)) + crcMaskDelta }

// validate checks the fields that do not depend on the encoding.
func (r *Record) validate() error {
	if r.Offset < 0 || r.Length < 0 || r.Synced < 0 {
		return fmt.Errorf("%w: negative offset, length or synced", ErrInvalidRecord)
	}
	switch r.Kind {
	case KindWrite:
		if int64(len(r.Payload)) != r.Length {
			return fmt.Errorf("%w: write length %d with %d payload bytes", ErrInvalidRecord, r.Length, len(r.Payload))
		}
		if r.Length > MaxPayload {
			return fmt.Errorf("%w: payload of %d bytes exceeds %d", ErrInvalidRecord, r.Length, MaxPayload)
		}
		if r.Offset > (1<<63-1)-r.Length {
			return fmt.Errorf("%w: offset overflows", ErrInvalidRecord)
		}
	case KindTrim, KindWriteZeroes:
		if len(r.Payload) != 0 {
			return fmt.Errorf("%w: %s with payload", ErrInvalidRecord, r.Kind)
		}
		if r.Offset > (1<<63-1)-r.Length {
			return fmt.Errorf("%w: offset overflows", ErrInvalidRecord)
		}
	case KindResize:
		if len(r.Payload) != 0 || r.Offset != 0 {
			return fmt.Errorf("%w: resize with payload or offset", ErrInvalidRecord)
		}
	case KindSegmentEnd, KindEmergency:
		if len(r.Payload) != 0 || r.Offset != 0 || r.Length != 0 {
			return fmt.Errorf("%w: %s with payload, offset or length", ErrInvalidRecord, r.Kind)
		}
	default:
		return fmt.Errorf("%w: unknown kind %d", ErrInvalidRecord, uint8(r.Kind))
	}
	return nil
}

// EncodedSize is the number of bytes AppendBinary adds.
func (r *Record) EncodedSize() int { return HeaderSize + len(r.Payload) }

// AppendBinary appends the encoded record to b. It does not retain b.
func (r *Record) AppendBinary(b []byte) ([]byte, error) {
	b, err := r.appendHeader(b)
	if err != nil {
		return b, err
	}
	return append(b, r.Payload...), nil
}

// appendHeader appends the record's header alone (its CRC covers the
// payload too), for writers that write the payload from where it is.
func (r *Record) appendHeader(b []byte) ([]byte, error) {
	if err := r.validate(); err != nil {
		return b, err
	}
	start := len(b)
	b = binary.LittleEndian.AppendUint32(b, recordMagic)
	b = binary.LittleEndian.AppendUint32(b, 0) // crc, filled below
	b = append(b, recordVersion, byte(r.Kind), 0, 0)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(r.Payload)))
	b = binary.LittleEndian.AppendUint64(b, r.Segment)
	b = binary.LittleEndian.AppendUint64(b, r.Seq)
	b = binary.LittleEndian.AppendUint64(b, uint64(r.Offset))
	b = binary.LittleEndian.AppendUint64(b, uint64(r.Length))
	b = binary.LittleEndian.AppendUint64(b, uint64(r.Synced))
	crc := crc32.Update(0, castagnoli, b[start+8:])
	crc = crc32.Update(crc, castagnoli, r.Payload)
	binary.LittleEndian.PutUint32(b[start+4:], maskCRC(crc))
	return b, nil
}

// MarshalBinary returns the encoded record.
func (r *Record) MarshalBinary() ([]byte, error) {
	return r.AppendBinary(make([]byte, 0, r.EncodedSize()))
}

// header is a decoded but not yet checksummed record header.
type header struct {
	crc    uint32
	paylen int
	rec    Record
}

// decodeHeader parses and bounds-checks a header. It returns
// io.ErrUnexpectedEOF when b is shorter than HeaderSize and an error wrapping
// ErrInvalidRecord for anything malformed. It never allocates the payload.
func decodeHeader(b []byte) (header, error) {
	if len(b) < HeaderSize {
		return header{}, io.ErrUnexpectedEOF
	}
	if m := binary.LittleEndian.Uint32(b); m != recordMagic {
		return header{}, fmt.Errorf("%w: bad magic %#08x", ErrInvalidRecord, m)
	}
	if b[8] != recordVersion {
		return header{}, fmt.Errorf("%w: unsupported format version %d (this build reads %d)", ErrInvalidRecord, b[8], recordVersion)
	}
	if b[10] != 0 || b[11] != 0 {
		return header{}, fmt.Errorf("%w: reserved flags set", ErrInvalidRecord)
	}
	h := header{crc: binary.LittleEndian.Uint32(b[4:])}
	paylen := binary.LittleEndian.Uint32(b[12:])
	if paylen > MaxPayload {
		return header{}, fmt.Errorf("%w: payload length %d exceeds %d", ErrInvalidRecord, paylen, MaxPayload)
	}
	h.paylen = int(paylen)
	h.rec = Record{
		Kind:    Kind(b[9]),
		Segment: binary.LittleEndian.Uint64(b[16:]),
		Seq:     binary.LittleEndian.Uint64(b[24:]),
		Offset:  int64(binary.LittleEndian.Uint64(b[32:])),
		Length:  int64(binary.LittleEndian.Uint64(b[40:])),
		Synced:  int64(binary.LittleEndian.Uint64(b[48:])),
	}
	// Check the fields as far as possible without the payload.
	r := h.rec
	if r.Kind == KindWrite {
		if int64(h.paylen) != r.Length {
			return header{}, fmt.Errorf("%w: write length %d with %d payload bytes", ErrInvalidRecord, r.Length, h.paylen)
		}
		r.Length = 0 // validated against the (absent) payload below
		if h.rec.Offset > (1<<63-1)-h.rec.Length {
			return header{}, fmt.Errorf("%w: offset overflows", ErrInvalidRecord)
		}
		if h.rec.Offset < 0 {
			return header{}, fmt.Errorf("%w: negative offset", ErrInvalidRecord)
		}
	} else if h.paylen != 0 {
		return header{}, fmt.Errorf("%w: %s with payload", ErrInvalidRecord, r.Kind)
	}
	if err := r.validate(); err != nil {
		return header{}, err
	}
	return h, nil
}

// checkCRC verifies the checksum of a full record whose header was decoded
// into h; rec is the encoded record (header and payload).
func (h *header) checkCRC(rec []byte) error {
	if got := maskCRC(crc32.Update(0, castagnoli, rec[8:])); got != h.crc {
		return fmt.Errorf("%w: checksum mismatch (stored %#08x, computed %#08x)", ErrInvalidRecord, h.crc, got)
	}
	return nil
}

// DecodeRecord decodes the record at the start of b and returns it with its
// encoded size. The returned Payload aliases b (zero copy): copy it to keep
// it. It returns io.ErrUnexpectedEOF when b holds less than a whole record and
// an error wrapping ErrInvalidRecord when the record is malformed or its
// checksum does not match. It never panics.
func DecodeRecord(b []byte) (Record, int, error) {
	h, err := decodeHeader(b)
	if err != nil {
		return Record{}, 0, err
	}
	n := HeaderSize + h.paylen
	if len(b) < n {
		return Record{}, 0, io.ErrUnexpectedEOF
	}
	if err := h.checkCRC(b[:n]); err != nil {
		return Record{}, 0, err
	}
	r := h.rec
	if h.paylen > 0 {
		r.Payload = b[HeaderSize:n:n]
	}
	return r, n, nil
}
