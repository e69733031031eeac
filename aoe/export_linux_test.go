package aoe

import (
	"context"
	"testing"
	"time"

	"github.com/tharsis/tharsis/blockdev"
)

// SetInlineDevice makes targets created until the test ends treat the
// devices for which inline returns true as inline (written by the
// receiving workers, flushed by the committer), like blockdev.File.
func SetInlineDevice(t testing.TB, inline func(blockdev.Device) bool) {
	old := inlineDevice
	inlineDevice = inline
	t.Cleanup(func() { inlineDevice = old })
}

// StageSizes returns the Server's write-stage frames and its receiving
// workers.
func StageSizes(s *Server) (frames, workers int) { return s.frames, s.workers }

// ExchangeVersion is in.Exchange (first response only) with AoE version
// ver in the request header.
func ExchangeVersion(ctx context.Context, in *Initiator, ver uint8, dst MAC, shelf uint16, slot uint8, cmd Command, arg []byte, wait time.Duration) ([]Response, error) {
	h := Header{Dst: dst, Src: in.mac, Version: ver, Shelf: shelf, Slot: slot, Command: cmd}
	return in.exchange(ctx, h, arg, wait, true)
}

// SetRxRing makes Servers created until the test ends receive through a
// ring (on) or with recvmmsg (off).
func SetRxRing(t testing.TB, on bool) {
	old := rxRingSlots
	rxRingSlots = 0
	if on {
		rxRingSlots = maxFrames
	}
	t.Cleanup(func() { rxRingSlots = old })
}

// UsesRing reports whether s receives through a ring.
func UsesRing(s *Server) bool { return s.ring != nil }

// SetTxRing makes Servers created until the test ends send through a
// transmit ring (on, veth interfaces included) or with sendmmsg (off).
func SetTxRing(t testing.TB, on bool) {
	old, oldAny := txRingSlots, txRingAnyDriver
	txRingSlots, txRingAnyDriver = 0, on
	if on {
		txRingSlots = maxFrames / 2
	}
	t.Cleanup(func() { txRingSlots, txRingAnyDriver = old, oldAny })
}

// UsesTxRing reports whether s sends through a transmit ring.
func UsesTxRing(s *Server) bool { return s.tx != nil }
