package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/tharsis/tharsis/appliance"
	"github.com/tharsis/tharsis/replicate"
)

func init() {
	c := &command{name: "view", args: "[RES]", summary: "show this node's resources, roles, exports and log (like mars-status)"}
	c.run = func(args []string) error {
		fs := newFlagSet(c)
		var nf nodeFlags
		nf.register(fs)
		asJSON := fs.Bool("json", false, "print the status as JSON")
		if err := parse(fs, args); err != nil {
			return err
		}
		cl, err := nf.client()
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		st, err := cl.Status(ctx)
		if err != nil {
			return err
		}
		if res := fs.Arg(0); res != "" {
			var keep []appliance.ResourceStatus
			for _, r := range st.Resources {
				if r.Name == res {
					keep = append(keep, r)
				}
			}
			if len(keep) == 0 {
				return fmt.Errorf("node %s holds no resource %q", st.Node, res)
			}
			st.Resources = keep
		}
		if *asJSON {
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(st)
		}
		renderStatus(os.Stdout, st)
		return nil
	}
	register(c)
}

func renderStatus(w io.Writer, st *appliance.Status) {
	fmt.Fprintf(w, "node %s, up %s\n", st.Node, time.Since(st.Started).Round(time.Second))
	if st.SyncRate > 0 || st.FetchRate > 0 {
		rate := func(n int64) string {
			if n == 0 {
				return "no limit"
			}
			return humanBytes(n) + "/s"
		}
		fmt.Fprintf(w, "  rate limits: sync %s, fetch %s\n", rate(st.SyncRate), rate(st.FetchRate))
	}
	if len(st.Resources) == 0 {
		fmt.Fprintln(w, "  holds no resources")
	}
	for _, r := range st.Resources {
		repl := "replicated (transaction log)"
		if !r.Replicated {
			repl = "not replicated: writes go straight to the disk"
		}
		fmt.Fprintf(w, "\nresource %s: %s here, %s\n", r.Name, r.Role, humanBytes(r.Size))
		fmt.Fprintf(w, "  disk    %s\n  mode    %s\n", r.Disk, repl)
		for _, e := range r.Exports {
			var flags []string
			if e.ReadOnly {
				flags = append(flags, "read-only")
			}
			if e.Kind == "aoe" {
				if e.WriteCache {
					flags = append(flags, "write cache ON: writes acknowledged before they are durable")
				} else {
					flags = append(flags, "writes acknowledged when durable")
				}
			}
			extra := ""
			if len(flags) > 0 {
				extra = " (" + strings.Join(flags, ", ") + ")"
			}
			fmt.Fprintf(w, "  export  %-3s %s on %s%s\n", e.Kind, e.Name, e.Where, extra)
		}
		if l := r.Log; l != nil {
			var total int64
			for _, s := range l.Segments {
				total += s.Size
			}
			fmt.Fprintf(w, "  log     writing %s; %d segments, %s; a restart would replay %s\n", l.Current, len(l.Segments), humanBytes(total), humanBytes(l.PendingReplay))
			if l.Err != "" {
				fmt.Fprintf(w, "  ERROR   %s\n", l.Err)
			}
		}
		if r.Replication == nil {
			continue
		}
		// One line per node that holds the resource: this one, then peers.
		rows := []nodeRow{{st.Node, r.Replication, ""}}
		for _, p := range st.Peers {
			if rs, ok := p.Status.Resource(r.Name); ok {
				rows = append(rows, nodeRow{p.Peer.Name, &rs, p.Err})
			} else if p.Err != "" {
				rows = append(rows, nodeRow{p.Peer.Name, nil, p.Err})
			}
		}
		d := r.Replication.Designation
		if d.Primary != "" {
			fmt.Fprintf(w, "  primary %s (generation %d, as this node knows it)\n", d.Primary, d.Generation)
		} else {
			fmt.Fprintf(w, "  primary NONE (generation %d): run `tharsis primary %s` on the node that should serve\n", d.Generation, r.Name)
		}
		if r.ExportError != "" {
			fmt.Fprintf(w, "  ERROR   export: %s\n", r.ExportError)
		}
		fmt.Fprintf(w, "  %-10s %-12s %-24s %-24s %-18s %s\n", "NODE", "ROLE", "LOG END (fetched)", "APPLIED (replayed)", "LAG", "STATE")
		for _, row := range rows {
			renderNodeRow(w, row)
		}
		renderSplits(w, r.Name, rows)
		renderResizeHint(w, r.Name, r.Size, rows)
	}
}

// renderResizeHint says when every node's disk has room to grow the
// resource.
func renderResizeHint(w io.Writer, res string, size int64, rows []nodeRow) {
	smallest := int64(-1)
	for _, row := range rows {
		if row.rs == nil || row.rs.DiskCapacity == 0 {
			return
		}
		if smallest < 0 || row.rs.DiskCapacity < smallest {
			smallest = row.rs.DiskCapacity
		}
	}
	if smallest-smallest%512 > size {
		fmt.Fprintf(w, "  HINT    every disk is larger than the resource (the smallest has %s): `tharsis resize %s` on the primary grows it online\n", humanBytes(smallest), res)
	}
}

type nodeRow struct {
	node string
	rs   *replicate.ResourceStatus
	err  string
}

// renderSplits says SPLIT BRAIN for every fork any node reports, once per
// pair, with where the histories fork and what to do.
func renderSplits(w io.Writer, res string, rows []nodeRow) {
	seen := map[string]bool{}
	for _, row := range rows {
		if row.rs == nil {
			continue
		}
		for _, f := range row.rs.Forks {
			a, b := row.node, f.Peer
			if a > b {
				a, b = b, a
			}
			if seen[a+"|"+b] {
				continue
			}
			seen[a+"|"+b] = true
			fmt.Fprintf(w, "  SPLIT BRAIN between %s and %s: the logs fork at %s.\n", row.node, f.Peer, f.Fork.String())
			fmt.Fprintf(w, "    %s is not on the current history: run `tharsis invalidate %s` there (discards what it wrote after the fork, then a fast full sync), or `tharsis leave-resource %s` to keep its disk for inspection\n", f.Loser, res, res)
		}
	}
}

func renderNodeRow(w io.Writer, row nodeRow) {
	rs := row.rs
	if rs == nil {
		fmt.Fprintf(w, "  %-10s %-12s unreachable: %s\n", row.node, "?", row.err)
		return
	}
	pos := func(p replicate.Position) string { return fmt.Sprintf("#%d (seg %d)", p.Seq, p.Segment) }
	lag := "-"
	if rs.Role != replicate.RolePrimary {
		lag = fmt.Sprintf("%s, %.1fs", humanBytes(rs.LagBytes), rs.LagSeconds)
	}
	var state []string
	switch {
	case rs.Diverged:
		state = append(state, "SPLIT BRAIN: its log forks from the current history")
	case rs.Consistent:
		state = append(state, "consistent")
	default:
		state = append(state, "INCONSISTENT")
	}
	if rs.Handover != "" {
		state = append(state, "handover with "+rs.Handover)
	}
	if rs.Source != "" {
		state = append(state, "from "+rs.Source)
	}
	for _, sw := range []struct {
		on   bool
		name string
	}{{rs.FetchPaused, "fetch paused"}, {rs.ReplayPaused, "replay paused"}, {rs.SyncPaused, "sync paused"}} {
		if sw.on {
			state = append(state, sw.name)
		}
	}
	if row.err != "" {
		state = append(state, "status stale: "+row.err)
	}
	if rs.Err != "" {
		state = append(state, "error: "+rs.Err)
	}
	role := rs.Phase.String()
	if rs.Designation.Generation > 0 {
		role += fmt.Sprintf("/g%d", rs.Designation.Generation)
	}
	fmt.Fprintf(w, "  %-10s %-12s %-24s %-24s %-18s %s\n", row.node, role, pos(rs.End), pos(rs.Applied), lag, strings.Join(state, ", "))
	if s := rs.Sync; s != nil {
		fmt.Fprintf(w, "  %-10s sync %-9s %s\n", "", s.State, progress(s))
	} else if s := rs.LastSync; s != nil {
		fmt.Fprintf(w, "  %-10s last sync: compared %s, transferred %s\n", "", humanBytes(s.Compared), humanBytes(s.Transferred))
	}
	if v := rs.Verify; v != nil {
		fmt.Fprintf(w, "  %-10s %s\n", "", verifySummary(v))
	}
	if em := rs.Emergency; em != nil && em.Active {
		fmt.Fprintf(w, "  %-10s EMERGENCY since %s: the log filesystem is full, writes go to the disk without the log (%d chunks so far); secondaries stop at #%d. Free space in the log directory (`tharsis log-delete-all`, a larger filesystem): the log resumes by itself; then run `tharsis invalidate` on each secondary\n",
			"", em.Since.Format("15:04:05"), em.Chunks, em.At.Seq)
	} else if em != nil && len(em.Marks) > 0 {
		fmt.Fprintf(w, "  %-10s emergency over (mark at #%d): %d chunks were written without the log; secondaries stopped at the mark need `tharsis invalidate` (copies only those chunks)\n",
			"", em.Marks[len(em.Marks)-1].Seq, em.Chunks)
	}
	if p := rs.StoppedAtMark; p != nil {
		fmt.Fprintf(w, "  %-10s STOPPED at the primary's emergency mark (#%d): consistent but outdated; run `tharsis invalidate` here (copies only the chunks written without the log)\n", "", p.Seq+1)
	}
	for _, rel := range rs.Released {
		fmt.Fprintf(w, "  %-10s RELEASED %s: %s; its log is no longer kept here: once deleted, %s needs `tharsis invalidate` there\n", "", rel.Node, rel.Why, rel.Node)
	}
	for _, d := range rs.Damage {
		state := "DAMAGED LOG"
		switch {
		case d.Restored:
			state = "damaged log (restored)"
		case d.Quarantined != "":
			state = "DAMAGED LOG (moved aside as " + d.Quarantined + ")"
		}
		fmt.Fprintf(w, "  %-10s %s: %s at offset %d: %s (found %d×); %s\n", "", state, d.Segment, d.Offset, d.Reason, d.Count, d.Action)
	}
}

// progress draws a sync's progress bar with its ETA.
func progress(s *replicate.SyncProgress) string {
	out := fmt.Sprintf("%s, transferred %s", bar(s.Compared, s.Total), humanBytes(s.Transferred))
	if s.Source != "" {
		out += " from " + s.Source
	}
	if s.ETASeconds > 0 {
		out += fmt.Sprintf(", ETA %s", (time.Duration(s.ETASeconds) * time.Second).String())
	}
	return out
}

// bar draws a progress bar of done bytes out of total, with the percentage.
func bar(done, total int64) string {
	const width = 30
	frac := 0.0
	if total > 0 {
		frac = float64(done) / float64(total)
	}
	n := int(frac * width)
	return fmt.Sprintf("[%s%s] %5.1f%% of %s", strings.Repeat("#", n), strings.Repeat(".", width-n), 100*frac, humanBytes(total))
}

// humanBytes formats n with one decimal in binary units.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}
