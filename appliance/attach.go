package appliance

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/tharsis/tharsis/replicate"
)

// Attach and detach (marsadm's verbs): a detached resource's data device
// is closed and not touched. On a replicated resource the role core
// decides (the state persists in its role state): a detached primary stays
// the designated primary but runs no data path and serves nothing; a
// detached secondary goes on fetching the log and replays it once
// attached. An unreplicated resource's exports stop; its state persists as
// a marker file in the node's state directory.
//
// up and down are marsadm's composites: up = attach + connect, down =
// disconnect + detach.

// setDetached detaches or attaches r's disk (markDetached records it once
// the data path follows). The data path must be closed (or, for a
// secondary, about to be opened detached).
func (d *Daemon) setDetached(r *resource, detached bool) error {
	var err error
	changed := detached != r.disk.Detached()
	switch {
	case !changed:
	case detached:
		err = r.disk.Detach()
	default:
		err = r.disk.Attach()
	}
	r.mu.Lock()
	r.attachErr = ""
	if err != nil {
		r.attachErr = err.Error()
	}
	r.mu.Unlock()
	switch {
	case err != nil:
		return fmt.Errorf("resource %s: %w", r.name, err)
	case changed && detached:
		d.log.Info("disk detached: closed and not touched until `tharsis attach`", "resource", r.name, "disk", r.disk.Name())
	case changed:
		d.log.Info("disk attached", "resource", r.name, "disk", r.disk.Name())
	}
	return nil
}

// markDetached records that r's data path now runs detached (or
// attached): after the disk was detached or attached and, for a replicated
// resource, the data path reopened (waitAttached waits for it).
func (r *resource) markDetached(detached bool) {
	r.mu.Lock()
	r.detached = detached
	r.mu.Unlock()
}

// isDetached reports whether r's disk is detached.
func (r *resource) isDetached() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.detached
}

// detachedMarker is where the detached state of an unreplicated resource
// persists.
func (d *Daemon) detachedMarker(name string) string {
	return filepath.Join(d.node.StateDir, "detached-"+name)
}

// attachUnreplicated attaches or detaches an unreplicated resource: its
// exports stop before a detach and start again after an attach when this
// node is its primary.
func (d *Daemon) attachUnreplicated(r *resource, attach bool) (string, error) {
	r.attachMu.Lock()
	defer r.attachMu.Unlock()
	if attach != r.isDetached() {
		if attach {
			return r.name + ": attached already", nil
		}
		return r.name + ": detached already", nil
	}
	marker := d.detachedMarker(r.name)
	if !attach {
		d.stopExports(r)
		if err := r.disk.Flush(); err != nil {
			return "", fmt.Errorf("flush before detaching: %w", err)
		}
		if err := os.WriteFile(marker, []byte("detached by `tharsis detach`\n"), 0o600); err != nil {
			return "", fmt.Errorf("persist the detached state: %w", err)
		}
		if err := d.setDetached(r, true); err != nil {
			return "", err
		}
		r.markDetached(true)
		return r.name + ": detached; the exports stopped and the disk is closed (`tharsis attach " + r.name + "` serves again)", nil
	}
	if err := d.setDetached(r, false); err != nil {
		return "", err
	}
	r.markDetached(false)
	if err := os.Remove(marker); err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("clear the detached state: %w", err)
	}
	if r.config().Primary == d.node.Name {
		d.serveExports(r)
		if r.exportErr != "" {
			return "", fmt.Errorf("attached, but the exports failed: %s", r.exportErr)
		}
		return r.name + ": attached; the exports serve again", nil
	}
	return r.name + ": attached", nil
}

// waitAttached waits (at most 30 s) until the role loop attached or
// detached r's disk as its core decided, and returns why it could not.
func (d *Daemon) waitAttached(r *resource, attach bool) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		r.mu.Lock()
		done, why := r.detached == !attach, r.attachErr
		r.mu.Unlock()
		switch {
		case done:
			return nil
		case why != "":
			return fmt.Errorf("%s (retried every 5 s; see `tharsis view`)", why)
		case time.Now().After(deadline):
			return errors.New("the data path did not follow within 30 s; see `tharsis view` and the log")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func attachVerb(attach bool) verbFunc {
	return func(d *Daemon, r *resource) (string, error) {
		if r.role == nil {
			return d.attachUnreplicated(r, attach)
		}
		kind := replicate.CmdDetach
		if attach {
			kind = replicate.CmdAttach
		}
		out, err := d.roleCommand(d.ctx, r, replicate.Command{Kind: kind}, nil)
		if err != nil {
			return "", err
		}
		// The core answers first; the data path follows in the role
		// loop: wait for it, so that `detach` returns with the disk closed.
		if err := d.waitAttached(r, attach); err != nil {
			return "", err
		}
		return out, nil
	}
}

func init() {
	verbs["attach"] = attachVerb(true)
	verbs["detach"] = attachVerb(false)
	verbs["up"] = func(d *Daemon, r *resource) (string, error) {
		out, err := attachVerb(true)(d, r)
		if err != nil {
			return "", err
		}
		if _, sec, _ := r.paths(); sec != nil && sec.Status().FetchPaused {
			if err := sec.SetFetchPaused(false); err != nil {
				return "", err
			}
			out += "; fetching"
		}
		return out, nil
	}
	verbs["down"] = func(d *Daemon, r *resource) (string, error) {
		var pre string
		if _, sec, _ := r.paths(); sec != nil {
			if err := sec.SetFetchPaused(true); err != nil {
				return "", err
			}
			pre = "fetching paused; "
		}
		out, err := attachVerb(false)(d, r)
		if err != nil {
			return "", err
		}
		return pre + out, nil
	}
}
