package appliance

import (
	"context"
	"time"

	"golang.org/x/sys/unix"
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
		var low []*resource
		for _, name := range sortedKeys(d.resources) {
			r := d.resources[name]
			if r.repl() == nil {
				continue
			}
			var st unix.Statfs_t
			if err := unix.Statfs(d.cfg.LogDir(name, d.node.Name), &st); err != nil {
				continue
			}
			bs := int64(st.Bsize)
			if lowOnSpace(int64(st.Bavail)*bs, int64(st.Blocks)*bs, r.cfg.SegmentSize) {
				low = append(low, r)
			}
		}
		d.mu.Unlock()
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
