package replicate

import (
	"testing"
	"time"
)

func TestRateWindow(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	var w rateWindow
	if r := w.Rate(at(0)); r != 0 {
		t.Fatalf("rate with nothing counted: %v, want 0", r)
	}
	// 1 MiB every second for 20 s: 1 MiB/s.
	for i := range 20 {
		w.Add(1<<20, at(float64(i)))
	}
	if r := w.Rate(at(20)); r < 0.9*(1<<20) || r > 1.1*(1<<20) {
		t.Errorf("steady 1 MiB/s: rate %.0f B/s", r)
	}
	// Nothing for a while: the rate falls to 0 once the span has passed.
	if r := w.Rate(at(31)); r != 0 {
		t.Errorf("idle for 11 s: rate %.0f B/s, want 0", r)
	}
	// A burst after a long pause is averaged over at least a second, not
	// over the pause.
	w.Add(4<<20, at(100))
	if r := w.Rate(at(100.5)); r != 4<<20 {
		t.Errorf("4 MiB half a second ago: rate %.0f B/s, want 4 MiB/s", r)
	}
	if r := w.Rate(at(102)); r != 2<<20 {
		t.Errorf("4 MiB two seconds ago: rate %.0f B/s, want 2 MiB/s", r)
	}
}

func TestLogBytes(t *testing.T) {
	segs := []SegmentSummary{{Name: "log-000000001-alpha", Size: 1000}, {Name: "log-000000002-alpha", Size: 500}, {Name: "log-000000003-beta", Size: 300}}
	for _, c := range []struct {
		name      string
		a, b      Position
		want      int64
		wantExact bool
	}{
		{"same position", Position{1, 100, 3}, Position{1, 100, 3}, 0, true},
		{"behind", Position{2, 100, 9}, Position{1, 100, 3}, 0, true},
		{"same segment", Position{1, 100, 3}, Position{1, 900, 8}, 800, true},
		{"from nothing", Position{}, Position{3, 200, 20}, 1000 + 500 + 200, true},
		{"across segments", Position{1, 900, 8}, Position{3, 100, 15}, 100 + 500 + 100, true},
		{"a segment unknown", Position{1, 900, 8}, Position{5, 100, 30}, 100 + 500 + 300 + 100, false},
	} {
		got, exact := LogBytes(c.a, c.b, segs)
		if got != c.want || exact != c.wantExact {
			t.Errorf("%s: LogBytes(%v, %v) = %d, %v; want %d, %v", c.name, c.a, c.b, got, exact, c.want, c.wantExact)
		}
	}
}
