package aoe

import "io"

// MaskCommand is the MCmd of a Mac Mask List argument.
type MaskCommand uint8

// Mac Mask List commands.
const (
	MaskRead MaskCommand = 0 // read the list
	MaskEdit MaskCommand = 1 // apply the directives, then read
)

// MaskError is the MError of a Mac Mask List response.
type MaskError uint8

// Mac Mask List errors.
const (
	MaskErrUnspecified  MaskError = 1
	MaskErrBadDirective MaskError = 2 // unknown DCmd; Count says which directive
	MaskErrListFull     MaskError = 3 // no room to add; Count says which directive
)

// DirCommand is the DCmd of one Mac Mask directive.
type DirCommand uint8

// Mac Mask directives.
const (
	DirNone   DirCommand = 0 // no directive
	DirAdd    DirCommand = 1 // add the MAC
	DirDelete DirCommand = 2 // delete the MAC
)

// Mask is a Mac Mask List argument.
type Mask struct {
	Reserved uint8
	Command  MaskCommand
	Error    MaskError
	Count    uint8 // Dir Count
	// Directives holds the directives present (Count of them, DirectiveLen
	// bytes each); read them with Directive. It aliases the frame given to
	// Decode.
	Directives []byte
}

// Directive returns directive i (0 <= i < len(Directives)/DirectiveLen).
func (m *Mask) Directive(i int) (DirCommand, MAC) {
	d := m.Directives[i*DirectiveLen : (i+1)*DirectiveLen]
	var mac MAC
	copy(mac[:], d[2:8])
	return DirCommand(d[1]), mac
}

// AppendDirective appends one directive to b (used to build Directives).
func AppendDirective(b []byte, cmd DirCommand, mac MAC) []byte {
	return append(append(b, 0, byte(cmd)), mac[:]...)
}

// Decode parses a Mac Mask List argument at the start of b (the frame after
// HeaderLen). A response with Error set carries no directives (vblade sends
// none; Count then names the failing directive), so Directives is empty;
// otherwise b must hold Count directives or Decode returns
// io.ErrUnexpectedEOF. It does not allocate.
func (m *Mask) Decode(b []byte) error {
	if len(b) < MaskArgLen {
		return io.ErrUnexpectedEOF
	}
	m.Reserved = b[0]
	m.Command = MaskCommand(b[1])
	m.Error = MaskError(b[2])
	m.Count = b[3]
	m.Directives = nil
	if m.Error != 0 {
		return nil
	}
	n := int(m.Count) * DirectiveLen
	if n > len(b)-MaskArgLen {
		return io.ErrUnexpectedEOF
	}
	m.Directives = b[MaskArgLen : MaskArgLen+n : MaskArgLen+n]
	return nil
}

// AppendBinary appends the argument and Directives to b. Count is written as
// given, so an error response can name the failing directive.
func (m *Mask) AppendBinary(b []byte) ([]byte, error) {
	b = append(b, m.Reserved, byte(m.Command), byte(m.Error), m.Count)
	return append(b, m.Directives...), nil
}

// MarshalBinary is AppendBinary(nil).
func (m *Mask) MarshalBinary() ([]byte, error) { return m.AppendBinary(nil) }
