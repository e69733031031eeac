package appliance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/tharsis/tharsis/config"
	"github.com/tharsis/tharsis/replicate"
)

// Resize: `tharsis resize RES [SIZE]` grows a replicated resource online.
// The primary checks every node's disk, logs the resize (so each secondary
// grows at the same point of the history) and applies it. Every node keeps
// the size it reached in its log directory (resourceSizeFile, written
// before the resize record counts as applied), and opens its disk at the
// larger of that and the config's size.

const resourceSizeFile = "size.json"

func writeResourceSize(dir string, size int64) error {
	b, _ := json.Marshal(struct {
		Size int64 `json:"size"`
	}{size})
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := replicate.WriteFileAtomic(filepath.Join(dir, resourceSizeFile), append(b, '\n')); err != nil {
		return fmt.Errorf("persist the resource size: %w", err)
	}
	return nil
}

// readResourceSize returns the size a resize left in dir (0: none).
func readResourceSize(dir string) (int64, error) {
	b, err := os.ReadFile(filepath.Join(dir, resourceSizeFile))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	var v struct {
		Size int64 `json:"size"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return 0, fmt.Errorf("%s is unreadable: %w", filepath.Join(dir, resourceSizeFile), err)
	}
	return v.Size, nil
}

// resize grows r to size bytes (0: the smallest disk of all nodes). It
// runs on the primary and refuses, with every node's disk size, unless
// every node holding r has room.
func (d *Daemon) resize(ctx context.Context, r *resource, size int64) (string, error) {
	prim, _, _ := r.paths()
	if !r.config().Replicated {
		return "", errors.New("resize needs a replicated resource (its log carries the resize to every node)")
	}
	if prim == nil {
		return "", fmt.Errorf("node %s is not the primary of %s: run resize there", d.node.Name, r.name)
	}
	caps := map[string]int64{d.node.Name: r.disk.Capacity()}
	var problems []string
	if d.cluster != nil {
		d.cluster.Poll(ctx) // every disk as it is now
		peers := d.cluster.Peers()
		for _, n := range d.others(r.config()) {
			ps, ok := peers[n]
			if !ok || ps.Updated.IsZero() {
				problems = append(problems, fmt.Sprintf("node %s: its disk size is unknown (never reached)", n))
				continue
			}
			rs, ok := ps.Status.Resource(r.name)
			if !ok || rs.DiskCapacity == 0 {
				problems = append(problems, fmt.Sprintf("node %s: it reports no disk size for %s", n, r.name))
				continue
			}
			caps[n] = rs.DiskCapacity
		}
	}
	if len(problems) > 0 {
		return "", fmt.Errorf("cannot check every disk: %s", strings.Join(problems, "; "))
	}
	if size == 0 {
		for _, c := range caps {
			if size == 0 || c < size {
				size = c
			}
		}
		size -= size % 512
	}
	var small []string
	for _, n := range sortedKeys(caps) {
		if caps[n] < size {
			small = append(small, fmt.Sprintf("%s has %s", n, config.FormatSize(caps[n])))
		}
	}
	if len(small) > 0 {
		return "", fmt.Errorf("resize %s to %s refused: %s; grow those disks first", r.name, config.FormatSize(size), strings.Join(small, ", "))
	}
	old := prim.Size()
	if size <= old {
		return "", fmt.Errorf("%s has %s already; resize only grows it (every disk: %s)", r.name, config.FormatSize(old), capsText(caps))
	}
	if err := prim.Resize(size); err != nil {
		return "", fmt.Errorf("resize %s: %w", r.name, err)
	}
	d.log.Info("resource resized", "resource", r.name, "from", old, "to", size)
	return fmt.Sprintf("%s: resized from %s to %s; NBD clients see it when they connect again", r.name, config.FormatSize(old), config.FormatSize(size)), nil
}

func capsText(caps map[string]int64) string {
	var out []string
	for _, n := range sortedKeys(caps) {
		out = append(out, n+" "+config.FormatSize(caps[n]))
	}
	return strings.Join(out, ", ")
}

// handleResize serves POST /v0/resize/RES?size=BYTES.
func (d *Daemon) handleResize(w http.ResponseWriter, req *http.Request) {
	name := req.PathValue("res")
	var size int64
	if v := req.URL.Query().Get("size"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 || n%512 != 0 {
			http.Error(w, fmt.Sprintf("bad size %q: a multiple of 512 bytes", v), http.StatusBadRequest)
			return
		}
		size = n
	}
	r := d.heldResource(w, name)
	if r == nil {
		return
	}
	out, err := d.resize(req.Context(), r, size)
	if err != nil {
		http.Error(w, err.Error(), http.StatusConflict)
		return
	}
	fmt.Fprintln(w, out)
}
