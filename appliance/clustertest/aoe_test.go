package clustertest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/tharsis/tharsis/aoe"
)

// AoE exports follow the primary (issue 11): target e1.1 of r0 is served
// on the primary's veth; an initiator in a client namespace on the same
// bridge talks to it. What initiators set (config string, Mac Mask list,
// reservations) travels with the resource.

const (
	aoeShelf = 1
	aoeSlot  = 1
)

// aoeClient is a network namespace on the cluster's bridge for AoE
// initiators.
type aoeClient struct {
	c  *Cluster
	NS string
}

// AoEClient creates the client namespace (removed in t.Cleanup), its
// interface nodeDev joined to the bridge, in promiscuous mode so that an
// initiator there also hears responses to the MACs it plays (ExchangeAs).
func (c *Cluster) AoEClient() *aoeClient {
	c.t.Helper()
	cl := &aoeClient{c: c, NS: "tc" + c.ID + "-aoecl"}
	if err := addNetns(cl.NS); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { _ = ipCmd("netns", "del", cl.NS) })
	for _, args := range [][]string{
		{"link", "add", nodeDev, "netns", cl.NS, "type", "veth", "peer", "name", "v-aoecl", "netns", c.BridNS},
		{"-n", c.BridNS, "link", "set", "v-aoecl", "master", "br0", "up"},
		{"-n", cl.NS, "link", "set", nodeDev, "promisc", "on", "up"},
	} {
		if err := ipCmd(args...); err != nil {
			c.t.Fatal(err)
		}
	}
	return cl
}

// Initiator opens an AoE initiator in the client namespace (closed in
// t.Cleanup).
func (cl *aoeClient) Initiator() *aoe.Initiator {
	cl.c.t.Helper()
	var in *aoe.Initiator
	if err := inNetns(cl.NS, func() (err error) {
		in, err = aoe.NewInitiator(nodeDev)
		return err
	}); err != nil {
		cl.c.t.Fatal(err)
	}
	cl.c.t.Cleanup(func() { in.Close() })
	return in
}

// MAC is the Ethernet address of n's veth (where it serves AoE).
func (n *Node) MAC() aoe.MAC {
	n.c.t.Helper()
	out, err := exec.Command("ip", "-n", n.NS, "-j", "link", "show", nodeDev).Output()
	if err != nil {
		n.c.t.Fatalf("ip link in %s: %v", n.NS, err)
	}
	var links []struct {
		Address string `json:"address"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		n.c.t.Fatalf("ip -j link: %v: %s", err, out)
	}
	var m aoe.MAC
	if _, err := fmt.Sscanf(links[0].Address, "%x:%x:%x:%x:%x:%x", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]); err != nil {
		n.c.t.Fatalf("MAC %q: %v", links[0].Address, err)
	}
	return m
}

// aoeRequest sends one request for e1.1 from src (another MAC than the
// initiator's own when playing a second initiator) to dst and returns the
// first response, or aoe.ErrNoResponse.
func aoeRequest(in *aoe.Initiator, src, dst aoe.MAC, cmd aoe.Command, arg []byte) (aoe.Response, error) {
	rs, err := in.ExchangeAs(context.Background(), src, dst, aoeShelf, aoeSlot, cmd, arg, 500*time.Millisecond, true)
	if err != nil {
		return aoe.Response{}, err
	}
	return rs[0], nil
}

// aoeState is what a target answers for its config string, Mac Mask list
// and reserve list.
type aoeState struct {
	Config  string
	Masks   []aoe.MAC
	Reserve []aoe.MAC
}

// readAoEState asks dst's e1.1 for its state as src.
func readAoEState(in *aoe.Initiator, src, dst aoe.MAC) (aoeState, error) {
	var st aoeState
	q, _ := (&aoe.Config{Version: aoe.Version}).AppendBinary(nil)
	r, err := aoeRequest(in, src, dst, aoe.CmdConfig, q)
	if err != nil {
		return st, fmt.Errorf("query config: %w", err)
	}
	var c aoe.Config
	if err := c.Decode(r.Arg); err != nil {
		return st, err
	}
	st.Config = string(c.String)
	if r, err = aoeRequest(in, src, dst, aoe.CmdMask, []byte{0, byte(aoe.MaskRead), 0, 0}); err != nil {
		return st, fmt.Errorf("mac mask read: %w", err)
	}
	var m aoe.Mask
	if err := m.Decode(r.Arg); err != nil {
		return st, err
	}
	for i := range int(m.Count) {
		_, mac := m.Directive(i)
		st.Masks = append(st.Masks, mac)
	}
	if r, err = aoeRequest(in, src, dst, aoe.CmdReserve, []byte{byte(aoe.ReserveRead), 0}); err != nil {
		return st, fmt.Errorf("reserve read: %w", err)
	}
	var rr aoe.Reserve
	if err := rr.Decode(r.Arg); err != nil {
		return st, err
	}
	for i := range int(rr.Count) {
		st.Reserve = append(st.Reserve, rr.MAC(i))
	}
	return st, nil
}

// aoeRead reads sector 0 of dst's e1.1 as src: nil, the AoE error of the
// response, or aoe.ErrNoResponse.
func aoeRead(in *aoe.Initiator, src, dst aoe.MAC) error {
	arg, _ := (&aoe.ATA{Flags: aoe.ATAExtended, CmdStat: aoe.ATAReadSectorsExt, Sectors: 1}).AppendBinary(nil)
	r, err := aoeRequest(in, src, dst, aoe.CmdATA, arg)
	if err != nil {
		return err
	}
	if r.Header.Flags&aoe.FlagError != 0 {
		return r.Header.Error
	}
	return nil
}

// persistedAoE reads n's persisted state of e1.1.
func (n *Node) persistedAoE() (aoe.State, bool) {
	st, ok, err := aoe.LoadState(n.StateDir, aoeShelf, aoeSlot)
	if err != nil {
		n.c.t.Fatal(err)
	}
	return st, ok
}

// waitAoEServer waits until e1.1 answers at n's MAC and no other node's.
func (c *Cluster) waitAoEServer(in *aoe.Initiator, n *Node) {
	c.t.Helper()
	WaitFor(c.t, 20*time.Second, "e1.1 served by "+n.Name+" alone", func() (bool, string) {
		ts, err := in.Discover(context.Background(), 300*time.Millisecond)
		if err != nil {
			return false, err.Error()
		}
		if len(ts) != 1 || ts[0].MAC != n.MAC() || ts[0].Shelf != aoeShelf || ts[0].Slot != aoeSlot {
			return false, fmt.Sprintf("discovered %v", ts)
		}
		return true, ""
	})
}

// aoeHandover runs `tharsis primary r0` on n and waits until n serves e1.1
// alone.
func (c *Cluster) aoeHandover(in *aoe.Initiator, n *Node) {
	c.t.Helper()
	out, err := n.roleCmd("primary")
	if err != nil {
		c.t.Fatalf("primary on %s: %v", n.Name, err)
	}
	c.t.Logf("tharsis primary r0 on %s: %s", n.Name, out)
	c.SetPrimary(n.Name)
	n.waitRole(10*time.Second, "primary", n.Name)
	c.waitAoEServer(in, n)
}

// TestAoEStateFollowsHandover: a Mac Mask list, a reservation and a
// config string set on alpha's e1.1 by initiators reach the secondaries
// (persisted from alpha's status); `tharsis primary r0` on beta moves e1.1
// to beta, which announces it to the MACs on the Mac Mask list, answers
// with the same state and enforces it (a MAC off the list gets nothing, a
// listed MAC without the reservation gets error 6), while alpha answers
// nothing. A change made on beta just before the handover back to alpha
// is enforced by alpha.
func TestAoEStateFollowsHandover(t *testing.T) {
	c := started(t, Options{AoE: true})
	alpha, beta, gamma := c.Nodes["alpha"], c.Nodes["beta"], c.Nodes["gamma"]
	cl := c.AoEClient()
	in := cl.Initiator()
	me := in.MAC()
	friend := aoe.MAC{0x02, 0x11, 0x11, 0x11, 0x11, 0x11}   // on the Mac Mask list, not reserved
	stranger := aoe.MAC{0x02, 0x22, 0x22, 0x22, 0x22, 0x22} // off the list
	c.waitAoEServer(in, alpha)

	// Set the state on alpha: config string, Mac Mask list {me, friend},
	// reservation {me}.
	cfgSet, _ := (&aoe.Config{Version: aoe.Version, Command: aoe.ConfigSet, String: []byte("clustertest")}).AppendBinary(nil)
	if _, err := aoeRequest(in, me, alpha.MAC(), aoe.CmdConfig, cfgSet); err != nil {
		t.Fatal(err)
	}
	edit := aoe.AppendDirective(aoe.AppendDirective([]byte{0, byte(aoe.MaskEdit), 0, 2}, aoe.DirAdd, me), aoe.DirAdd, friend)
	if _, err := aoeRequest(in, me, alpha.MAC(), aoe.CmdMask, edit); err != nil {
		t.Fatal(err)
	}
	if _, err := aoeRequest(in, me, alpha.MAC(), aoe.CmdReserve, append([]byte{byte(aoe.ReserveSet), 1}, me[:]...)); err != nil {
		t.Fatal(err)
	}
	want := aoeState{Config: "clustertest", Masks: []aoe.MAC{me, friend}, Reserve: []aoe.MAC{me}}
	enforces := func(n *Node, want aoeState) {
		t.Helper()
		got, err := readAoEState(in, me, n.MAC())
		if err != nil {
			t.Fatalf("%s: %v", n.Name, err)
		}
		if got.Config != want.Config || !slices.Equal(got.Masks, want.Masks) || !slices.Equal(got.Reserve, want.Reserve) {
			t.Fatalf("%s's e1.1 state %+v, want %+v", n.Name, got, want)
		}
		if err := aoeRead(in, me, n.MAC()); err != nil {
			t.Fatalf("%s: read by the reserving MAC: %v", n.Name, err)
		}
		for _, m := range []aoe.MAC{friend, stranger} {
			err := aoeRead(in, m, n.MAC())
			switch {
			case !slices.Contains(want.Masks, m):
				if !errors.Is(err, aoe.ErrNoResponse) {
					t.Fatalf("%s: read by %s, off the Mac Mask list: %v, want no response", n.Name, m, err)
				}
			case !slices.Contains(want.Reserve, m):
				if !errors.Is(err, aoe.ErrTargetReserved) {
					t.Fatalf("%s: read by %s, not reserving: %v, want error 6 (reserved)", n.Name, m, err)
				}
			}
		}
	}
	enforces(alpha, want)

	// The secondaries keep the primary's state, polled from its status.
	for _, n := range []*Node{beta, gamma} {
		WaitFor(t, 10*time.Second, n.Name+" to persist alpha's AoE state", func() (bool, string) {
			st, ok := n.persistedAoE()
			return ok && string(st.Config) == want.Config && slices.Equal(st.Masks, want.Masks) && slices.Equal(st.Reserve, want.Reserve),
				fmt.Sprintf("%+v (persisted %v)", st, ok)
		})
	}

	// Hand over to beta while a second initiator listens for beta's
	// announcements (to each MAC of the Mac Mask list).
	listener := cl.Initiator()
	heard := make(chan []aoe.Response, 1)
	betaMAC := beta.MAC()
	go func() {
		// Until every announcement to the initiator came, or 30 s.
		var rs []aoe.Response
		toMe := 0
		for deadline := time.Now().Add(30 * time.Second); toMe < len(aoe.DefaultAnnounceAt) && time.Now().Before(deadline); {
			got, _ := listener.Collect(context.Background(), 200*time.Millisecond, func(r aoe.Response) bool {
				return r.Header.Command == aoe.CmdConfig && r.Header.Tag == 0 && r.Header.Src == betaMAC && r.Header.Shelf == aoeShelf && r.Header.Slot == aoeSlot
			})
			for _, r := range got {
				if r.Header.Dst == me {
					toMe++
				}
			}
			rs = append(rs, got...)
		}
		heard <- rs
	}()
	c.aoeHandover(in, beta)
	if err := aoeRead(in, me, alpha.MAC()); !errors.Is(err, aoe.ErrNoResponse) {
		t.Fatalf("alpha still answers e1.1 after the handover: %v", err)
	}
	enforces(beta, want)
	rs := <-heard
	toMe := 0
	for _, r := range rs {
		var cfg aoe.Config
		if err := cfg.Decode(r.Arg); err != nil || string(cfg.String) != want.Config {
			t.Fatalf("beta's announcement %+v: config %q (%v)", r.Header, cfg.String, err)
		}
		switch r.Header.Dst {
		case me:
			toMe++
		case friend:
		default:
			t.Fatalf("beta announced e1.1 to %s, which is not on the Mac Mask list", r.Header.Dst)
		}
	}
	if toMe != len(aoe.DefaultAnnounceAt) {
		t.Fatalf("beta announced e1.1 %d times to the initiator, want %d", toMe, len(aoe.DefaultAnnounceAt))
	}

	// Change the state on beta (friend leaves the Mac Mask list, a new
	// config string) and hand back at once: alpha enforces the change.
	del := aoe.AppendDirective([]byte{0, byte(aoe.MaskEdit), 0, 1}, aoe.DirDelete, friend)
	if _, err := aoeRequest(in, me, betaMAC, aoe.CmdMask, del); err != nil {
		t.Fatal(err)
	}
	force, _ := (&aoe.Config{Version: aoe.Version, Command: aoe.ConfigForceSet, String: []byte("moved back")}).AppendBinary(nil)
	if _, err := aoeRequest(in, me, betaMAC, aoe.CmdConfig, force); err != nil {
		t.Fatal(err)
	}
	c.aoeHandover(in, alpha)
	enforces(alpha, aoeState{Config: "moved back", Masks: []aoe.MAC{me}, Reserve: []aoe.MAC{me}})
}
