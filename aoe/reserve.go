package aoe

import "io"

// ReserveCommand is the RCmd of a Reserve/Release argument.
type ReserveCommand uint8

// Reserve/Release commands.
const (
	ReserveRead     ReserveCommand = 0 // read the reserve list
	ReserveSet      ReserveCommand = 1 // set it, if the sender is on it (or it is empty)
	ReserveForceSet ReserveCommand = 2 // set it unconditionally
)

// Reserve is a Reserve/Release argument. An empty list releases the target.
type Reserve struct {
	Command ReserveCommand
	Count   uint8 // NMacs
	// MACs holds Count addresses of 6 bytes; read them with MAC. It aliases
	// the frame given to Decode.
	MACs []byte
}

// MAC returns address i (0 <= i < len(MACs)/6).
func (r *Reserve) MAC(i int) MAC {
	var m MAC
	copy(m[:], r.MACs[i*6:])
	return m
}

// Decode parses a Reserve/Release argument at the start of b (the frame
// after HeaderLen). It returns io.ErrUnexpectedEOF when b is shorter than
// ReserveArgLen or does not hold Count MACs (Command and Count are set even
// then). It does not allocate.
func (r *Reserve) Decode(b []byte) error {
	if len(b) < ReserveArgLen {
		return io.ErrUnexpectedEOF
	}
	r.Command = ReserveCommand(b[0])
	r.Count = b[1]
	r.MACs = nil
	n := int(r.Count) * 6
	if n > len(b)-ReserveArgLen {
		return io.ErrUnexpectedEOF
	}
	r.MACs = b[ReserveArgLen : ReserveArgLen+n : ReserveArgLen+n]
	return nil
}

// AppendBinary appends the argument and MACs to b.
func (r *Reserve) AppendBinary(b []byte) ([]byte, error) {
	b = append(b, byte(r.Command), r.Count)
	return append(b, r.MACs...), nil
}

// MarshalBinary is AppendBinary(nil).
func (r *Reserve) MarshalBinary() ([]byte, error) { return r.AppendBinary(nil) }
