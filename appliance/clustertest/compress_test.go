package clustertest

import (
	"fmt"
	"strings"
	"testing"
)

// TestCompressedReplication: with compress = "zstd", beta fetches the log
// of text-like writes compressed: its disk ends identical to alpha's, its
// view counts fewer wire bytes than log bytes, and fewer bytes crossed its
// veth than the log it fetched.
func TestCompressedReplication(t *testing.T) {
	c := started(t, Options{Nodes: []string{"alpha", "beta"}, Connect: map[string][]string{}, ResourceExtra: "compress = \"zstd\"\n"})
	beta := c.Nodes["beta"]
	_, rx0 := beta.TxRx()
	conn := c.MustDialNBD()
	const block = 256 << 10
	var total int64
	for i := range 64 {
		var b strings.Builder
		for j := 0; b.Len() < block; j++ {
			fmt.Fprintf(&b, "%08d %03d: the quick brown fox jumps over the lazy dog; ", i*10000+j, i)
		}
		if err := conn.WriteAt([]byte(b.String()[:block]), int64(i)*block, false); err != nil {
			t.Fatal(err)
		}
		total += block
	}
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
	c.WaitCaughtUp(catchUp)
	c.AssertIdentical()
	_, rx1 := beta.TxRx()
	r := beta.Repl()
	t.Logf("wrote %d bytes; beta fetched %d bytes of log in %d on the wire (%s); its veth received %d bytes", total, r.FetchLogBytes, r.FetchWireBytes, r.FetchCompression, rx1-rx0)
	if r.FetchLogBytes < total {
		t.Errorf("beta counts %d bytes of log fetched, want at least the %d bytes written", r.FetchLogBytes, total)
	}
	if r.FetchCompression != "zstd" || r.FetchWireBytes*3 > r.FetchLogBytes {
		t.Errorf("beta fetched %d bytes of log in %d wire bytes (compression %q): want zstd, under a third", r.FetchLogBytes, r.FetchWireBytes, r.FetchCompression)
	}
	if rx1-rx0 >= total {
		t.Errorf("beta's veth received %d bytes for %d bytes written: not compressed on the wire", rx1-rx0, total)
	}
}
