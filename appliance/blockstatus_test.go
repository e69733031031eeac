package appliance

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"

	"github.com/tharsis/tharsis/blockdev"
	"github.com/tharsis/tharsis/internal/nbdclient"
	"github.com/tharsis/tharsis/internal/testutil"
)

// The disks behind the exports keep their allocation map (keepOpen embeds
// the File; replicate.Primary passes it through).
var _ blockdev.ExtentReporter = keepOpen{}

// TestDaemonNBDBlockStatus: replicated and unreplicated exports both
// answer base:allocation from the disk: a write shows as data among holes.
func TestDaemonNBDBlockStatus(t *testing.T) {
	nbdinfo := testutil.NeedTool(t, "nbdinfo")
	addr := testutil.FreePort(t)
	d := startDaemon(t, oneNode+`
[resources.r1]
disk = { alpha = "r1.img" }
[[exports.nbd]]
resource = "r0"
listen = "`+addr+`"
[[exports.nbd]]
resource = "r1"
listen = "`+addr+`"
`, "r0.img", "r1.img")
	d.mu.Lock()
	r0, r1 := d.resources["r0"], d.resources["r1"]
	d.mu.Unlock()
	r0.mu.Lock()
	r1.mu.Lock()
	replicated := []bool{r0.prim != nil, r1.prim != nil}
	r1.mu.Unlock()
	r0.mu.Unlock()
	if replicated[0] || !replicated[1] {
		t.Fatalf("replicated: r0 %v r1 %v, want false, true", replicated[0], replicated[1])
	}

	for _, name := range []string{"r0", "r1"} {
		c, err := nbdclient.Dial(addr, name)
		if err != nil {
			t.Fatal(err)
		}
		err = c.WriteAt(bytes.Repeat([]byte{1}, 1<<20), 8<<20, false)
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(nbdinfo, "--map", "nbd://"+addr+"/"+name).CombinedOutput()
		if err != nil {
			t.Fatalf("nbdinfo --map %s: %v\n%s", name, err, out)
		}
		var got []string
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			got = append(got, strings.Join(strings.Fields(line), " "))
		}
		want := []string{"0 8388608 3 hole,zero", "8388608 1048576 0 data", "9437184 57671680 3 hole,zero"}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("%s: nbdinfo --map\n%s\nwant\n%s", name, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
}
