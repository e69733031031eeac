package aoe

import (
	"errors"
	"fmt"
	"strings"
)

// ErrTimeout is returned when a request got no response after every
// retransmission.
var ErrTimeout = errors.New("AoE request timed out: no response from the target (is it up, on this segment, and does its Mac Mask list admit us?)")

// ErrNoResponse is returned by Exchange when nothing answered in time.
var ErrNoResponse = errors.New("no AoE response")

// ATAError is an ATA command that the target completed with ERR set.
type ATAError struct {
	Status uint8 // status register
	Err    uint8 // error register: ATAErrIDNF, ATAErrUNC, ATAErrABRT, ...
}

func (e *ATAError) Error() string {
	var what []string
	if e.Err&ATAErrUNC != 0 {
		what = append(what, "UNC (I/O error)")
	}
	if e.Err&ATAErrIDNF != 0 {
		what = append(what, "IDNF (sector out of range)")
	}
	if e.Err&ATAErrABRT != 0 {
		what = append(what, "ABRT (command aborted)")
	}
	return fmt.Sprintf("ATA error: status %#02x error %#02x %s", e.Status, e.Err, strings.Join(what, " "))
}

// TargetInfo describes a target found by discovery.
type TargetInfo struct {
	Iface           string
	MAC             MAC
	Shelf           uint16
	Slot            uint8
	BufCnt          uint16
	Firmware        uint16
	SectorsPerFrame int    // what the target offers (Query Config scnt)
	Payload         int    // bytes per ATA frame the initiator uses: min(scnt, what its MTU allows) * 512
	Config          []byte // config string
	Sectors         uint64 // capacity from IDENTIFY (LBA48 words 100-103)
	Model, Serial   string // IDENTIFY strings
	FirmwareRev     string
	State           string // "up", or why IDENTIFY failed
}

// Name returns the target's name as aoe-stat prints it, e.g. "e1.1".
func (t TargetInfo) Name() string { return fmt.Sprintf("e%d.%d", t.Shelf, t.Slot) }

// StatLine formats t like one line of aoetools' aoe-stat: name, size in GB
// (10^9 bytes, three decimals), interface, payload bytes per frame and
// state, e.g. "      e1.1         0.268GB       eth0 1024  up".
func (t TargetInfo) StatLine() string {
	psize := fmt.Sprintf("%04d", t.Sectors*512000/(1000*1000*1000))
	psize = psize[:len(psize)-3] + "." + psize[len(psize)-3:] + "GB"
	return strings.TrimRight(fmt.Sprintf("%10s %15s %10s %-5d %-14s", t.Name(), psize, t.Iface, t.Payload, t.State), " ")
}

// identString extracts an IDENTIFY string (two characters per word, first
// in the high byte) and trims the padding.
func identString(id []byte, word, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = id[word*2+i^1]
	}
	return strings.TrimSpace(string(b))
}
