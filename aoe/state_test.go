package aoe

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tharsis/tharsis/blockdev"
)

// TestStateJSON: a State survives JSON (the state file's format, and how
// the appliance hands it to the next primary), SaveState and LoadState;
// what AoE cannot hold is refused.
func TestStateJSON(t *testing.T) {
	st := State{Config: []byte("cluster-a"), Masks: []MAC{hostMAC, otherMAC}, Reserve: []MAC{hostMAC}}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"mac_mask":["02:00:00:00:00:01","02:00:00:00:00:02"]`) {
		t.Fatalf("JSON %s", b)
	}
	var back State
	if err := json.Unmarshal(b, &back); err != nil || !back.Equal(st) {
		t.Fatalf("round trip: %+v, %v", back, err)
	}
	var empty State
	if b, _ := json.Marshal(State{}); string(b) != `{"config_string":null,"mac_mask":[],"reserve":[]}` {
		t.Fatalf("empty state: %s", b)
	}
	for _, bad := range []string{
		`{"mac_mask":["nonsense"]}`,
		`{"reserve":["02:00:00:00:00:01:03:04"]}`,
		`{"mac_mask":[` + strings.Repeat(`"02:00:00:00:00:01",`, 32) + `"02:00:00:00:00:01"]}`,
		`[1]`,
	} {
		if err := json.Unmarshal([]byte(bad), &empty); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
	dir := t.TempDir()
	if _, ok, err := LoadState(dir, 1, 1); ok || err != nil {
		t.Fatalf("LoadState of nothing: %v %v", ok, err)
	}
	if err := SaveState(dir, 1, 1, st); err != nil {
		t.Fatal(err)
	}
	got, ok, err := LoadState(dir, 1, 1)
	if !ok || err != nil || !got.Equal(st) {
		t.Fatalf("LoadState: %+v %v %v", got, ok, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "aoe-e1.1.json")); err != nil {
		t.Fatal(err)
	}
	// A target starts from the saved state, and reports it.
	c := newTestCore(t, TargetConfig{Shelf: 1, Slot: 1, Device: blockdev.NewMemory(1 << 20), StateDir: dir})
	if got, ok := c.TargetState(1, 1); !ok || !got.Equal(st) {
		t.Fatalf("TargetState: %+v %v", got, ok)
	}
	if _, ok := c.TargetState(1, 2); ok {
		t.Fatal("TargetState of a target not served")
	}
}

// TestGate: a closed gate admits nothing and reports idle once the last
// frame inside has left.
func TestGate(t *testing.T) {
	g := newGate()
	if !g.enter() || !g.enter() {
		t.Fatal("an open gate refused a frame")
	}
	g.leave()
	idle := g.close()
	if g.enter() {
		t.Fatal("a closed gate admitted a frame")
	}
	select {
	case <-idle:
		t.Fatal("idle with a frame inside")
	default:
	}
	g.leave()
	select {
	case <-idle:
	default:
		t.Fatal("not idle once the last frame left")
	}
	select {
	case <-newGate().close():
	default:
		t.Fatal("an empty gate is not idle when closed")
	}
}
