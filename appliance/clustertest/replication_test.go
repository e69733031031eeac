package clustertest

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	catchUp   = 60 * time.Second // bound of every wait for secondaries to catch up
	switchAll = 30 * time.Second // bound of a source switch (probe interval plus reconnect)
)

// load is a background writer through the primary's NBD export.
type load struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// startLoad writes through a new NBD connection in the background, recording
// into h, until stop is called or n writes are done (n = 0: until stop).
func (c *Cluster) startLoad(h *History, seed uint64, n int, region int64, maxBlocks int) *load {
	c.t.Helper()
	conn := c.MustDialNBD()
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		l.err = Load(ctx, conn, h, rand.New(rand.NewPCG(seed, seed^0x5eed)), n, region, maxBlocks)
	}()
	c.t.Cleanup(l.stopQuiet)
	return l
}

func (l *load) stopQuiet() {
	l.cancel()
	select {
	case <-l.done:
	case <-time.After(45 * time.Second):
	}
}

// stop ends the load and returns its error.
func (l *load) stop(t testing.TB) error {
	t.Helper()
	l.cancel()
	select {
	case <-l.done:
	case <-time.After(45 * time.Second):
		t.Fatal("the NBD load did not stop within 45 s (a write hangs)")
	}
	return l.err
}

// wait waits for a load with a write count to finish and fails on error.
func (l *load) wait(t testing.TB, timeout time.Duration) {
	t.Helper()
	select {
	case <-l.done:
	case <-time.After(timeout):
		t.Fatalf("the NBD load did not finish within %s", timeout)
	}
	if l.err != nil {
		t.Fatal(l.err)
	}
}

// writeSome writes n recorded writes through the primary and waits for them.
func (c *Cluster) writeSome(h *History, seed uint64, n int, region int64, maxBlocks int) {
	c.t.Helper()
	c.startLoad(h, seed, n, region, maxBlocks).wait(c.t, 2*time.Minute)
}

// WaitConsistent waits until the named secondaries (default: every running
// one) finished their initial sync.
func (c *Cluster) WaitConsistent(timeout time.Duration, names ...string) {
	c.t.Helper()
	if len(names) == 0 {
		for _, n := range c.secondaries() {
			if n.Running() {
				names = append(names, n.Name)
			}
		}
	}
	for _, name := range names {
		n := c.Nodes[name]
		n.needRepl()
		WaitFor(c.t, timeout, name+" to be consistent (initial sync done)", func() (bool, string) {
			r, err := n.TryRepl()
			if err != nil {
				return false, err.Error()
			}
			return r.Consistent, fmt.Sprintf("sync %s, error %q", r.Sync, r.Err)
		})
	}
}

// started builds and starts a default three-node cluster and waits until
// the secondaries are consistent.
func started(t *testing.T, opt Options) *Cluster {
	c := NewCluster(t, opt)
	c.StartAll()
	c.WaitConsistent(catchUp)
	return c
}

// assertPrimaryHolds checks that the primary's disk holds exactly the
// writes of h applied to zeros.
func (c *Cluster) assertPrimaryHolds(h *History) {
	c.t.Helper()
	got := c.Primary().ReadDisk()
	want := Apply(nil, c.Size, h.Writes())
	if !bytes.Equal(got, want) {
		c.t.Errorf("the primary's disk differs from its %d recorded writes (at byte %d)", len(h.Writes()), firstDiff(got, want))
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func (c *Cluster) source(name string) string {
	c.t.Helper()
	return c.Nodes[name].Repl().Source
}

// TestWritesReachAllSecondaries: writes through the primary reach both
// secondaries (beta from alpha, gamma cascading from beta); once the
// primary is idle and they caught up, the three disks are byte-identical
// and equal the recorded writes.
func TestWritesReachAllSecondaries(t *testing.T) {
	c := started(t, Options{})
	var h History
	c.writeSome(&h, 1, 400, 32<<20, 16) // ~13 MiB over 8 MiB segments: rotations
	c.WaitCaughtUp(catchUp)
	c.AssertIdentical()
	c.assertPrimaryHolds(&h)
	if s := c.source("beta"); s != "alpha" {
		t.Errorf("beta fetches from %q, want alpha (its connect list is [alpha])", s)
	}
	if s := c.source("gamma"); s != "beta" {
		t.Errorf("gamma fetches from %q, want beta (its connect list is [beta, alpha])", s)
	}
}

// TestCascadingFetch: gamma fetches from beta, not from alpha: while beta
// does not fetch (disconnect), gamma gets nothing beyond beta's log although
// alpha has more; once beta fetches again both catch up.
func TestCascadingFetch(t *testing.T) {
	c := started(t, Options{})
	beta, gamma := c.Nodes["beta"], c.Nodes["gamma"]
	var h History
	c.writeSome(&h, 2, 50, 16<<20, 8)
	c.WaitCaughtUp(catchUp)
	if s := c.source("gamma"); s != "beta" {
		t.Fatalf("gamma fetches from %q, want beta", s)
	}
	beta.Verb("disconnect")
	WaitFor(t, 10*time.Second, "beta to show fetching paused", func() (bool, string) {
		r := beta.Repl()
		return r.FetchPaused, fmt.Sprintf("fetch_paused %v", r.FetchPaused)
	})
	betaEnd := beta.Repl().End
	c.writeSome(&h, 3, 100, 16<<20, 8)
	pend, _ := c.Primary().View().LogEnd(resource)
	if pend.Seq <= betaEnd.Seq {
		t.Fatalf("the primary's log (%s) did not grow past beta's (%s)", pend, betaEnd)
	}
	// Watch gamma for a while: it must stay with beta and not pass it.
	watchUntil := time.Now().Add(3 * time.Second)
	for time.Now().Before(watchUntil) {
		r := gamma.Repl()
		if r.End.Seq > betaEnd.Seq || r.Applied.Seq > betaEnd.Seq {
			t.Fatalf("gamma fetched past beta's log end %s (gamma end %s, source %q): not a cascade", betaEnd, r.End, r.Source)
		}
		if r.Source != "beta" && r.Source != "" {
			t.Fatalf("gamma switched to %q while beta was up (and had all gamma needed)", r.Source)
		}
		time.Sleep(100 * time.Millisecond)
	}
	beta.Verb("connect")
	c.WaitCaughtUp(catchUp)
	if s := c.source("gamma"); s != "beta" {
		t.Errorf("gamma fetches from %q after beta reconnected, want beta", s)
	}
	c.AssertIdentical()
	c.assertPrimaryHolds(&h)
}

// TestLinkCutCatchUp: gamma's link is cut while the primary writes; once
// restored gamma catches up from the log: no full sync starts, it never
// becomes inconsistent, and it receives about the log's bytes, not the disk.
func TestLinkCutCatchUp(t *testing.T) {
	c := started(t, Options{})
	gamma := c.Nodes["gamma"]
	var h History
	c.writeSome(&h, 4, 50, 16<<20, 8)
	c.WaitCaughtUp(catchUp)
	before := gamma.Repl()

	syncs := fullSyncs(gamma)
	gamma.CutLink()
	c.writeSome(&h, 5, 150, 32<<20, 16) // ~5 MiB while gamma is cut off
	cutEnd := gamma.Repl().End
	// Hold the link down a while: gamma must not get anything meanwhile.
	for until := time.Now().Add(3 * time.Second); time.Now().Before(until); time.Sleep(200 * time.Millisecond) {
		if r := gamma.Repl(); r.End.Seq > cutEnd.Seq {
			t.Fatalf("gamma fetched up to %s with its link down (had %s): the link cut did not cut", r.End, cutEnd)
		}
	}
	pend, _ := c.Primary().View().LogEnd(resource)
	if r := gamma.Repl(); r.Applied.Seq >= pend.Seq {
		t.Fatalf("gamma replayed %s with its link down, the primary is at %s: the link cut did not cut", r.Applied, pend)
	}
	_, rx0 := gamma.TxRx()
	gamma.RestoreLink()

	var mu sync.Mutex
	var bad []string
	watch := func() (bool, string) {
		ok, why, _ := c.caughtUp([]string{"beta", "gamma"})
		if r, err := gamma.TryRepl(); err == nil {
			mu.Lock()
			if !r.Consistent {
				bad = append(bad, "gamma became inconsistent")
			}
			if r.Sync != nil && (r.Sync.State == "running" || before.Sync == nil || r.Sync.Transferred != before.Sync.Transferred) {
				bad = append(bad, "gamma started a full sync: "+r.Sync.String())
			}
			mu.Unlock()
		}
		return ok, why
	}
	WaitFor(t, catchUp, "gamma to catch up after its link came back", watch)
	if len(bad) > 0 {
		t.Errorf("during catch-up: %s", strings.Join(dedup(bad), "; "))
	}
	_, rx1 := gamma.TxRx()
	var written int64
	for _, w := range h.Writes()[50:] {
		written += int64(len(w.Data))
	}
	t.Logf("gamma received %d bytes to catch up on %d bytes of writes", rx1-rx0, written)
	if rx1-rx0 > written*3/2+(1<<20) {
		t.Errorf("gamma received %d bytes to catch up on %d bytes of writes: more than the log", rx1-rx0, written)
	}
	if n := fullSyncs(gamma); n != syncs {
		t.Errorf("gamma's log shows %d full syncs started after the link cut (%d before)", n, syncs)
	}
	c.AssertIdentical()
}

// fullSyncs counts the full syncs n's log says were started.
func fullSyncs(n *Node) int { return strings.Count(n.Log(), "full sync started") }

func dedup(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, x := range s {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

// TestPriorityFallbackAndReturn: gamma prefers beta; with beta killed it
// fetches from alpha, and returns to beta once beta is back.
func TestPriorityFallbackAndReturn(t *testing.T) {
	c := started(t, Options{})
	beta := c.Nodes["beta"]
	var h History
	c.writeSome(&h, 6, 50, 16<<20, 8)
	c.WaitCaughtUp(catchUp)
	if s := c.source("gamma"); s != "beta" {
		t.Fatalf("gamma fetches from %q, want beta", s)
	}

	beta.Kill()
	c.writeSome(&h, 7, 100, 16<<20, 8)
	WaitFor(t, switchAll, "gamma to fall back to alpha", func() (bool, string) {
		s := c.source("gamma")
		return s == "alpha", fmt.Sprintf("source %q", s)
	})
	c.WaitCaughtUp(catchUp, "gamma")

	beta.Start()
	c.writeSome(&h, 8, 50, 16<<20, 8)
	c.WaitCaughtUp(catchUp, "beta")
	WaitFor(t, switchAll, "gamma to return to beta", func() (bool, string) {
		s := c.source("gamma")
		return s == "beta", fmt.Sprintf("source %q", s)
	})
	c.writeSome(&h, 9, 50, 16<<20, 8)
	c.WaitCaughtUp(catchUp)
	c.AssertIdentical()
	c.assertPrimaryHolds(&h)
}

// TestKillSecondaryMidReplay: beta is killed -9 twice while it replays a
// running load; restarted, it resumes from its persisted positions and
// converges.
func TestKillSecondaryMidReplay(t *testing.T) {
	c := started(t, Options{})
	beta := c.Nodes["beta"]
	syncs := fullSyncs(beta)
	var h History
	for cycle := range 2 {
		l := c.startLoad(&h, uint64(10+cycle), 0, 32<<20, 16)
		start := beta.Repl().Applied.Seq
		WaitFor(t, 20*time.Second, "beta to be replaying the load", func() (bool, string) {
			r := beta.Repl()
			return r.Applied.Seq > start+20, fmt.Sprintf("beta replayed %s", r.Applied)
		})
		beta.Kill()
		issued, _ := h.Counts()
		WaitFor(t, 20*time.Second, "more writes while beta is down", func() (bool, string) {
			n, _ := h.Counts()
			return n > issued+50, fmt.Sprintf("%d writes", n)
		})
		beta.Start()
		WaitFor(t, 20*time.Second, "more writes after beta restarted", func() (bool, string) {
			n, _ := h.Counts()
			return n > issued+100, fmt.Sprintf("%d writes", n)
		})
		if err := l.stop(t); err != nil {
			t.Fatal(err)
		}
	}
	c.WaitCaughtUp(catchUp)
	c.AssertIdentical()
	c.assertPrimaryHolds(&h)
	if n := fullSyncs(beta); n != syncs {
		t.Errorf("beta ran %d full syncs after its kills (%d before): its persisted positions should have sufficed", n-syncs, syncs)
	}
}

// TestKillPrimaryMidStream: the primary is killed -9 while it writes and
// ships; restarted, its disk holds every acknowledged write (and at most
// the one in flight), and the secondaries converge to it.
func TestKillPrimaryMidStream(t *testing.T) {
	c := started(t, Options{})
	alpha := c.Primary()
	var h History
	l := c.startLoad(&h, 20, 0, 32<<20, 16)
	WaitFor(t, 20*time.Second, "the secondaries to be fetching the load", func() (bool, string) {
		_, acked := h.Counts()
		r := c.Nodes["beta"].Repl()
		return acked > 200 && r.End.Seq > 50, fmt.Sprintf("%d writes acknowledged, beta fetched %s", acked, r.End)
	})
	alpha.Kill()
	err := l.stop(t)
	issued, acked := h.Counts()
	t.Logf("killed the primary after %d writes acknowledged, %d sent (load ended with: %v)", acked, issued, err)

	alpha.Start()
	snap := alpha.ReadDisk()
	writes := h.Writes()
	k := PrefixOf(snap, nil, writes, acked)
	if k < 0 {
		t.Fatalf("after kill -9 and restart the primary's disk is not the state after the %d acknowledged writes (nor after the one in flight)", acked)
	}
	// Go on from the state the primary holds.
	h2 := History{writes: append([]Write(nil), writes[:k]...), acked: k}
	c.writeSome(&h2, 21, 100, 32<<20, 16)
	c.WaitCaughtUp(catchUp)
	c.AssertIdentical()
	c.assertPrimaryHolds(&h2)
}

// TestJoinTransfersOnlyDifferingChunks: alpha and beta hold the same 200 MiB
// of random data; gamma joins with a copy where 2 of its 200 chunks of 1 MiB
// differ (1 %). Its full sync transfers about those chunks: view's
// transferred bytes and the bytes gamma's link received are at most 3 % of
// the disk, at least the differing chunks, and the disks end up identical.
func TestJoinTransfersOnlyDifferingChunks(t *testing.T) {
	const size, chunk = 200 << 20, 1 << 20
	c := NewCluster(t, Options{DiskSize: size})
	alpha, gamma := c.Primary(), c.Nodes["gamma"]
	img := make([]byte, size)
	fillRandom(rand.New(rand.NewPCG(30, 31)), img)
	for _, n := range []*Node{alpha, c.Nodes["beta"]} {
		if err := os.WriteFile(n.Disk, img, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	differ := []int{17, 150}
	for _, ch := range differ {
		img[ch*chunk+12345] ^= 0xff
	}
	if err := os.WriteFile(gamma.Disk, img, 0o600); err != nil {
		t.Fatal(err)
	}
	img = nil

	alpha.Start()
	c.Nodes["beta"].Start()
	c.WaitConsistent(2*catchUp, "beta")
	_, rx0 := gamma.TxRx()
	gamma.Start()
	var maxSync SyncProgress
	WaitFor(t, 2*catchUp, "gamma to join (sync done, consistent)", func() (bool, string) {
		r, err := gamma.TryRepl()
		if err != nil {
			return false, err.Error()
		}
		if r.Sync != nil && r.Sync.Transferred >= maxSync.Transferred {
			maxSync = *r.Sync
		}
		return r.Consistent, fmt.Sprintf("sync %s", r.Sync)
	})
	c.WaitCaughtUp(catchUp)
	_, rx1 := gamma.TxRx()
	r := gamma.Repl()
	if r.Sync != nil && r.Sync.Transferred > maxSync.Transferred {
		maxSync = *r.Sync
	}
	diffBytes := int64(len(differ) * chunk)
	// The view shows the sync only while it runs (a poll may miss a short
	// one); the daemon's log reports the bytes when the chunks are done.
	logged, ok := loggedTransferred(gamma)
	t.Logf("join: %d differing bytes of %d; view showed at most %s; gamma's log says %d bytes transferred; gamma's link received %d bytes", diffBytes, size, &maxSync, logged, rx1-rx0)
	switch {
	case !ok && maxSync.Total == 0:
		t.Errorf("neither `tharsis view --json` nor gamma's log reported the bytes its sync transferred (issue 6 item 5)")
	case ok && (logged < diffBytes || logged > size*3/100):
		t.Errorf("gamma's log says the sync transferred %d bytes; want between the %d differing bytes and 3 %% of %d", logged, diffBytes, size)
	case maxSync.Transferred > size*3/100:
		t.Errorf("view says the sync transferred %d bytes; want at most 3 %% of %d", maxSync.Transferred, size)
	}
	if b, ok := loggedTransferred(c.Nodes["beta"]); ok && b != 0 {
		t.Errorf("beta joined with a disk identical to alpha's, yet its sync transferred %d bytes", b)
	}
	if got := rx1 - rx0; got > size*3/100 {
		t.Errorf("gamma's link received %d bytes during the join: more than 3 %% of the %d-byte disk", got, size)
	}
	c.AssertIdentical()
}

// transferredRE matches the bytes a full sync transferred in a daemon log line.
var transferredRE = regexp.MustCompile(`transferred_bytes=(\d+)`)

// loggedTransferred returns the bytes the last full sync of n transferred,
// from its log.
func loggedTransferred(n *Node) (int64, bool) {
	m := transferredRE.FindAllStringSubmatch(n.Log(), -1)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseInt(m[len(m)-1][1], 10, 64)
	return v, err == nil
}

// TestWrongSecretRefused: gamma's secret_file holds another secret: it gets
// no data, and both it and the peer it tries log the refused authentication.
func TestWrongSecretRefused(t *testing.T) {
	c := NewCluster(t, Options{Secrets: map[string]string{"gamma": "not the cluster's secret\n"}})
	c.StartAll()
	c.WaitConsistent(catchUp, "beta")
	var h History
	c.writeSome(&h, 40, 100, 16<<20, 8)
	c.WaitCaughtUp(catchUp, "beta")
	gamma := c.Nodes["gamma"]
	// gamma says its peers failed authentication; they say gamma did.
	gammaLine := regexp.MustCompile(`(?i)fail\w* (to )?authenticat`)
	peerLine := regexp.MustCompile(`(?i)gamma.*fail\w* (to )?authenticat|fail\w* (to )?authenticat.*gamma`)
	WaitFor(t, switchAll, "the refusal in gamma's log and in alpha's or beta's", func() (bool, string) {
		g := gammaLine.MatchString(gamma.Log())
		p := peerLine.MatchString(c.Nodes["alpha"].Log()) || peerLine.MatchString(c.Nodes["beta"].Log())
		return g && p, fmt.Sprintf("gamma's log mentions it: %v, alpha's or beta's: %v", g, p)
	})
	r := gamma.Repl()
	if r.Consistent || r.End.Seq != 0 || r.Applied.Seq != 0 {
		t.Errorf("gamma, with the wrong secret, is consistent=%v with log end %s and replayed %s: it got data", r.Consistent, r.End, r.Applied)
	}
	zero := make([]byte, c.Size)
	if !bytes.Equal(gamma.ReadDisk(), zero) {
		t.Errorf("gamma's disk is no longer zero: it got data with the wrong secret")
	}
	c.AssertIdentical("alpha", "beta")
}

// pausedSnapshot pauses n's replay, reads its disk once replay stands still,
// and resumes it. pause-replay takes effect between replay batches, so the
// read counts only if the replay position is the same before and after it
// (and replay is shown paused); otherwise it is taken again.
func pausedSnapshot(t *testing.T, n *Node) []byte {
	t.Helper()
	n.Verb("pause-replay")
	var snap []byte
	WaitFor(t, 20*time.Second, "a read of "+n.Name+"'s disk with its replay standing still", func() (bool, string) {
		a := n.Repl()
		snap = n.ReadDisk()
		b := n.Repl()
		return a.ReplayPaused && b.ReplayPaused && a.Applied == b.Applied,
			fmt.Sprintf("replay paused %v, replayed %s before the read and %s after", b.ReplayPaused, a.Applied, b.Applied)
	})
	n.Verb("resume-replay")
	return snap
}

// TestConsistencyPrefix: while the primary writes, beta's and gamma's disks
// are snapshot at random moments (pause-replay, read the disk file,
// resume-replay): each snapshot equals the primary's state after some
// prefix of the acknowledged writes, and the prefixes of a node never go
// back. Once idle and caught up, all are identical.
func TestConsistencyPrefix(t *testing.T) {
	c := started(t, Options{})
	var h History
	l := c.startLoad(&h, 50, 0, 8<<20, 8)
	rng := rand.New(rand.NewPCG(51, 52))
	last := map[string]int{}
	target := 0
	for i := range 8 {
		n := c.Nodes[[]string{"beta", "gamma"}[i%2]]
		target += 20 + rng.IntN(120)
		WaitFor(t, 30*time.Second, fmt.Sprintf("%d writes acknowledged", target), func() (bool, string) {
			_, acked := h.Counts()
			return acked >= target, fmt.Sprintf("%d acknowledged", acked)
		})
		snap := pausedSnapshot(t, n)
		writes := h.Writes()
		_, acked := h.Counts()
		k := PrefixOf(snap, nil, writes, last[n.Name])
		if k < 0 {
			if PrefixOf(snap, nil, writes, 0) >= 0 {
				t.Fatalf("snapshot %d of %s is an earlier prefix than its previous one (%d writes): replay went back", i, n.Name, last[n.Name])
			}
			t.Fatalf("snapshot %d of %s (taken with replay paused, %d writes sent) is not the primary's state after any prefix of them: inconsistent", i, n.Name, len(writes))
		}
		t.Logf("snapshot %d of %s: state after %d of %d acknowledged writes", i, n.Name, k, acked)
		last[n.Name] = k
	}
	if err := l.stop(t); err != nil {
		t.Fatal(err)
	}
	if last["beta"] == 0 && last["gamma"] == 0 {
		t.Errorf("every snapshot was the empty state: replay never ran while writes did, so the prefix property was not tested")
	}
	c.WaitCaughtUp(catchUp)
	c.AssertIdentical()
	c.assertPrimaryHolds(&h)
}
