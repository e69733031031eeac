package appliance

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tharsis/tharsis/blockdev"
	"github.com/tharsis/tharsis/replicate"
)

// Prometheus metrics on the node's metrics_listen address. The exports
// count their requests in a blockdev.Stats per export (cheap atomic
// counters on the request path); everything else is read from Status() at
// scrape time, so the metrics never disagree with `tharsis view`.

// exportCounter is the request counters of one export, kept for the life of
// the daemon so that they survive its exports stopping and starting.
type exportCounter struct {
	protocol, export, resource string
	stats                      *blockdev.Stats
}

// exportCounters holds the daemon's exportCounters by protocol and export.
type exportCounters struct {
	mu sync.Mutex
	m  map[[2]string]*exportCounter
	// order is the keys in creation order, for a stable scrape.
	order [][2]string
}

// get returns the counters of export (an NBD export name, or eX.Y) of
// protocol ("nbd", "aoe"), creating them on first use.
func (e *exportCounters) get(protocol, export, resource string) *blockdev.Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	k := [2]string{protocol, export}
	if c := e.m[k]; c != nil {
		return c.stats
	}
	if e.m == nil {
		e.m = map[[2]string]*exportCounter{}
	}
	c := &exportCounter{protocol: protocol, export: export, resource: resource, stats: new(blockdev.Stats)}
	e.m[k] = c
	e.order = append(e.order, k)
	return c.stats
}

func (e *exportCounters) list() []*exportCounter {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]*exportCounter, 0, len(e.order))
	for _, k := range e.order {
		out = append(out, e.m[k])
	}
	return out
}

// The metrics. Labels: resource, export (NBD name or AoE eX.Y), protocol
// (nbd, aoe), op (read, write, flush, trim, write_zeroes, other), peer
// (another node), role and state (one series per value, 1 for the current
// one), position (end, logged, applied), switch (fetch, replay, sync).
var (
	exportLabels  = []string{"resource", "export", "protocol", "op"}
	descRequests  = newDesc("export_requests_total", "Requests served by an export, by operation (failed ones included).", exportLabels...)
	descReqErrors = newDesc("export_request_errors_total", "Requests an export answered with an error.", exportLabels...)
	descBytes     = newDesc("export_bytes_total", "Payload bytes an export read or wrote (successful reads and writes).", exportLabels...)
	descLatency   = newDesc("export_request_duration_seconds", "Time from a request's arrival until its reply was ready (NBD), or the target executed it (AoE).", exportLabels...)

	descStart        = newDesc("node_start_time_seconds", "When the daemon started, in seconds since the Unix epoch.")
	descRole         = newDesc("resource_role", "The node's role for the resource: 1 for the current one.", "resource", "role")
	descState        = newDesc("resource_state", "The state of the node's disk: 1 for the current one (consistent, outdated, inconsistent, syncing).", "resource", "state")
	descSize         = newDesc("resource_size_bytes", "Size of the resource.", "resource")
	descServing      = newDesc("resource_exports_serving", "1 while the node serves the resource's exports.", "resource")
	descSplit        = newDesc("resource_split_brain", "1 when the node's log and a peer's are two histories (split brain).", "resource")
	descEmergency    = newDesc("resource_emergency", "1 while the primary writes without the log (emergency mode).", "resource")
	descAckFallback  = newDesc("resource_ack_fallback", "1 while the primary acknowledges writes asynchronously although ack_secondaries > 0 (fell back after ack_timeout).", "resource")
	descAckFallbacks = newDesc("resource_ack_fallbacks", "Falls back to asynchronous acknowledgement since the primary opened.", "resource")
	descPaused       = newDesc("resource_paused", "1 when the switch is paused.", "resource", "switch")
	descLagBytes     = newDesc("resource_lag_bytes", "Log the node has not replayed yet: not fetched from its source plus fetched and not replayed.", "resource")
	descLagSecs      = newDesc("resource_lag_seconds", "How long ago the node's disk last held its source's whole log (0 when caught up).", "resource")
	descUnfetched    = newDesc("resource_unfetched_bytes", "Log the node has not fetched from its source yet.", "resource")
	descSegments     = newDesc("log_segments", "Segments in the node's log of the resource.", "resource")
	descLogBytes     = newDesc("log_size_bytes", "Bytes in the node's log segments of the resource.", "resource")
	descPending      = newDesc("log_pending_replay_bytes", "Log after the applied position persisted on the primary: what a restart would replay.", "resource")
	descUnapplied    = newDesc("log_unapplied_bytes", "Memory held by writes acknowledged (in the log) and not yet applied to the disk, on the primary (at most apply_window).", "resource")
	descUnappRecs    = newDesc("log_unapplied_records", "Writes acknowledged (in the log) and not yet applied to the disk, on the primary.", "resource")
	descPosRecord    = newDesc("log_position_record", "Record sequence number at a log position: end (durable end), logged (written, durable or not), applied (on the disk).", "resource", "position")
	descPosSeg       = newDesc("log_position_segment", "Segment number of a log position.", "resource", "position")
	descPosOffset    = newDesc("log_position_offset_bytes", "Offset in its segment of a log position.", "resource", "position")
	descSyncRun      = newDesc("sync_running", "1 while a full sync of the resource runs (or waits to run) on this node.", "resource")
	descSyncDone     = newDesc("sync_compared_bytes", "Bytes of the disk the running full sync has compared.", "resource")
	descSyncTotal    = newDesc("sync_total_bytes", "Bytes the running full sync compares in all.", "resource")
	descSyncSent     = newDesc("sync_transferred_bytes", "Bytes of differing chunks the running full sync has copied.", "resource")
	descSyncETA      = newDesc("sync_eta_seconds", "Estimated time until the running full sync has compared everything.", "resource")
	descPeerUp       = newDesc("peer_up", "1 when the last poll of the peer's status succeeded.", "peer")
	descPeerAge      = newDesc("peer_status_age_seconds", "Age of the peer's status as last received.", "peer")
	descPeerLagB     = newDesc("peer_lag_bytes", "A peer's lag for the resource as it reported it (see resource_lag_bytes).", "resource", "peer")
	descBehindB      = newDesc("node_behind_primary_bytes", "How far a node's disk is from the primary's log end (the furthest log end known of the current history), as `tharsis view` shows it; a lower bound when a segment in between is unknown.", "resource", "node")
	descBehindS      = newDesc("node_behind_primary_seconds", "How long ago a node's disk last held the primary's whole log: an upper bound (its own lag plus the age of its status).", "resource", "node")
	descFetched      = newDesc("fetched_bytes_total", "Log fetched by this node (a secondary) since the resource opened: kind=\"log\" its bytes, kind=\"wire\" its bytes on the network (fewer when the source compresses).", "resource", "kind")
	descPeerLagS     = newDesc("peer_lag_seconds", "A peer's lag for the resource in seconds as it reported it.", "resource", "peer")
)

func newDesc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("tharsis_"+name, help, labels, nil)
}

// latencyBounds are blockdev.LatencyBuckets in seconds.
var latencyBounds = func() []float64 {
	b := make([]float64, len(blockdev.LatencyBuckets))
	for i, d := range blockdev.LatencyBuckets {
		b[i] = d.Seconds()
	}
	return b
}()

// collector is the prometheus.Collector of a Daemon.
type collector struct{ d *Daemon }

// Describe sends every metric's description.
func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRequests, descReqErrors, descBytes, descLatency, descStart, descRole,
		descState, descSize, descServing, descSplit, descEmergency, descAckFallback, descAckFallbacks, descPaused, descLagBytes, descLagSecs, descUnfetched,
		descSegments, descLogBytes, descPending, descUnapplied, descUnappRecs, descPosRecord, descPosSeg, descPosOffset, descSyncRun, descSyncDone,
		descSyncTotal, descSyncSent, descSyncETA, descPeerUp, descPeerAge, descPeerLagB, descPeerLagS, descBehindB, descBehindS, descFetched} {
		ch <- d
	}
}

// Collect reads the export counters and the node's Status.
func (c collector) Collect(ch chan<- prometheus.Metric) {
	for _, e := range c.d.counters.list() {
		collectExport(ch, e)
	}
	collectStatus(ch, c.d.Status(), time.Now())
}

// collectStatus sends the metrics of a node's status, taken at now.
func collectStatus(ch chan<- prometheus.Metric, st Status, now time.Time) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(descStart, float64(st.Started.UnixNano())/1e9)
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	for _, rs := range st.Resources {
		collectResource(gauge, counter, rs)
	}
	// Each node's distance to the primary, as view computes it: a node's
	// own lag says 0 B while it is disconnected.
	for _, rv := range NewView(&st, 0).Resources {
		if rv.PrimaryLogEnd == nil {
			continue
		}
		for _, n := range rv.Nodes {
			if n.Role == DiskUnknown {
				continue
			}
			gauge(descBehindB, float64(n.BehindBytes), rv.Name, n.Node)
			gauge(descBehindS, n.BehindSeconds, rv.Name, n.Node)
		}
	}
	for _, p := range st.Peers {
		name := p.Peer.Name
		gauge(descPeerUp, bool01(p.Err == "" && !p.Updated.IsZero()), name)
		if p.Updated.IsZero() {
			continue
		}
		gauge(descPeerAge, now.Sub(p.Updated).Seconds(), name)
		for _, r := range p.Status.Resources {
			gauge(descPeerLagB, float64(r.LagBytes), r.Resource, name)
			gauge(descPeerLagS, r.LagSeconds, r.Resource, name)
		}
	}
}

// collectExport sends one export's counters. Reads, writes and flushes are
// always sent (so rates start from zero); other ops once they happened.
func collectExport(ch chan<- prometheus.Metric, e *exportCounter) {
	for op := range blockdev.NumOps {
		s := e.stats.Load(op)
		if s.Requests == 0 && op != blockdev.OpRead && op != blockdev.OpWrite && op != blockdev.OpFlush {
			continue
		}
		labels := []string{e.resource, e.export, e.protocol, op.String()}
		ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(s.Requests), labels...)
		ch <- prometheus.MustNewConstMetric(descReqErrors, prometheus.CounterValue, float64(s.Errors), labels...)
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(s.Bytes), labels...)
		buckets := make(map[float64]uint64, len(latencyBounds))
		for i, le := range latencyBounds {
			buckets[le] = s.Buckets[i]
		}
		ch <- prometheus.MustNewConstHistogram(descLatency, s.Requests, s.Latency.Seconds(), buckets, labels...)
	}
}

// collectResource sends the metrics of one resource's status.
func collectResource(gauge, counter func(*prometheus.Desc, float64, ...string), rs ResourceStatus) {
	name := rs.Name
	for p := replicate.PhaseStarting; p <= replicate.PhaseLeft; p++ {
		gauge(descRole, bool01(rs.Role == p.String()), name, p.String())
	}
	gauge(descSize, float64(rs.Size), name)
	gauge(descServing, bool01(len(rs.Exports) > 0), name)
	if l := rs.Log; l != nil {
		gauge(descPending, float64(l.PendingReplay), name)
		gauge(descUnapplied, float64(l.UnappliedBytes), name)
		gauge(descUnappRecs, float64(l.UnappliedRecords), name)
	}
	rep := rs.Replication
	if rep == nil {
		return
	}
	state := diskState(rep)
	for _, s := range diskStates {
		gauge(descState, bool01(s == state), name, s)
	}
	gauge(descSplit, bool01(rep.Diverged || len(rep.Forks) > 0), name)
	gauge(descEmergency, bool01(rep.Emergency != nil && rep.Emergency.Active), name)
	if a := rep.Ack; a != nil {
		gauge(descAckFallback, bool01(a.State == replicate.AckFallback), name)
		gauge(descAckFallbacks, float64(a.Fallbacks), name)
	}
	gauge(descPaused, bool01(rep.FetchPaused), name, "fetch")
	gauge(descPaused, bool01(rep.ReplayPaused), name, "replay")
	gauge(descPaused, bool01(rep.SyncPaused), name, "sync")
	gauge(descLagBytes, float64(rep.LagBytes), name)
	gauge(descLagSecs, rep.LagSeconds, name)
	gauge(descUnfetched, float64(rep.UnfetchedBytes), name)
	if rep.Role == replicate.RoleSecondary {
		counter(descFetched, float64(rep.FetchLogBytes), name, "log")
		counter(descFetched, float64(rep.FetchWireBytes), name, "wire")
	}
	var logBytes int64
	for _, s := range rep.Segments {
		logBytes += s.Size
	}
	gauge(descSegments, float64(len(rep.Segments)), name)
	gauge(descLogBytes, float64(logBytes), name)
	for _, p := range []struct {
		name string
		pos  replicate.Position
	}{{"end", rep.End}, {"logged", rep.Logged}, {"applied", rep.Applied}} {
		gauge(descPosRecord, float64(p.pos.Seq), name, p.name)
		gauge(descPosSeg, float64(p.pos.Segment), name, p.name)
		gauge(descPosOffset, float64(p.pos.Offset), name, p.name)
	}
	sy := rep.Sync
	gauge(descSyncRun, bool01(sy != nil && sy.State != replicate.SyncDone), name)
	if sy != nil {
		gauge(descSyncDone, float64(sy.Compared), name)
		gauge(descSyncTotal, float64(sy.Total), name)
		gauge(descSyncSent, float64(sy.Transferred), name)
		gauge(descSyncETA, sy.ETASeconds, name)
	}
}

// diskStates are the values of tharsis_resource_state.
var diskStates = []string{"consistent", "outdated", "inconsistent", "syncing"}

// diskState sums up the node's disk: syncing while a full sync runs or
// waits, inconsistent when it is not equal to a prefix of the history,
// outdated when replay stopped before an emergency mark (consistent, but
// it needs a sync to go on), else consistent.
func diskState(rep *replicate.ResourceStatus) string {
	switch {
	case rep.Sync != nil && rep.Sync.State != replicate.SyncDone:
		return "syncing"
	case !rep.Consistent:
		return "inconsistent"
	case rep.StoppedAtMark != nil:
		return "outdated"
	}
	return "consistent"
}

func bool01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// metricsServer serves /metrics on the node's metrics_listen address.
type metricsServer struct {
	srv    *http.Server
	addr   string
	served chan struct{}
}

// startMetrics serves the metrics when the node has a metrics_listen
// address. A failure to listen stops the daemon's start: the operator
// asked for the address.
func (d *Daemon) startMetrics() error {
	addr := d.node.MetricsListen
	if addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics: listen on %s: %w (is another program using the port, or is the address not on this node? change metrics_listen of node %s)", addr, err, d.node.Name)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{d}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{MaxRequestsInFlight: 4, Timeout: 10 * time.Second}))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, "<html><body><h1>tharsis node %s</h1><p><a href=\"/metrics\">metrics</a></p></body></html>\n", d.node.Name)
	})
	m := &metricsServer{addr: ln.Addr().String(), served: make(chan struct{}),
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}}
	go func() {
		defer close(m.served)
		if err := m.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("metrics listener failed; no metrics are served", "listen", addr, "err", err)
		}
	}()
	d.mu.Lock()
	d.metrics = m
	d.mu.Unlock()
	d.log.Info("serving metrics", "url", "http://"+m.addr+"/metrics")
	return nil
}

// stopMetrics closes the metrics listener and its connections.
func (d *Daemon) stopMetrics(ctx context.Context) {
	d.mu.Lock()
	m := d.metrics
	d.metrics = nil
	d.mu.Unlock()
	if m == nil {
		return
	}
	if err := m.srv.Shutdown(ctx); err != nil {
		m.srv.Close()
	}
	<-m.served
}

// MetricsAddr returns the address the metrics are served on, or "".
func (d *Daemon) MetricsAddr() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.metrics == nil {
		return ""
	}
	return d.metrics.addr
}
