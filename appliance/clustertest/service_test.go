package clustertest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/tharsis/tharsis/internal/vip"
)

// The service address (issue 11 items 3 and 4): an NBD client that knows
// only the address reconnects through a planned handover and a forced
// failover, as `nbd-client -persist` does, and finds its data.

const serviceAddr = "10.77.0.100/24"

// addrWatch follows the service address on every node's interface through
// rtnetlink notifications, in the order they arrive.
type addrWatch struct {
	addr netip.Addr

	mu      sync.Mutex
	holders map[string]bool
	events  []string // "alpha +" / "beta -" with the time
	both    []string // the moments more than one node held it
	changed chan struct{}
}

// watchAddr starts watching addr on the interfaces of c's nodes (until the
// test ends).
func (c *Cluster) watchAddr(addr netip.Addr) *addrWatch {
	c.t.Helper()
	w := &addrWatch{addr: addr, holders: map[string]bool{}, changed: make(chan struct{}, 1)}
	done := make(chan struct{})
	c.t.Cleanup(func() { close(done) })
	for _, n := range c.nodes() {
		ch := make(chan netlink.AddrUpdate, 64)
		err := inNetns(n.NS, func() error {
			return netlink.AddrSubscribeWithOptions(ch, done, netlink.AddrSubscribeOptions{ListExisting: true,
				ErrorCallback: func(err error) {
					select {
					case <-done: // the test is over: the socket was closed
					default:
						c.t.Logf("address notifications in %s: %v", n.Name, err)
					}
				}})
		})
		if err != nil {
			c.t.Fatalf("watch the addresses of %s: %v", n.Name, err)
		}
		go func() {
			for u := range ch {
				if a, ok := netip.AddrFromSlice(u.LinkAddress.IP); ok && a.Unmap() == addr {
					w.note(n.Name, u.NewAddr)
				}
			}
		}()
	}
	return w
}

func (w *addrWatch) note(node string, held bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	sign := "-"
	if held {
		sign = "+"
	}
	now := time.Now().Format("15:04:05.000")
	w.events = append(w.events, fmt.Sprintf("%s %s %s", now, node, sign))
	w.holders[node] = held
	var hs []string
	for n, h := range w.holders {
		if h {
			hs = append(hs, n)
		}
	}
	if len(hs) > 1 {
		w.both = append(w.both, fmt.Sprintf("%s: %v", now, hs))
	}
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// held returns the nodes holding the address, as notified.
func (w *addrWatch) held() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var hs []string
	for _, n := range []string{"alpha", "beta", "gamma"} {
		if w.holders[n] {
			hs = append(hs, n)
		}
	}
	return hs
}

// waitHeld waits until exactly the named nodes hold the address, by the
// notifications and by asking each node's kernel.
func (c *Cluster) waitHeld(w *addrWatch, timeout time.Duration, want ...string) {
	c.t.Helper()
	WaitFor(c.t, timeout, fmt.Sprintf("the service address on %v only", want), func() (bool, string) {
		if got := w.held(); !slices.Equal(got, want) {
			return false, fmt.Sprintf("notified holders %v", got)
		}
		for _, n := range c.nodes() {
			var held bool
			err := inNetns(n.NS, func() error {
				var err error
				held, err = vip.Holds(nodeDev, w.addr)
				return err
			})
			if err != nil {
				return false, err.Error()
			}
			if held != slices.Contains(want, n.Name) {
				return false, fmt.Sprintf("%s holds it: %v", n.Name, held)
			}
		}
		return true, ""
	})
}

// sawBoth returns the moments two nodes held the address (nil: never).
func (w *addrWatch) sawBoth() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.both...)
}

func (w *addrWatch) history() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.events, ", ")
}

// persistentClient is an NBD client in the bridge namespace that knows only
// the service address. When its connection fails it connects again and
// repeats the request, as `nbd-client -persist` (with the kernel requeueing
// what was in flight) does; a repeated write is harmless.
type persistentClient struct {
	t    *testing.T
	ns   string
	addr string
	conn *nbdConn

	ends    []error       // what ended each connection
	longest time.Duration // longest time from a failure to the request's success
}

// do runs op, reconnecting for up to a minute while it fails. An NBD error
// reply fails the test: the server answered, and said no.
func (p *persistentClient) do(op func(*nbdConn) error) {
	p.t.Helper()
	var failed time.Time
	for {
		if p.conn == nil {
			err := inNetns(p.ns, func() error {
				var err error
				p.conn, err = dialNBD(p.addr, resource)
				return err
			})
			if err != nil {
				if failed.IsZero() {
					failed = time.Now()
				}
				if time.Since(failed) > time.Minute {
					p.t.Fatalf("no NBD export at %s for a minute: %v", p.addr, err)
				}
				time.Sleep(50 * time.Millisecond) // retry pace, as a client's
				continue
			}
		}
		err := op(p.conn)
		if err == nil {
			if !failed.IsZero() {
				p.longest = max(p.longest, time.Since(failed))
			}
			return
		}
		var ne nbdError
		if errors.As(err, &ne) {
			p.t.Fatalf("NBD request at %s: %v", p.addr, err)
		}
		p.ends = append(p.ends, err)
		p.conn.Close()
		p.conn = nil
		if failed.IsZero() {
			failed = time.Now()
		}
	}
}

func (p *persistentClient) close() {
	if p.conn != nil {
		p.conn.Close()
		p.conn = nil
	}
}

// flush makes what the client wrote durable (and so shipped).
func (p *persistentClient) flush() {
	p.t.Helper()
	p.do(func(c *nbdConn) error { return c.Flush() })
}

// blocks is what the client wrote: offset → the last acknowledged bytes.
type blocks map[int64][]byte

// write writes block i (a pattern naming i and tag) and records it.
func (p *persistentClient) write(b blocks, i int, tag byte) {
	p.t.Helper()
	off := int64(i%2048) * block
	data := bytes.Repeat([]byte{tag}, block)
	binary.BigEndian.PutUint64(data, uint64(i))
	p.do(func(c *nbdConn) error { return c.WriteAt(data, off, false) })
	b[off] = data
}

// verify reads every written block back through the service address.
func (p *persistentClient) verify(b blocks) {
	p.t.Helper()
	got := make([]byte, block)
	bad := 0
	for off, want := range b {
		p.do(func(c *nbdConn) error { return c.ReadAt(got, off) })
		if !bytes.Equal(got, want) {
			bad++
		}
	}
	if bad > 0 {
		p.t.Errorf("%d of %d blocks read through the service address differ from what was written", bad, len(b))
	}
}

// TestServiceAddressFollowsPrimary: alpha holds the service address and
// shows it in view; an NBD client that knows only that address writes
// while `tharsis primary r0` runs on beta: alpha removes the address (its
// connection ends with the answers sent, not by a timeout), beta adds it
// only after it took over, never both; the client reconnects to beta at the
// same address and reads back every block. The same back to alpha. Then
// beta, primary again, is killed: the address stays on its interface;
// `primary --force` on alpha takes it too (both hold it, as nothing can
// prevent with the old primary's machine still up); beta restarted removes
// its leftover before it serves anything, and the client's data is intact.
func TestServiceAddressFollowsPrimary(t *testing.T) {
	c := started(t, Options{Nodes: []string{"alpha", "beta"}, Connect: map[string][]string{"beta": {"alpha"}}, ServiceAddress: serviceAddr})
	alpha, beta := c.Nodes["alpha"], c.Nodes["beta"]
	pf := netip.MustParsePrefix(serviceAddr)
	w := c.watchAddr(pf.Addr())
	c.waitHeld(w, 10*time.Second, "alpha")
	view, err := alpha.tharsis(15*time.Second, "view", "--socket", alpha.Socket)
	if err != nil || !strings.Contains(string(view), "ip  "+serviceAddr+" on "+nodeDev) {
		t.Errorf("alpha's view does not show the service address %s on %s: %v\n%s", serviceAddr, nodeDev, err, view)
	}

	cl := &persistentClient{t: t, ns: c.BridNS, addr: net.JoinHostPort(pf.Addr().String(), fmt.Sprint(nbdPort))}
	defer cl.close()
	written := blocks{}
	i := 0
	handover := func(to *Node, tag byte) {
		t.Helper()
		for range 200 {
			cl.write(written, i, tag)
			i++
		}
		ends := len(cl.ends)
		done := make(chan error, 1)
		go func() {
			// A node that just became primary is refused as the source of
			// a handover until its peer's poll saw it serve: try again.
			deadline := time.Now().Add(30 * time.Second)
			for {
				out, err := to.roleCmd("primary")
				if err != nil && strings.Contains(err.Error(), "try again") && time.Now().Before(deadline) {
					time.Sleep(200 * time.Millisecond) // an operator's retry, not a synchronisation
					continue
				}
				t.Logf("tharsis primary r0 on %s: %s", to.Name, out)
				done <- err
				return
			}
		}()
		// Write on through the handover, and 200 blocks after it.
		after := -1
		for after < 200 {
			cl.write(written, i, tag)
			i++
			if after >= 0 {
				after++
				continue
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("primary on %s: %v", to.Name, err)
				}
				after = 0
			default:
			}
		}
		if len(cl.ends) == ends {
			t.Errorf("the client's connection survived the handover to %s", to.Name)
		}
		for _, err := range cl.ends[ends:] {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Errorf("a connection ended by a timeout (%v): the old primary's last answers or its FIN did not reach the client", err)
			}
		}
		c.SetPrimary(to.Name)
		c.waitHeld(w, 10*time.Second, to.Name)
		t.Logf("handover to %s: connections ended by %v; longest client stall %s; address events %s", to.Name, cl.ends[ends:], cl.longest.Round(time.Millisecond), w.history())
	}
	handover(beta, 0xb0)
	handover(alpha, 0xa0)
	if both := w.sawBoth(); len(both) > 0 {
		t.Errorf("two nodes held the service address during planned handovers: %v (events %s)", both, w.history())
	}
	cl.verify(written)
	cl.flush() // what was acknowledged but not yet durable is shipped only after a flush
	c.WaitCaughtUp(catchUp)
	c.AssertIdentical()

	// Forced: beta primary, killed; the address stays on its interface.
	// Everything acknowledged reached alpha first (a forced failover loses
	// what was not shipped; that is not what this test is about).
	handover(beta, 0xb1)
	cl.flush()
	c.WaitCaughtUp(catchUp)
	cl.close()
	beta.Kill()
	c.waitHeld(w, 5*time.Second, "beta")
	if out, err := alpha.roleCmd("primary", "--force"); err != nil {
		t.Fatalf("primary --force on alpha: %v", err)
	} else {
		t.Logf("primary --force on alpha: %s", out)
	}
	c.SetPrimary("alpha")
	c.waitHeld(w, 10*time.Second, "alpha", "beta")
	for range 100 {
		cl.write(written, i, 0xa1)
		i++
	}
	beta.Start()
	// Before its control socket answered, beta removed the leftover.
	var held bool
	if err := inNetns(beta.NS, func() error { var err error; held, err = vip.Holds(nodeDev, pf.Addr()); return err }); err != nil || held {
		t.Errorf("beta restarted as a secondary still holds the service address (%v)", err)
	}
	c.waitHeld(w, 10*time.Second, "alpha")
	if !strings.Contains(beta.Log(), "service address left over") {
		t.Error("beta's log does not say it removed a leftover service address")
	}
	cl.verify(written)
	cl.flush()
	c.WaitCaughtUp(catchUp)
	c.AssertIdentical()
	t.Logf("address events: %s", w.history())
}

// TestServiceAddressFailure: a missing service interface is reported in
// view (export error naming it) and the log; the NBD export still serves on
// the node's own address.
func TestServiceAddressFailure(t *testing.T) {
	c := NewCluster(t, Options{Nodes: []string{"alpha"}, Connect: map[string][]string{}, ServiceAddress: serviceAddr, ServiceInterface: "nosuch0"})
	c.StartAll()
	alpha := c.Nodes["alpha"]
	var raw string
	WaitFor(t, 20*time.Second, "an export error naming the interface", func() (bool, string) {
		v, err := alpha.TryView()
		if err != nil {
			return false, err.Error()
		}
		r := v.Resource(resource)
		if r == nil {
			return false, "no resource"
		}
		raw = string(r.Raw)
		return strings.Contains(raw, `"export_error"`) && strings.Contains(raw, "nosuch0"), raw
	})
	if !strings.Contains(raw, "no such interface") {
		t.Errorf("the export error does not say the interface is missing: %s", raw)
	}
	text, err := alpha.tharsis(15*time.Second, "view", "--socket", alpha.Socket)
	if err != nil || !strings.Contains(string(text), "ERROR   export: service address "+serviceAddr) {
		t.Errorf("tharsis view does not show the error: %v\n%s", err, text)
	}
	if !strings.Contains(alpha.Log(), "nosuch0") {
		t.Error("the log does not name the missing interface")
	}
	conn := c.MustDialNBD()
	if err := conn.WriteAt(make([]byte, block), 0, true); err != nil {
		t.Errorf("the NBD export on alpha's own address: %v", err)
	}
}
