package appliance

import (
	"errors"
	"fmt"

	"github.com/tharsis/tharsis/replicate"
)

// Online verify (`tharsis verify [--repair|--stop] RES`) runs on a
// secondary, inside its replicate.Secondary (see replicate/verify.go): the
// verbs only start and stop it, and return at once. Its progress and
// findings are part of the resource's replication status, so `tharsis view`
// shows them on every node and the CLI follows them there.

// errVerifyOnPrimary answers verify on the primary.
var errVerifyOnPrimary = errors.New("this node is the resource's primary: verify runs on a secondary and compares its disk with the primary's; run `tharsis verify` on a secondary")

// verifying returns r's secondary, or why verify cannot run here.
func (r *resource) verifying() (*replicate.Secondary, error) {
	prim, sec, _ := r.paths()
	switch {
	case sec != nil:
		return sec, nil
	case prim != nil:
		return nil, errVerifyOnPrimary
	case r.role != nil:
		return nil, errors.New("this node's data path of the resource is not open (starting, or it left the resource)")
	}
	return nil, errNotReplicated
}

func init() {
	start := func(repair bool) verbFunc {
		return func(d *Daemon, r *resource) (string, error) {
			sec, err := r.verifying()
			if err != nil {
				return "", err
			}
			rep, err := sec.StartVerify(replicate.VerifyOptions{Repair: repair})
			if err != nil {
				return "", err
			}
			what := "verify"
			if repair {
				what = "verify --repair"
			}
			return fmt.Sprintf("%s: %s %d started (%d bytes in chunks of %d; `tharsis view %s` shows its progress)",
				r.name, what, rep.ID, rep.Total, rep.ChunkSize, r.name), nil
		}
	}
	verbs["verify"] = start(false)
	verbs["verify-repair"] = start(true)
	verbs["verify-stop"] = func(d *Daemon, r *resource) (string, error) {
		sec, err := r.verifying()
		if err != nil {
			return "", err
		}
		if err := sec.StopVerify(); err != nil {
			return "", err
		}
		return r.name + ": verify stopped", nil
	}
}
