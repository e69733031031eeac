package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/tharsis/tharsis/appliance"
	"github.com/tharsis/tharsis/replicate"
)

func init() {
	c := &command{name: "view", args: "[RES]", summary: "show every node's copy of the resources: roles, disk states, distance to the primary's log end, WORK/TODO/HINT (like mars-status)"}
	c.run = func(args []string) error {
		fs := newFlagSet(c)
		var nf nodeFlags
		nf.register(fs)
		asJSON := fs.Bool("json", false, "print the view as JSON (schema: docs/view-json.md)")
		watch := fs.Bool("watch", false, "redraw until interrupted")
		interval := fs.Duration("interval", 2*time.Second, "time between redraws with --watch")
		stale := fs.Duration("stale", appliance.DefaultStaleAfter, "mark a peer's status stale beyond this age")
		raw := fs.Bool("raw", false, "with --json: print the daemon's internal status instead (unversioned, changes without notice; for debugging and tests)")
		if err := parse(fs, args); err != nil {
			return err
		}
		if fs.NArg() > 1 {
			return usageError{"view takes at most one resource name"}
		}
		cl, err := nf.client()
		if err != nil {
			return err
		}
		show := func(ctx context.Context, w io.Writer) error {
			st, err := fetchStatus(ctx, cl, fs.Arg(0))
			if err != nil {
				return err
			}
			if *asJSON {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				if *raw {
					return enc.Encode(st)
				}
				return enc.Encode(appliance.NewView(st, *stale))
			}
			renderView(w, appliance.NewView(st, *stale))
			return nil
		}
		if !*watch {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			return show(ctx, os.Stdout)
		}
		ctx, stop := signalContext()
		defer stop()
		for {
			var buf strings.Builder
			rctx, cancel := context.WithTimeout(ctx, *interval+10*time.Second)
			err := show(rctx, &buf)
			cancel()
			if ctx.Err() != nil {
				return nil
			}
			// Clear the screen, then draw (an error is shown, not fatal).
			fmt.Fprint(os.Stdout, "\033[H\033[2J")
			if err != nil {
				fmt.Fprintf(os.Stdout, "%s  %v\n", time.Now().Format("15:04:05"), err)
			} else {
				fmt.Fprint(os.Stdout, buf.String())
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(*interval):
			}
		}
	}
	register(c)
}

// fetchStatus asks the daemon for its status, of resource res only unless
// res is "".
func fetchStatus(ctx context.Context, cl *appliance.Client, res string) (*appliance.Status, error) {
	st, err := cl.Status(ctx)
	if err != nil {
		return nil, err
	}
	if res != "" {
		var keep []appliance.ResourceStatus
		for _, r := range st.Resources {
			if r.Name == res {
				keep = append(keep, r)
			}
		}
		if len(keep) == 0 {
			return nil, fmt.Errorf("node %s holds no resource %q: `tharsis view` lists those it holds", st.Node, res)
		}
		st.Resources = keep
	}
	return st, nil
}

// renderView draws the view as text.
func renderView(w io.Writer, v *appliance.View) {
	fmt.Fprintf(w, "node %s, up %s, status of %s\n", v.Node, v.TakenAt.Sub(v.StartedAt).Round(time.Second), v.TakenAt.Format("15:04:05"))
	if v.SyncRateLimit > 0 || v.FetchRateLimit > 0 {
		rate := func(n int64) string {
			if n == 0 {
				return "no limit"
			}
			return humanBytes(n) + "/s"
		}
		fmt.Fprintf(w, "  rate limits: sync %s, fetch %s\n", rate(v.SyncRateLimit), rate(v.FetchRateLimit))
	}
	if len(v.Resources) == 0 {
		fmt.Fprintln(w, "  holds no resources")
	}
	for _, name := range v.DeletedResources {
		fmt.Fprintf(w, "  TODO    resource %s was deleted here but the config still names it: remove it from the config\n", name)
	}
	for _, r := range v.Resources {
		renderResource(w, &r)
	}
}

func renderResource(w io.Writer, r *appliance.ResourceView) {
	repl := "replicated (transaction log)"
	if !r.Replicated {
		repl = "not replicated: writes go straight to the disk"
	}
	fmt.Fprintf(w, "\nresource %s: %s here, %s\n", r.Name, r.Role, humanBytes(r.SizeBytes))
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
		unapplied := ""
		if l.UnappliedRecords > 0 {
			unapplied = fmt.Sprintf("; %d write%s (%s) acknowledged, not yet on the disk", l.UnappliedRecords, plural(l.UnappliedRecords), humanBytes(l.UnappliedBytes))
		}
		fmt.Fprintf(w, "  log     writing %s; %d segment%s, %s; a restart would replay %s%s\n", l.CurrentSegment, l.Segments, plural(l.Segments), humanBytes(l.Bytes), humanBytes(l.PendingReplayBytes), unapplied)
		if l.Error != "" {
			fmt.Fprintf(w, "  ERROR   %s\n", l.Error)
		}
	}
	if r.ExportError != "" {
		fmt.Fprintf(w, "  ERROR   export: %s\n", r.ExportError)
	}
	if r.Replicated && len(r.Nodes) > 0 {
		primary := "NONE"
		if r.DesignatedPrimary != "" {
			primary = r.DesignatedPrimary
		}
		line := fmt.Sprintf("  primary %s (generation %d, as this node knows it)", primary, r.Generation)
		if r.DesignatedPrimary != "" && !r.PrimaryReachable {
			line += ", UNREACHABLE"
		}
		if e := r.PrimaryLogEnd; e != nil {
			line += fmt.Sprintf("; log end #%d (seg %d)", e.Seq, e.Segment)
			if r.PrimaryLogEndAgeSeconds >= 1 {
				line += " as of " + appliance.AgeText(r.PrimaryLogEndAgeSeconds) + " ago"
			}
		}
		fmt.Fprintln(w, line)
		fmt.Fprintf(w, "  %-10s %-13s %-13s %-15s %-15s %-30s %s\n", "NODE", "ROLE", "DISK", "REPLICATION", "APPLIED", "BEHIND PRIMARY", "STATUS AND NOTES")
		for _, n := range r.Nodes {
			renderNode(w, &n)
		}
	}
	for _, l := range r.Work {
		fmt.Fprintf(w, "  WORK    %s\n", l)
	}
	for _, l := range r.Todo {
		fmt.Fprintf(w, "  TODO    %s\n", l)
	}
	for _, l := range r.Hints {
		fmt.Fprintf(w, "  HINT    %s\n", l)
	}
}

func renderNode(w io.Writer, n *appliance.NodeView) {
	pos := func(seq, seg uint64) string { return fmt.Sprintf("#%d (seg %d)", seq, seg) }
	role := n.Role
	if n.Generation > 0 {
		role += fmt.Sprintf("/g%d", n.Generation)
	}
	applied, behind := "-", "-"
	if n.Role != "unknown" {
		applied = pos(n.Applied.Seq, n.Applied.Segment)
		if n.BehindRecords > 0 {
			behind = fmt.Sprintf("%s, %d rec, %s", behindBytes(n), n.BehindRecords, appliance.AgeText(n.BehindSeconds))
		} else if n.DiskState != appliance.DiskSplitBrain {
			behind = "0 B (caught up)"
		}
	}
	status := "current"
	switch {
	case n.Role == "unknown":
		status = "never heard from it"
	case !n.ThisNode:
		status = "as of " + appliance.AgeText(n.StatusAgeSeconds) + " ago"
	}
	if n.Stale {
		status += ", STALE"
	}
	detail := []string{status}
	if n.Role != "unknown" && n.LogEnd != n.Applied {
		detail = append(detail, "fetched "+pos(n.LogEnd.Seq, n.LogEnd.Segment))
	}
	if n.UnfetchedBytes > 0 {
		detail = append(detail, humanBytes(n.UnfetchedBytes)+" not fetched yet")
	}
	if n.Source != "" {
		detail = append(detail, "from "+n.Source)
	}
	if n.FetchRate > 0 || n.ReplayRate > 0 {
		detail = append(detail, fmt.Sprintf("fetch %s/s, replay %s/s", humanBytes(int64(n.FetchRate)), humanBytes(int64(n.ReplayRate))))
	}
	if n.FetchCompression != "" && n.FetchWireBytes > 0 {
		detail = append(detail, fmt.Sprintf("%s %.1fx (%s of log in %s)", n.FetchCompression, float64(n.FetchLogBytes)/float64(n.FetchWireBytes), humanBytes(n.FetchLogBytes), humanBytes(n.FetchWireBytes)))
	}
	for _, sw := range []struct {
		on   bool
		name string
	}{{n.FetchPaused, "fetch PAUSED"}, {n.ReplayPaused, "replay PAUSED"}, {n.SyncPaused, "sync PAUSED"}} {
		if sw.on {
			detail = append(detail, sw.name)
		}
	}
	if n.Handover != "" {
		detail = append(detail, "handover with "+n.Handover)
	}
	if n.Detached {
		detail = append(detail, "disk DETACHED")
	}
	if n.StatusError != "" {
		detail = append(detail, "last poll failed: "+n.StatusError)
	}
	if n.Error != "" {
		detail = append(detail, "error: "+n.Error)
	}
	fmt.Fprintf(w, "  %-10s %-13s %-13s %-15s %-15s %-30s %s\n", n.Node, role, n.DiskState, n.ReplicationState, applied, behind, strings.Join(detail, "; "))
	if s := n.Sync; s != nil {
		fmt.Fprintf(w, "  %-10s sync %-11s %s\n", "", s.State, progress(s.Compared, s.Total, s.Transferred, s.Source, s.ETASeconds))
	} else if s := n.LastSync; s != nil {
		fmt.Fprintf(w, "  %-10s last sync: compared %s, transferred %s\n", "", humanBytes(s.Compared), humanBytes(s.Transferred))
	}
	if v := n.Verify; v != nil {
		fmt.Fprintf(w, "  %-10s %s\n", "", verifySummary(v))
	}
	if em := n.Emergency; em != nil && em.Active {
		fmt.Fprintf(w, "  %-10s EMERGENCY since %s: writes go to the disk without the log (%d chunk%s so far); secondaries stop at #%d\n", "", em.Since.Format("15:04:05"), em.Chunks, plural(em.Chunks), em.At.Seq)
	}
	if a := n.Ack; a != nil && a.State != replicate.AckOff {
		fmt.Fprintf(w, "  %-10s %s\n", "", ackSummary(a))
	}
	if p := n.StoppedAtMark; p != nil {
		fmt.Fprintf(w, "  %-10s STOPPED at the primary's emergency mark (#%d): consistent but outdated\n", "", p.Seq+1)
	}
	for _, rel := range n.Released {
		fmt.Fprintf(w, "  %-10s RELEASED %s: %s; its log is no longer kept here: once deleted, %s needs `tharsis invalidate` there\n", "", rel.Node, rel.Why, rel.Node)
	}
	for _, d := range n.Damage {
		state := "DAMAGED LOG"
		switch {
		case d.Restored:
			state = "damaged log (restored)"
		case d.Quarantined != "":
			state = "DAMAGED LOG (moved aside as " + d.Quarantined + ")"
		}
		fmt.Fprintf(w, "  %-10s %s: %s at offset %d: %s (found %d×)\n", "", state, d.Segment, d.Offset, d.Reason, d.Count)
	}
}

// behindBytes formats a node's distance in bytes, marked as a lower bound
// when a segment in between is unknown.
func behindBytes(n *appliance.NodeView) string {
	if n.BehindExact {
		return humanBytes(n.BehindBytes)
	}
	return "≥" + humanBytes(n.BehindBytes)
}

// progress draws a sync's progress bar with its ETA.
func progress(compared, total, transferred int64, source string, eta float64) string {
	out := fmt.Sprintf("%s, transferred %s", bar(compared, total), humanBytes(transferred))
	if source != "" {
		out += " from " + source
	}
	if eta > 0 {
		out += fmt.Sprintf(", ETA %s", (time.Duration(eta) * time.Second).String())
	}
	return out
}

// bar draws a progress bar of done bytes out of total, with the percentage.
func bar(done, total int64) string {
	const width = 30
	frac := 0.0
	if total > 0 {
		frac = min(1, float64(done)/float64(total))
	}
	n := int(frac * width)
	return fmt.Sprintf("[%s%s] %5.1f%% of %s", strings.Repeat("#", n), strings.Repeat(".", width-n), 100*frac, humanBytes(total))
}

// humanBytes formats n with one decimal in binary units.
func humanBytes(n int64) string { return appliance.HumanBytes(n) }

// ackSummary is the primary's synchronous acknowledgement in one line.
func ackSummary(a *replicate.AckStatus) string {
	var acked []string
	for _, n := range slices.Sorted(maps.Keys(a.Acked)) {
		acked = append(acked, fmt.Sprintf("%s #%d", n, a.Acked[n].Seq))
	}
	who := "none yet"
	if len(acked) > 0 {
		who = strings.Join(acked, ", ")
	}
	if a.State == replicate.AckFallback {
		return fmt.Sprintf("ack: ASYNCHRONOUS FALLBACK since %s (ack_secondaries = %d, ack_timeout = %s; acknowledged by %s)", a.Since.Format("15:04:05"), a.Secondaries, a.Timeout, who)
	}
	return fmt.Sprintf("ack: synchronous, %d secondar%s (ack_timeout = %s; acknowledged by %s)", a.Secondaries, map[bool]string{true: "y", false: "ies"}[a.Secondaries == 1], a.Timeout, who)
}
