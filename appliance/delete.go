package appliance

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/tharsis/tharsis/replicate"
)

// delete-resource (marsadm's verb) ends a replicated resource on this node
// for good: the role loop and data path stop, the disk is closed and left
// as it is, and the resource's log directory (log segments, role state,
// sync and emergency state) is removed. It is refused on the primary, and
// while another node of the resource still holds it (it answers with the
// resource in a phase other than left) or cannot be asked, unless forced.
// The resource stays out of this daemon until it is removed from the config
// (a reload then has nothing left to close) or the daemon restarts, when a
// resource still in the config is opened afresh and joins with a full sync.

// deleteResource carries out delete-resource on r.
func (d *Daemon) deleteResource(ctx context.Context, r *resource, force bool) (string, error) {
	if r.role == nil {
		return "", fmt.Errorf("%s is not replicated: it has no log to delete; remove it from the config and run `tharsis reload`", r.name)
	}
	switch r.role.snapshot().Phase {
	case replicate.PhasePrimary, replicate.PhaseHandingOver, replicate.PhasePromoting:
		return "", fmt.Errorf("this node is the primary of %s: hand it over (`tharsis primary %s` on another node) or give it up (`tharsis secondary %s`) first", r.name, r.name, r.name)
	}
	if holders := d.stillHeld(ctx, r); len(holders) > 0 && !force {
		return "", fmt.Errorf("other nodes still hold %s: %s; run `tharsis leave-resource %s` (or delete-resource) there first, or pass --force to delete it here anyway",
			r.name, strings.Join(holders, "; "), r.name)
	}
	d.reloadMu.Lock() // no reload while the resource goes away
	defer d.reloadMu.Unlock()
	if err := d.closeResource(r.name); err != nil {
		return "", err
	}
	if err := os.RemoveAll(r.dir); err != nil {
		return "", fmt.Errorf("the resource is closed, but its log directory %s could not be removed: %w", r.dir, err)
	}
	d.mu.Lock()
	if d.deleted == nil {
		d.deleted = map[string]bool{}
	}
	d.deleted[r.name] = true
	d.mu.Unlock()
	d.log.Warn("resource deleted on this node: its log directory is removed, its disk left as it is; remove it from the config", "resource", r.name, "log_dir", r.dir, "disk", r.disk.Name())
	return fmt.Sprintf("%s: deleted on %s: the log directory %s is removed, the disk %s is left as it is. Remove the resource from the config here (`tharsis config edit`); while it is there, the next start opens it afresh and joins it with a full sync",
		r.name, d.node.Name, r.dir, r.disk.Name()), nil
}

// stillHeld lists the other nodes of r that still hold it (or cannot be
// asked), after a fresh poll.
func (d *Daemon) stillHeld(ctx context.Context, r *resource) []string {
	if d.cluster == nil {
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	d.cluster.Poll(pctx)
	cancel()
	peers := d.cluster.Peers()
	var out []string
	for _, n := range d.others(r.config()) {
		ps, ok := peers[n]
		switch {
		case !ok || ps.Updated.IsZero() || ps.Err != "":
			why := "never answered"
			if ok && ps.Err != "" {
				why = ps.Err
			}
			out = append(out, fmt.Sprintf("%s cannot be asked (%s)", n, why))
		default:
			if st, ok := ps.Status.Resource(r.name); ok && st.Phase != replicate.PhaseLeft {
				out = append(out, fmt.Sprintf("%s holds it (%s)", n, st.Phase))
			}
		}
	}
	return out
}

// handleDelete answers POST /v0/delete/RES[?force].
func (d *Daemon) handleDelete(w http.ResponseWriter, req *http.Request) {
	name := req.PathValue("res")
	if name == "all" {
		http.Error(w, "delete-resource takes one resource at a time, not all", http.StatusBadRequest)
		return
	}
	d.mu.Lock()
	gone := d.deleted[name]
	d.mu.Unlock()
	if gone {
		http.Error(w, fmt.Sprintf("%s was deleted on node %s already; remove it from the config", name, d.node.Name), http.StatusConflict)
		return
	}
	r := d.heldResource(w, name)
	if r == nil {
		return
	}
	out, err := d.deleteResource(req.Context(), r, req.URL.Query().Has("force"))
	if err != nil {
		code := http.StatusConflict
		if errors.Is(err, context.DeadlineExceeded) {
			code = http.StatusGatewayTimeout
		}
		http.Error(w, err.Error(), code)
		return
	}
	fmt.Fprintln(w, out)
}
