package aoe_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tharsis/tharsis/aoe"
	"github.com/tharsis/tharsis/aoe/aoetest"
)

// TestTharsisACL: frames from MACs off allow_macs are dropped.
func TestTharsisACL(t *testing.T) {
	e := setup(t, tharsis, 1500, tharsisOpts{allow: []net.HardwareAddr{{2, 3, 3, 3, 3, 3}}})
	ts, err := e.in.Discover(context.Background(), 500*time.Millisecond)
	if err != nil || len(ts) != 0 {
		t.Fatalf("a MAC off allow_macs discovered %d targets (%v)", len(ts), err)
	}
}

// TestTharsisReadOnly: writes get ATA ERR|DRDY with ABRT; reads work.
func TestTharsisReadOnly(t *testing.T) {
	e := setup(t, tharsis, 1500, tharsisOpts{readOnly: true})
	e.discover()
	_, a := e.ata(e.in.MAC(), aoe.ATAWriteSectorsExt, 0, 1, make([]byte, 512))
	if a.CmdStat != aoe.ATAStatusDRDY|aoe.ATAStatusERR || a.ErrFeat != aoe.ATAErrABRT {
		t.Fatalf("write to read-only target: %+v", a)
	}
	if err := e.in.ReadAt(context.Background(), &e.tgt, make([]byte, 4096), 0, 4); err != nil {
		t.Fatal(err)
	}
}

// TestTharsisPersistence: config string, Mac Mask list and reserve list
// survive a restart of the Server.
func TestTharsisPersistence(t *testing.T) {
	p := aoetest.NewPair(t, 1500)
	file, state := newFile(t), t.TempDir()
	e := &env{t: t, p: p, file: file}
	stopFns[t.Name()] = nil
	startTharsis(t, p, file, tharsisOpts{stateDir: state, noCleanup: true})
	e.initiator()
	e.discover()
	me := e.in.MAC()
	e.config(aoe.ConfigSet, "cluster-a")
	e.exchange(aoe.CmdMask, aoe.AppendDirective([]byte{0, byte(aoe.MaskEdit), 0, 1}, aoe.DirAdd, me))
	e.exchange(aoe.CmdReserve, append([]byte{byte(aoe.ReserveSet), 1}, me[:]...))
	stopFns[t.Name()]()
	startTharsis(t, p, file, tharsisOpts{stateDir: state})
	e.discover()
	if string(e.tgt.Config) != "cluster-a" {
		t.Fatalf("config string after restart: %q", e.tgt.Config)
	}
	r, _ := e.exchange(aoe.CmdMask, []byte{0, byte(aoe.MaskRead), 0, 0})
	var m aoe.Mask
	if m.Decode(r.Arg); m.Count != 1 {
		t.Fatalf("mask list after restart: %+v", m)
	}
	r, _ = e.exchange(aoe.CmdReserve, []byte{byte(aoe.ReserveRead), 0})
	var rr aoe.Reserve
	if rr.Decode(r.Arg); rr.Count != 1 || rr.MAC(0) != me {
		t.Fatalf("reserve list after restart: %+v", rr)
	}
	// Deleting works (vblade 25 corrupts its list here).
	r, _ = e.exchange(aoe.CmdMask, aoe.AppendDirective([]byte{0, byte(aoe.MaskEdit), 0, 1}, aoe.DirDelete, me))
	if m.Decode(r.Arg); m.Count != 0 || m.Error != 0 {
		t.Fatalf("mask delete: %+v", m)
	}
}

// TestTharsisMTUChange: the sectors per frame follow the MTU at run time,
// and the target announces itself on start.
func TestTharsisMTUChangeAndAnnounce(t *testing.T) {
	p := aoetest.NewPair(t, 1500)
	e := &env{t: t, p: p, file: newFile(t)}
	e.initiator() // listen before the target starts, to hear its announcement
	got := make(chan []aoe.Response, 1)
	go func() {
		rs, _ := e.in.Collect(context.Background(), 2*time.Second, func(r aoe.Response) bool {
			return r.Header.Command == aoe.CmdConfig && r.Header.Dst == aoe.BroadcastMAC && r.Header.Shelf == 1
		})
		got <- rs
	}()
	// Collect has the socket until it returns; start the target meanwhile.
	startTharsis(t, p, e.file, tharsisOpts{})
	if rs := <-got; len(rs) == 0 {
		t.Fatal("no announcement heard within 2s of start")
	}
	e.discover()
	if e.tgt.SectorsPerFrame != 2 {
		t.Fatalf("MTU 1500: %d sectors", e.tgt.SectorsPerFrame)
	}
	if err := p.SetMTU(9000); err != nil {
		t.Fatal(err)
	}
	_, c, ok := e.config(aoe.ConfigRead, "")
	if !ok || c.Sectors != 17 {
		t.Fatalf("after MTU 9000: %v %d sectors, want 17", ok, c.Sectors)
	}
}

// TestStat checks the aoe-stat line against a tharsis target.
func TestStat(t *testing.T) {
	e := setup(t, tharsis, 1500, tharsisOpts{})
	e.discover()
	var ts []aoe.TargetInfo
	if err := aoetest.Do(e.p.InitNS, func() (err error) {
		ts, err = aoe.Stat(context.Background(), nil, 500*time.Millisecond)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if len(ts) != 1 {
		t.Fatalf("Stat found %d targets", len(ts))
	}
	line := ts[0].StatLine()
	want := []string{"e1.1", "0.001GB", e.p.InitIf, "1024", "up"}
	if f := strings.Fields(line); strings.Join(f, " ") != strings.Join(want, " ") {
		t.Fatalf("stat line %q, want fields %q", line, want)
	}
}
