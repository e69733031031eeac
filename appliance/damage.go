package appliance

import (
	"context"
	"time"

	"github.com/tharsis/tharsis/replicate"
)

// restoreEvery is how often a primary looks for intact copies of the
// segments it moved out of its log for damage.
const restoreEvery = 5 * time.Second

// restoreSegments runs while p is r's primary: every segment p moved aside
// for damage is fetched again from the first other node that holds an
// intact copy, and put back (replicate.Primary.Restore).
func (d *Daemon) restoreSegments(r *resource, p *replicate.Primary) {
	log := d.log.With("resource", r.name)
	t := time.NewTicker(restoreEvery)
	defer t.Stop()
	missing := map[string]bool{} // reported as held by no peer
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-t.C:
		}
		if prim, _, _ := r.paths(); prim != p {
			return
		}
		for _, name := range p.Quarantined() {
			restored := false
			for _, peer := range d.others(r.config()) {
				ctx, cancel := context.WithTimeout(d.ctx, 30*time.Second)
				path, err := replicate.FetchSegment(ctx, d.node.Name, d.auth(), d.peer(peer), r.name, name, r.dir)
				cancel()
				if err != nil {
					log.Debug("no intact copy of the damaged segment from this peer", "segment", name.String(), "peer", peer, "err", err)
					continue
				}
				if err := p.Restore(name, path); err != nil {
					log.Warn("the copy fetched from a peer does not fit the log", "segment", name.String(), "peer", peer, "err", err)
					continue
				}
				restored = true
				break
			}
			if !restored && !missing[name.String()] {
				missing[name.String()] = true
				log.Warn("no peer holds an intact copy of the damaged segment yet; trying again", "segment", name.String())
			}
		}
	}
}
