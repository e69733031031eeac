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

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/tharsis/tharsis/internal/nbdclient"
	"github.com/tharsis/tharsis/internal/testutil"
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
