package appliance

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/tharsis/tharsis/internal/nbdclient"
	"github.com/tharsis/tharsis/internal/testutil"
	"github.com/tharsis/tharsis/replicate"
)

// TestMetrics scrapes a running node: the text passes `promtool check
// metrics`, bytes written through NBD show up in the write counters, and
// the resource's role, state and log are there. The listener closes with
// the daemon.
func TestMetrics(t *testing.T) {
	promtool := testutil.NeedTool(t, "promtool")
	metricsAddr, nbdAddr := testutil.FreePort(t), testutil.FreePort(t)
	// Registered before the daemon's own cleanup, so it runs after the
	// daemon stopped.
	t.Cleanup(func() {
		if c, err := net.DialTimeout("tcp", metricsAddr, time.Second); err == nil {
			c.Close()
			t.Errorf("metrics still served on %s after the daemon stopped", metricsAddr)
		}
	})
	d := startDaemon(t, `
[nodes.alpha]
replication = "127.0.0.1:1"
state_dir = "state"
metrics_listen = "`+metricsAddr+`"
[resources.r0]
disk = { alpha = "r0.img" }
[[exports.nbd]]
resource = "r0"
listen = "`+nbdAddr+`"
name = "disk0"
`, "r0.img")
	if got := d.MetricsAddr(); got != metricsAddr {
		t.Fatalf("MetricsAddr() = %q, want %q", got, metricsAddr)
	}

	c, err := nbdclient.Dial(nbdAddr, "disk0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const writes, size = 5, 64 << 10
	buf := bytes.Repeat([]byte{0xab}, size)
	for i := range writes {
		if err := c.WriteAt(buf, int64(i)*size, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.ReadAt(buf[:4096], 0); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}

	text := get(t, "http://"+metricsAddr+"/metrics", http.StatusOK)
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("parse the metrics: %v\n%s", err, text)
	}
	exp := map[string]string{"resource": "r0", "export": "disk0", "protocol": "nbd"}
	with := func(m map[string]string, k, v string) map[string]string {
		out := map[string]string{k: v}
		for a, b := range m {
			out[a] = b
		}
		return out
	}
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"tharsis_export_bytes_total", with(exp, "op", "write"), writes * size},
		{"tharsis_export_requests_total", with(exp, "op", "write"), writes},
		{"tharsis_export_request_errors_total", with(exp, "op", "write"), 0},
		{"tharsis_export_bytes_total", with(exp, "op", "read"), 4096},
		{"tharsis_export_requests_total", with(exp, "op", "flush"), 1},
		{"tharsis_resource_role", map[string]string{"resource": "r0", "role": "primary"}, 1},
		{"tharsis_resource_role", map[string]string{"resource": "r0", "role": "secondary"}, 0},
		{"tharsis_resource_state", map[string]string{"resource": "r0", "state": "consistent"}, 1},
		{"tharsis_resource_split_brain", map[string]string{"resource": "r0"}, 0},
		{"tharsis_resource_emergency", map[string]string{"resource": "r0"}, 0},
		{"tharsis_resource_exports_serving", map[string]string{"resource": "r0"}, 1},
		{"tharsis_log_segments", map[string]string{"resource": "r0"}, 1},
	} {
		if got, ok := metricValue(fams, tc.name, tc.labels); !ok || got != tc.want {
			t.Errorf("%s%v = %v (found: %v), want %v", tc.name, tc.labels, got, ok, tc.want)
		}
	}
	// The log holds the writes; its end is past them.
	if got, _ := metricValue(fams, "tharsis_log_size_bytes", map[string]string{"resource": "r0"}); got < writes*size {
		t.Errorf("tharsis_log_size_bytes = %v, want at least %d", got, writes*size)
	}
	if got, _ := metricValue(fams, "tharsis_log_position_record", map[string]string{"resource": "r0", "position": "end"}); got < writes {
		t.Errorf("tharsis_log_position_record{position=end} = %v, want at least %d", got, writes)
	}
	// The latency histogram counts every write.
	if h := findMetric(fams, "tharsis_export_request_duration_seconds", with(exp, "op", "write")); h == nil || h.GetHistogram().GetSampleCount() != writes {
		t.Errorf("write latency histogram %v, want %d samples", h, writes)
	}

	if body := get(t, "http://"+metricsAddr+"/", http.StatusOK); !strings.Contains(body, `href="/metrics"`) {
		t.Errorf("index page does not link /metrics:\n%s", body)
	}
	get(t, "http://"+metricsAddr+"/status", http.StatusNotFound)
}

// get fetches url and checks the status code.
func get(t *testing.T, url string, code int) string {
	t.Helper()
	cl := http.Client{Timeout: 10 * time.Second}
	resp, err := cl.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != code {
		t.Fatalf("GET %s: %s, want %d\n%s", url, resp.Status, code, b)
	}
	return string(b)
}

// findMetric returns the metric of family name whose labels include
// labels, or nil.
func findMetric(fams map[string]*dto.MetricFamily, name string, labels map[string]string) *dto.Metric {
	f := fams[name]
	if f == nil {
		return nil
	}
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range labels {
			if have[k] != v {
				continue next
			}
		}
		return m
	}
	return nil
}

// metricValue returns the value of a counter or gauge.
func metricValue(fams map[string]*dto.MetricFamily, name string, labels map[string]string) (float64, bool) {
	m := findMetric(fams, name, labels)
	switch {
	case m == nil:
		return 0, false
	case m.Counter != nil:
		return m.GetCounter().GetValue(), true
	case m.Gauge != nil:
		return m.GetGauge().GetValue(), true
	}
	return 0, false
}

// statusCollector collects a fixed status.
type statusCollector struct {
	st  Status
	now time.Time
}

func (c statusCollector) Describe(ch chan<- *prometheus.Desc) { collector{}.Describe(ch) }
func (c statusCollector) Collect(ch chan<- prometheus.Metric) { collectStatus(ch, c.st, c.now) }

// TestMetricsOfStates checks the gauges of states a single node cannot
// easily be brought into: split brain, emergency, a full sync, pauses, lag
// and peers (one fresh, one never reached).
func TestMetricsOfStates(t *testing.T) {
	promtool := testutil.NeedTool(t, "promtool")
	now := time.Now()
	syncing := &replicate.ResourceStatus{Resource: "a", LagBytes: 8 << 20, UnfetchedBytes: 6 << 20, LagSeconds: 12,
		ReplayPaused: true, Forks: []replicate.PeerFork{{Peer: "beta", Loser: "alpha"}},
		Sync:     &replicate.SyncProgress{State: replicate.SyncRunning, Compared: 40 << 20, Total: 100 << 20, Transferred: 3 << 20, ETASeconds: 30},
		Segments: []replicate.SegmentSummary{{Name: "log-000000001-alpha", Size: 1000}, {Name: "log-000000002-beta", Size: 500}}}
	emergency := &replicate.ResourceStatus{Resource: "b", Consistent: true, Emergency: &replicate.EmergencyState{Active: true}}
	st := Status{Node: "alpha", Started: now.Add(-time.Hour),
		Resources: []ResourceStatus{
			{Name: "a", Role: "secondary", Size: 1 << 30, Replicated: true, Replication: syncing},
			{Name: "b", Role: "primary", Size: 1 << 30, Replicated: true, Replication: emergency,
				Exports: []ExportStatus{{Kind: "nbd", Name: "b"}}},
		},
		Peers: []replicate.PeerState{
			{Peer: replicate.Peer{Name: "beta"}, Updated: now.Add(-3 * time.Second),
				Status: replicate.NodeStatus{Node: "beta", Resources: []replicate.ResourceStatus{{Resource: "b", LagBytes: 1 << 20, LagSeconds: 2}}}},
			{Peer: replicate.Peer{Name: "gamma"}, Err: "connection refused"},
		}}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(statusCollector{st, now})
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var text bytes.Buffer
	byName := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		byName[f.GetName()] = f
		if _, err := expfmt.MetricFamilyToText(&text, f); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = &text
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	a, b := map[string]string{"resource": "a"}, map[string]string{"resource": "b"}
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"tharsis_resource_role", map[string]string{"resource": "a", "role": "secondary"}, 1},
		{"tharsis_resource_role", map[string]string{"resource": "a", "role": "primary"}, 0},
		{"tharsis_resource_role", map[string]string{"resource": "b", "role": "primary"}, 1},
		{"tharsis_resource_state", map[string]string{"resource": "a", "state": "syncing"}, 1},
		{"tharsis_resource_state", map[string]string{"resource": "a", "state": "consistent"}, 0},
		{"tharsis_resource_state", map[string]string{"resource": "b", "state": "consistent"}, 1},
		{"tharsis_resource_split_brain", a, 1},
		{"tharsis_resource_split_brain", b, 0},
		{"tharsis_resource_emergency", a, 0},
		{"tharsis_resource_emergency", b, 1},
		{"tharsis_resource_exports_serving", a, 0},
		{"tharsis_resource_exports_serving", b, 1},
		{"tharsis_resource_paused", map[string]string{"resource": "a", "switch": "replay"}, 1},
		{"tharsis_resource_paused", map[string]string{"resource": "a", "switch": "fetch"}, 0},
		{"tharsis_resource_lag_bytes", a, 8 << 20},
		{"tharsis_resource_unfetched_bytes", a, 6 << 20},
		{"tharsis_resource_lag_seconds", a, 12},
		{"tharsis_log_segments", a, 2},
		{"tharsis_log_size_bytes", a, 1500},
		{"tharsis_sync_running", a, 1},
		{"tharsis_sync_running", b, 0},
		{"tharsis_sync_compared_bytes", a, 40 << 20},
		{"tharsis_sync_total_bytes", a, 100 << 20},
		{"tharsis_sync_transferred_bytes", a, 3 << 20},
		{"tharsis_sync_eta_seconds", a, 30},
		{"tharsis_peer_up", map[string]string{"peer": "beta"}, 1},
		{"tharsis_peer_up", map[string]string{"peer": "gamma"}, 0},
		{"tharsis_peer_status_age_seconds", map[string]string{"peer": "beta"}, 3},
		{"tharsis_peer_lag_bytes", map[string]string{"resource": "b", "peer": "beta"}, 1 << 20},
		{"tharsis_peer_lag_seconds", map[string]string{"resource": "b", "peer": "beta"}, 2},
		{"tharsis_node_behind_primary_bytes", map[string]string{"resource": "b", "node": "alpha"}, 0},
		{"tharsis_node_start_time_seconds", nil, float64(now.Add(-time.Hour).UnixNano()) / 1e9},
	} {
		if got, ok := metricValue(byName, tc.name, tc.labels); !ok || got != tc.want {
			t.Errorf("%s%v = %v (found: %v), want %v", tc.name, tc.labels, got, ok, tc.want)
		}
	}
	// A peer never reached has no status age; a resource without a sync
	// has no progress.
	if m := findMetric(byName, "tharsis_peer_status_age_seconds", map[string]string{"peer": "gamma"}); m != nil {
		t.Errorf("status age of a peer never reached: %v", m)
	}
	if m := findMetric(byName, "tharsis_sync_total_bytes", b); m != nil {
		t.Errorf("sync progress without a sync: %v", m)
	}
}
