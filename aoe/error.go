package aoe

import "fmt"

// Error is an AoE error code, carried in the header of a response whose E
// flag is set.
type Error uint8

// AoE error codes (AoEr11 section 2.4).
const (
	ErrUnrecognizedCommand Error = 1 // unrecognized command code
	ErrBadArgument         Error = 2 // bad argument parameter
	ErrDeviceUnavailable   Error = 3 // device unavailable
	ErrConfigStringPresent Error = 4 // config string present (Query Config set on a non-empty string)
	ErrUnsupportedVersion  Error = 5 // unsupported version
	ErrTargetReserved      Error = 6 // target is reserved for other initiators
)

// Error describes the code.
func (e Error) Error() string {
	switch e {
	case ErrUnrecognizedCommand:
		return "AoE error 1: unrecognized command code"
	case ErrBadArgument:
		return "AoE error 2: bad argument parameter"
	case ErrDeviceUnavailable:
		return "AoE error 3: device unavailable"
	case ErrConfigStringPresent:
		return "AoE error 4: config string present"
	case ErrUnsupportedVersion:
		return "AoE error 5: unsupported version"
	case ErrTargetReserved:
		return "AoE error 6: target is reserved"
	}
	return fmt.Sprintf("AoE error %d", uint8(e))
}
