package replicate

import (
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tharsis/tharsis/internal/testutil"
)

// designatedSource serves a Source as a node that follows a designation:
// its status says it, and it checks fetchers with RoleStatus.RefuseShip,
// adopting a newer designation a fetcher carries as the appliance's role
// core does (a primary of the older one is then unverified).
type designatedSource struct {
	Source
	mu      sync.Mutex
	st      RoleStatus
	learned []string // "from: designation", each newer one a fetcher told
}

func (s *designatedSource) Status() ResourceStatus {
	rs := s.Source.Status()
	s.mu.Lock()
	defer s.mu.Unlock()
	rs.Designation, rs.Diverged, rs.Unverified = s.st.Designation, s.st.Diverged, s.st.Unverified
	return rs
}

func (s *designatedSource) CheckFetch(peer string, d Designation) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.st.RefuseShip(&d)
	if errors.Is(err, ErrStaleDesignation) {
		s.learned = append(s.learned, peer+": "+d.String())
		s.st.StaleDesignation, s.st.Designation, s.st.Unverified = s.st.Designation, d, true
	}
	return err
}

func (s *designatedSource) Refuse() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.RefuseShip(nil)
}

func (s *designatedSource) learnedList() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.learned...)
}

// TestNoFetchFromOlderGeneration is the partition-heal race: alpha still
// believes it is the primary of generation 1 and holds writes nobody
// fetched; beta took over by force (generation 2) and wrote its own
// history. gamma follows generation 2 but prefers alpha: it must not take
// a record of alpha's fork, falls back to beta, and alpha learns
// generation 2 from the refused fetch. The refusal is logged once, at
// INFO, however often gamma retries.
func TestNoFetchFromOlderGeneration(t *testing.T) {
	const size = 2 << 20
	a, b, c := newNode(t, "alpha", size), newNode(t, "beta", size), newNode(t, "gamma", size)
	a.startPrimary(128 << 10)
	b.startPrimary(128 << 10)
	stale := &designatedSource{Source: PrimarySource(a.prim), st: RoleStatus{Phase: PhasePrimary, Designation: Designation{Primary: "alpha", Generation: 1}}}
	cur := &designatedSource{Source: PrimarySource(b.prim), st: RoleStatus{Phase: PhasePrimary, Designation: Designation{Primary: "beta", Generation: 2}}}
	a.srv.AddResource("r0", stale)
	b.srv.AddResource("r0", cur)
	wa := &writer{rng: rand.New(rand.NewPCG(11, 12))}
	wb := &writer{rng: rand.New(rand.NewPCG(13, 14))}
	wa.write(t, a.prim, 60) // alpha's fork: never to reach gamma
	wb.write(t, b.prim, 40)

	gen2 := func() (Designation, bool) { return Designation{Primary: "beta", Generation: 2}, true }
	c.startSecondary(func() []Peer { return []Peer{a.peer(), b.peer()} }, func(o *SecondaryOptions) { o.Designation = gen2 })
	waitCaughtUp(t, b.prim, c)
	wb.write(t, b.prim, 40)
	waitCaughtUp(t, b.prim, c)
	sameData(t, b, c)
	for _, s := range c.sec.Status().Segments {
		if strings.HasSuffix(s.Name, "-alpha") {
			t.Fatalf("gamma holds %s of alpha's fork", s.Name)
		}
	}
	if got := stale.learnedList(); len(got) != 1 || got[0] != "gamma: beta (generation 2)" {
		t.Errorf("alpha learned %q from fetches, want generation 2 from gamma once", got)
	}
	// The reverse direction: alpha now follows generation 2 but its log
	// is unverified: a fetcher of generation 2 is refused as well, and
	// alpha is not probed as a preferred source again.
	if err := stale.Refuse(); err == nil {
		t.Error("alpha, unverified after learning generation 2, would ship its log")
	}
	logs := c.logBuf.String()
	if n := strings.Count(logs, "refused to ship its log"); n != 1 {
		t.Errorf("gamma logged the refusal %d times, want once:\n%s", n, logs)
	}
	if !strings.Contains(logs, "level=INFO msg=\"a peer of an older designation refused") || !strings.Contains(logs, "its log may be the losing side of a fork: it follows alpha (generation 1), the fetcher beta (generation 2)") {
		t.Errorf("gamma's log does not say why alpha refused (at INFO):\n%s", logs)
	}
	if strings.Contains(logs, "switching to it") {
		t.Errorf("gamma switched back to alpha after the refusal:\n%s", logs)
	}
}

// TestFetchDesignationCompat: the designation is sent only to servers that
// list FeatureFetchDesignation (one of the release before would drop the
// connection), and fetchers that do not send it are served as before.
func TestFetchDesignationCompat(t *testing.T) {
	tests := []struct {
		name       string
		oldServer  bool // knows fetch-accept but not the designation
		oldFetcher bool // sends neither Accept nor Designation
	}{
		{"old server", true, false},
		{"old fetcher", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const size = 2 << 20
			a, b := newNode(t, "alpha", size), newNode(t, "beta", size)
			a.srv.noFetchDesignation = tt.oldServer
			a.startPrimary(128 << 10)
			src := &designatedSource{Source: PrimarySource(a.prim), st: RoleStatus{Phase: PhasePrimary, Designation: Designation{Primary: "alpha", Generation: 1}}}
			a.srv.AddResource("r0", src)
			w := &writer{rng: rand.New(rand.NewPCG(21, 22))}
			w.write(t, a.prim, 40)
			b.beforeRun = func(s *Secondary) { s.noAccept = tt.oldFetcher }
			b.startSecondary(func() []Peer { return []Peer{a.peer()} }, func(o *SecondaryOptions) {
				o.Designation = func() (Designation, bool) { return Designation{Primary: "alpha", Generation: 1}, true }
			})
			waitCaughtUp(t, a.prim, b)
			sameData(t, a, b)
			testutil.WaitFor(t, 5*time.Second, "the stream to stay up", func() bool { return b.sec.Status().Source == "alpha" })
			if strings.Contains(b.logBuf.String(), "fetching the log failed") {
				t.Errorf("a fetch failed:\nalpha:\n%s\nbeta:\n%s", a.logBuf.String(), b.logBuf.String())
			}
		})
	}
}
