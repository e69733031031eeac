package appliance

import (
	"context"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tharsis/tharsis/config"
	"github.com/tharsis/tharsis/replicate"
)

// retentionInterval is how often the log directories' free space is checked.
const retentionInterval = 10 * time.Second

// lowOnSpace reports whether a log filesystem with avail of total bytes free
// should give up applied segments: when less than a fifth of it, or less
// than two segments, is free. Deleting only ever removes segments every
// node has fetched and replayed (see replicate's DeleteApplied).
func lowOnSpace(avail, total, segmentSize int64) bool {
	return avail < total/5 || avail < 2*segmentSize
}

// retain deletes applied log segments of every resource whose log
// filesystem runs low on space, until ctx is done.
func (d *Daemon) retain(ctx context.Context) {
	t := time.NewTicker(retentionInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		d.mu.Lock()
		var low, limited []*resource
		for _, name := range sortedKeys(d.resources) {
			r := d.resources[name]
			if r.repl() == nil {
				continue
			}
			if r.config().RetainMax > 0 || r.config().RetainMaxAge > 0 {
				limited = append(limited, r)
			}
			var st unix.Statfs_t
			if err := unix.Statfs(d.config().LogDir(name, d.node.Name), &st); err != nil {
				continue
			}
			bs := int64(st.Bsize)
			avail, total := int64(st.Bavail)*bs, int64(st.Blocks)*bs
			d.warnSpace(r, avail, total)
			if lowOnSpace(avail, total, r.config().SegmentSize) {
				low = append(low, r)
			}
		}
		d.mu.Unlock()
		// Releases show in the view when they happen, not only when
		// space runs low.
		for _, r := range limited {
			if prim, _, _ := r.paths(); prim != nil && d.cluster != nil {
				d.minApplied(r, func() []string { return d.others(r.config()) })()
			}
		}
		for _, r := range low {
			removed, err := r.repl().DeleteApplied(true)
			if err != nil {
				d.log.Debug("log filesystem low on space, but no segment can be deleted yet", "resource", r.name, "why", err)
				continue
			}
			d.log.Info("log filesystem low on space: deleted applied segments", "resource", r.name, "removed", removed)
		}
	}
}

// warnSpace is the first stage of a filling log filesystem: a WARN when
// less than a quarter (or four segments) is free, once, until more than a
// third (and six segments) is free again.
// The next stages: applied segments are deleted (lowOnSpace), a secondary
// stops fetching (its appends fail), the primary enters emergency mode.
func (d *Daemon) warnSpace(r *resource, avail, total int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case !r.spaceWarned && (avail < total/4 || avail < 4*r.config().SegmentSize):
		r.spaceWarned = true
		d.log.Warn("the log filesystem is filling up: applied segments are deleted below a fifth free, and a full log puts the primary into emergency mode; free space or make it larger",
			"resource", r.name, "free", config.FormatSize(avail), "size", config.FormatSize(total))
	case r.spaceWarned && avail > total/3 && avail > 6*r.config().SegmentSize:
		r.spaceWarned = false
		d.log.Info("the log filesystem has space again", "resource", r.name, "free", config.FormatSize(avail))
	}
}

// minApplied is MinAppliedByPeers for r: the lowest position the members
// replayed, leaving out members the retention limits release (see
// released).
func (d *Daemon) minApplied(r *resource, members func() []string) func() replicate.Position {
	return func() replicate.Position {
		var keep []string
		for _, m := range members() {
			why := d.released(r, m)
			d.setReleased(r, m, why)
			if why == "" {
				keep = append(keep, m)
			}
		}
		return d.cluster.MinApplied(r.name, keep)
	}
}

// released says why node m no longer holds r's log back, or "": it has
// been unreachable for longer than retain_max_age (counted from the
// daemon's start when it never answered), or the log holds more than
// retain_max bytes past what it replayed.
func (d *Daemon) released(r *resource, m string) string {
	rc := r.config()
	if rc.RetainMax <= 0 && rc.RetainMaxAge <= 0 {
		return ""
	}
	ps, known := d.cluster.Peers()[m]
	if rc.RetainMaxAge > 0 && (!known || ps.Err != "" || ps.Updated.IsZero()) {
		since := d.started
		if known && !ps.Updated.IsZero() {
			since = ps.Updated
		}
		if down := time.Since(since); down > rc.RetainMaxAge {
			return fmt.Sprintf("unreachable for %s (retain_max_age %s)", down.Round(time.Second), rc.RetainMaxAge)
		}
	}
	if rc.RetainMax > 0 {
		// What it replayed, as it last said (nothing, if it never
		// answered: it holds the whole log back).
		var applied replicate.Position
		if known && !ps.Updated.IsZero() {
			if rs, ok := ps.Status.Resource(r.name); ok {
				applied = rs.Applied
			}
		}
		if _, _, src := r.paths(); src != nil {
			var held int64
			for _, s := range src.Status().Segments {
				n, ok := replicate.ParseSegmentName(s.Name)
				switch {
				case !ok || n.Seq < applied.Segment:
				case n.Seq == applied.Segment:
					held += max(0, s.Size-applied.Offset)
				default:
					held += s.Size
				}
			}
			if held > rc.RetainMax {
				return fmt.Sprintf("%s behind (retain_max %s)", config.FormatSize(held), config.FormatSize(rc.RetainMax))
			}
		}
	}
	return ""
}

// setReleased records (why != "") or clears the release of node m of r,
// and logs the change.
func (d *Daemon) setReleased(r *resource, m, why string) {
	r.mu.Lock()
	old := r.released[m]
	if why == "" {
		delete(r.released, m)
	} else {
		if r.released == nil {
			r.released = map[string]string{}
		}
		r.released[m] = why
	}
	r.mu.Unlock()
	switch {
	case old == "" && why != "":
		d.log.Warn("retention limit reached: the log is no longer kept for a node; if its segments are deleted, it needs `tharsis invalidate` there", "resource", r.name, "node", m, "why", why)
	case old != "" && why == "":
		d.log.Info("a released node is within the retention limits again", "resource", r.name, "node", m)
	}
}

// releases lists the released nodes, sorted.
func (r *resource) releases() []replicate.Release {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []replicate.Release
	for _, m := range sortedKeys(r.released) {
		out = append(out, replicate.Release{Node: m, Why: r.released[m]})
	}
	return out
}
