package aoe

import (
	"testing"

	"github.com/tharsis/tharsis/blockdev"
)

// TestTargetStats checks that a target counts its ATA commands by
// operation, with the bytes of successful reads and writes and the errors.
func TestTargetStats(t *testing.T) {
	st := new(blockdev.Stats)
	c := newTestCore(t, TargetConfig{Shelf: 1, Slot: 1, Device: blockdev.NewMemory(1 << 20), Stats: st})
	data := make([]byte, 2*SectorSize) // an MTU of 1500 carries 2 sectors
	one(t, exchange(c, request(hostMAC, 1, 1, CmdATA, ataReq(ATAWriteSectorsExt, 8, 2, data))))
	one(t, exchange(c, request(hostMAC, 1, 1, CmdATA, ataReq(ATAWriteSectors, 0, 1, data[:SectorSize]))))
	one(t, exchange(c, request(hostMAC, 1, 1, CmdATA, ataReq(ATAReadSectorsExt, 8, 2, nil))))
	one(t, exchange(c, request(hostMAC, 1, 1, CmdATA, ataReq(ATAFlushCacheExt, 0, 0, nil))))
	one(t, exchange(c, request(hostMAC, 1, 1, CmdATA, ataReq(ATAIdentify, 0, 1, nil))))
	// Past the end of the device: answered with IDNF, counted as failed.
	one(t, exchange(c, request(hostMAC, 1, 1, CmdATA, ataReq(ATAReadSectorsExt, 1<<20, 1, nil))))
	// Query Config is not an ATA command: not counted.
	one(t, exchange(c, request(hostMAC, 1, 1, CmdConfig, cfgReq(ConfigRead, ""))))

	if w := st.Load(blockdev.OpWrite); w.Requests != 2 || w.Bytes != 3*SectorSize || w.Errors != 0 {
		t.Errorf("writes: %d requests, %d bytes, %d errors; want 2, %d, 0", w.Requests, w.Bytes, w.Errors, 3*SectorSize)
	}
	if r := st.Load(blockdev.OpRead); r.Requests != 2 || r.Bytes != 2*SectorSize || r.Errors != 1 {
		t.Errorf("reads: %d requests, %d bytes, %d errors; want 2, %d, 1", r.Requests, r.Bytes, r.Errors, 2*SectorSize)
	}
	if f := st.Load(blockdev.OpFlush); f.Requests != 1 || f.Errors != 0 {
		t.Errorf("flushes: %+v, want 1 without error", f)
	}
	if o := st.Load(blockdev.OpOther); o.Requests != 1 {
		t.Errorf("other: %d requests, want 1 (IDENTIFY)", o.Requests)
	}
}
