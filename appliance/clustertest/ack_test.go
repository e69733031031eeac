package clustertest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// Synchronous acknowledgement (issue 15 item 3): with ack_secondaries = 1
// a write acknowledged through NBD survives a kill -9 of the primary and a
// forced failover to the secondary holding the most, which says so; with
// a finite ack_timeout and no secondary fetching, the primary falls back
// to asynchronous, says so, and returns to synchronous when one is back.

// peerSeen is what a node's cluster view shows of another node.
type peerSeen struct {
	Node      string   `json:"node"`
	Reachable bool     `json:"reachable"`
	Source    string   `json:"source"`
	LogEnd    Position `json:"log_end"`
}

// clusterView returns n's `tharsis view --json` of r0 (every node as n
// sees it) and whether it shows the primary's fallback.
func (n *Node) clusterView() ([]peerSeen, bool, string, error) {
	out, err := n.tharsis(15*time.Second, "view", "--json", "--socket", n.Socket)
	if err != nil {
		return nil, false, "", err
	}
	var v struct {
		Resources []struct {
			Name        string     `json:"name"`
			Nodes       []peerSeen `json:"nodes"`
			AckFallback bool       `json:"ack_fallback"`
			Todo        []string   `json:"todo"`
		} `json:"resources"`
	}
	if err := json.Unmarshal(out, &v); err != nil {
		return nil, false, "", fmt.Errorf("view --json of %s: %w", n.Name, err)
	}
	for _, r := range v.Resources {
		if r.Name == resource {
			return r.Nodes, r.AckFallback, strings.Join(r.Todo, "\n"), nil
		}
	}
	return nil, false, "", fmt.Errorf("view of %s shows no %s", n.Name, resource)
}

func TestAckForcedFailoverLosesNothing(t *testing.T) {
	c := started(t, Options{Connect: map[string][]string{}, ResourceExtra: "ack_secondaries = 1\nack_timeout = \"forever\"\n"})
	type write struct {
		off  int64
		data []byte
	}
	var acked []write
	const perRound = 24
	deadline := time.Now().Add(6 * time.Minute)
	for round := 0; round < 5 && time.Now().Before(deadline); round++ {
		p := c.Primary()
		conn := c.MustDialNBD()
		for j := range perRound {
			w := write{off: int64(round*perRound+j) * block, data: bytes.Repeat([]byte{byte(round*perRound + j + 1)}, block)}
			if err := conn.WriteAt(w.data, w.off, false); err != nil {
				t.Fatalf("round %d: write %d through %s: %v", round, j, p.Name, err)
			}
			acked = append(acked, w)
		}
		p.Kill() // right after the last acknowledged write
		conn.Close()
		var others []*Node
		for _, name := range c.Order {
			if name != p.Name {
				others = append(others, c.Nodes[name])
			}
		}
		// Their streams from the dead primary end; force the one that
		// holds the most, once it sees the other's final log end.
		ends := map[string]uint64{}
		for _, o := range others {
			WaitFor(t, 30*time.Second, o.Name+" to stop fetching from "+p.Name, func() (bool, string) {
				r, err := o.TryRepl()
				if err != nil {
					return false, err.Error()
				}
				ends[o.Name] = r.End.Seq
				return r.Source != p.Name, "source " + r.Source
			})
		}
		slices.SortFunc(others, func(a, b *Node) int { return int(ends[b.Name]) - int(ends[a.Name]) })
		x, y := others[0], others[1]
		WaitFor(t, 30*time.Second, x.Name+" to see "+y.Name+"'s final log end", func() (bool, string) {
			nodes, _, _, err := x.clusterView()
			if err != nil {
				return false, err.Error()
			}
			for _, n := range nodes {
				if n.Node == y.Name {
					return n.Reachable && n.Source != p.Name && n.LogEnd.Seq == ends[y.Name], fmt.Sprintf("%+v", n)
				}
			}
			return false, "not in the view"
		})
		out, err := x.roleCmd("primary", "--force")
		if err != nil {
			t.Fatalf("round %d: primary --force on %s: %v", round, x.Name, err)
		}
		if !strings.Contains(out, "no acknowledged write is lost") {
			t.Errorf("round %d: primary --force on %s does not prove that nothing acknowledged is lost: %s", round, x.Name, out)
		}
		c.SetPrimary(x.Name)
		x.waitRole(30*time.Second, "primary", x.Name)
		rc := c.MustDialNBD()
		got := make([]byte, block)
		for i, w := range acked {
			if err := rc.ReadAt(got, w.off); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, w.data) {
				t.Fatalf("round %d: acknowledged write %d (at %d) is not on the new primary %s: reads %x…", round, i, w.off, x.Name, got[:8])
			}
		}
		rc.Close()
		// The old primary comes back as a secondary of the new one.
		p.Start()
		WaitFor(t, 60*time.Second, p.Name+" to follow "+x.Name, func() (bool, string) {
			r, err := p.TryRepl()
			if err != nil {
				return false, err.Error()
			}
			if r.Diverged {
				t.Fatalf("round %d: %s's log forks from %s's: it held a write %s lacks", round, p.Name, x.Name, x.Name)
			}
			return r.Phase == "secondary" && r.Designation.Primary == x.Name && r.Consistent, fmt.Sprintf("phase %s of %s, consistent %v", r.Phase, r.Designation.Primary, r.Consistent)
		})
		c.WaitCaughtUp(catchUp)
		t.Logf("round %d: %d writes acknowledged so far, all on %s after %s was killed", round, len(acked), x.Name, p.Name)
	}
	c.AssertIdentical()
}

func TestAckTimeoutFallback(t *testing.T) {
	c := started(t, Options{Connect: map[string][]string{}, ResourceExtra: "ack_secondaries = 1\nack_timeout = \"1s\"\n"})
	alpha, beta, gamma := c.Nodes["alpha"], c.Nodes["beta"], c.Nodes["gamma"]
	conn := c.MustDialNBD()
	defer conn.Close()
	data := bytes.Repeat([]byte{0x5a}, block)
	if err := conn.WriteAt(data, 0, false); err != nil {
		t.Fatal(err)
	}
	if _, fb, _, err := alpha.clusterView(); err != nil || fb {
		t.Fatalf("synchronous with both secondaries: fallback %v, %v", fb, err)
	}
	beta.Verb("disconnect")
	gamma.Verb("disconnect")
	// Nobody acknowledges: the write returns after ack_timeout, asynchronous.
	if err := conn.WriteAt(data, block, false); err != nil {
		t.Fatalf("write with no secondary fetching: %v", err)
	}
	_, fb, todo, err := alpha.clusterView()
	if err != nil || !fb || !strings.Contains(todo, "ASYNCHRONOUS on alpha") {
		t.Errorf("after the fallback: ack_fallback %v (%v), todo:\n%s", fb, err, todo)
	}
	if !strings.Contains(alpha.Log(), "FALLBACK to asynchronous") {
		t.Error("no WARN about the fallback in alpha's log")
	}
	if out, err := alpha.tharsis(15*time.Second, "check", "--socket", alpha.Socket); err == nil || !strings.Contains(string(out), "ASYNCHRONOUS FALLBACK") {
		t.Errorf("tharsis check after the fallback: %v\n%s", err, out)
	}
	text, _ := alpha.tharsis(15*time.Second, "view", "--socket", alpha.Socket)
	if !strings.Contains(string(text), "ack: ASYNCHRONOUS FALLBACK") {
		t.Errorf("tharsis view does not show the fallback:\n%s", text)
	}
	// beta back: the next write is shipped and acknowledged, and the
	// primary is synchronous again.
	beta.Verb("connect")
	WaitFor(t, catchUp, "alpha synchronous again", func() (bool, string) {
		if err := conn.WriteAt(data, 2*block, false); err != nil {
			return false, err.Error()
		}
		_, fb, _, err := alpha.clusterView()
		return err == nil && !fb, fmt.Sprint(fb, err)
	})
	if !strings.Contains(alpha.Log(), "synchronous acknowledgement again") {
		t.Error("no WARN about the return in alpha's log")
	}
}
