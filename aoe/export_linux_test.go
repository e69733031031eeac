package aoe

import (
	"testing"

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
