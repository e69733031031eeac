package appliance

import (
	"errors"
	"log/slog"

	"github.com/tharsis/tharsis/blockdev"
	"github.com/tharsis/tharsis/config"
	"github.com/tharsis/tharsis/replicate"
)

// replicated is what the daemon needs of a resource's transaction log.
type replicated interface {
	blockdev.Device
	Rotate() error
	DeleteApplied(all bool) ([]string, error)
	Status() replicate.Status
}

var _ replicated = (*replicate.Primary)(nil)

// openReplicated recovers the resource's log onto disk and returns the
// replicated device, which owns disk from now on.
func openReplicated(d *Daemon, rc *config.Resource, disk blockdev.Device, log *slog.Logger) (replicated, error) {
	p, err := replicate.OpenPrimary(disk, replicate.Options{
		Dir:         d.cfg.LogDir(rc.Name, d.node.Name),
		Node:        d.node.Name,
		Resource:    rc.Name,
		SegmentSize: rc.SegmentSize,
		Sync:        rc.Sync,
		Logger:      log,
	})
	if err != nil {
		return nil, err
	}
	if n := p.Replayed(); n > 0 {
		log.Info("recovered: replayed the log onto the disk", "records", n)
	}
	return p, nil
}

// errNotReplicated answers log verbs on a resource without a log.
var errNotReplicated = errors.New("the resource is not replicated (replicated = false in the config): it has no transaction log")

func init() {
	verbs["log-rotate"] = func(d *Daemon, r *resource) (string, error) {
		if r.repl == nil {
			return "", errNotReplicated
		}
		if err := r.repl.Rotate(); err != nil {
			return "", err
		}
		return r.name + ": now writing " + r.repl.Status().Current, nil
	}
	del := func(all bool) verbFunc {
		return func(d *Daemon, r *resource) (string, error) {
			if r.repl == nil {
				return "", errNotReplicated
			}
			removed, err := r.repl.DeleteApplied(all)
			if err != nil {
				return "", err
			}
			return r.name + ": removed " + joinComma(removed), nil
		}
	}
	verbs["log-delete"] = del(false)
	verbs["log-delete-all"] = del(true)
}
