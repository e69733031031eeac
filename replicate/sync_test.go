package replicate

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tharsis/tharsis/blockdev"
	"github.com/tharsis/tharsis/internal/testutil"
)

// slowDevice slows writes down so a test can catch a sync in the middle.
type slowDevice struct {
	blockdev.Device
	delay time.Duration
}

func (d slowDevice) WriteAt(p []byte, off int64) (int, error) {
	time.Sleep(d.delay)
	return d.Device.WriteAt(p, off)
}

// A sync interrupted by a crash resumes at the last flushed batch of
// chunks instead of starting over, and ends byte-identical.
func TestSyncResumesAfterCrash(t *testing.T) {
	const size = 8 << 20
	const chunk = 4096
	a, b := newNode(t, "alpha", size), newNode(t, "beta", size)
	rng := rand.New(rand.NewPCG(21, 22))
	buf := make([]byte, size)
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	a.data.WriteAt(buf, 0) // beta's disk is all zeroes: every chunk differs
	a.startPrimary(0)
	peers := func() []Peer { return []Peer{a.peer()} }
	slow := func(o *SecondaryOptions) { o.ChunkSize = chunk }
	// Open beta on a slow view of its disk.
	b.startSecondaryOn(slowDevice{noClose{b.data}, 300 * time.Microsecond}, peers, slow)
	readState := func() secondaryState {
		var st secondaryState
		data, err := os.ReadFile(filepath.Join(b.dir, stateFile))
		if err == nil {
			json.Unmarshal(data, &st)
		}
		return st
	}
	testutil.WaitFor(t, 20*time.Second, "the sync to flush its first batch", func() bool { return readState().SyncChunk >= syncBatch })
	b.crashSecondary()
	done := readState().SyncChunk
	if done >= size/chunk {
		t.Skipf("the sync finished before the crash (machine too fast for this test)")
	}
	b.startSecondary(peers, slow)
	waitCaughtUp(t, a.prim, b)
	sameData(t, a, b)
	if !strings.Contains(b.logBuf.String(), "from_chunk="+strconv.FormatUint(done, 10)) {
		t.Errorf("the sync did not resume at chunk %d:\n%s", done, b.logBuf.String())
	}
	if ls := b.sec.Status().LastSync; ls == nil || ls.Transferred > size-int64(done)*chunk {
		t.Errorf("resumed sync transferred %+v, more than the %d bytes left", ls, size-int64(done)*chunk)
	}
}
