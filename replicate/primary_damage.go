package replicate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/tharsis/tharsis/replicate/wire"
)

// Damage on a primary.
//
// Recovery needs only the records that are not applied yet. Damage in
// applied records (found by recovery, which reads every retained segment,
// or later by the ship server, which verifies every record it sends) does
// not stop the primary: the segment is sealed if it is the current one,
// moved out of the log (QuarantinePrefix) once every record of it is
// applied, reported in Damage, and put back by Restore when an intact copy
// is fetched from a peer (FetchSegment). Damage in records that are not
// applied yet stops OpenPrimary: starting would lose acknowledged writes.

// Damage returns the damaged places found in this node's log since it was
// opened.
func (p *Primary) Damage() []Damage { return p.damage.all() }

// Quarantined returns the segments moved out of the log for damage and not
// restored yet.
func (p *Primary) Quarantined() []SegmentName {
	var out []SegmentName
	for _, d := range p.damage.all() {
		if n, ok := ParseSegmentName(d.Segment); ok && d.Quarantined != "" && !d.Restored && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

const quarantineAction = "moved out of the log (kept as %s); it is fetched again from a peer that holds it, and until then nodes that need it fetch it from another node or need `tharsis invalidate %s`"

// quarantineDamaged moves the damaged segments found by recovery out of
// the log and out of segs.
func (p *Primary) quarantineDamaged(damaged []*CorruptError, segs []SegmentInfo) ([]SegmentInfo, error) {
	for _, cerr := range damaged {
		name, ok := segmentOf(cerr)
		if !ok {
			continue
		}
		i := slices.IndexFunc(segs, func(s SegmentInfo) bool { return s.Name == name })
		if i < 0 || i == len(segs)-1 {
			continue // not in the log, or the current segment
		}
		to, err := quarantine(p.fsys, p.opts.Dir, name)
		if err != nil {
			return segs, err
		}
		p.damage.note(cerr, fmt.Sprintf(quarantineAction, to, resName(p.opts.Resource)), p.logger)
		p.damage.update(name.String(), func(d *Damage) { d.Quarantined = to })
		segs = slices.Delete(segs, i, i+1)
	}
	return segs, nil
}

// noteDamage is called by the ship server when it finds a damaged record
// in this log.
func (p *Primary) noteDamage(cerr *CorruptError) {
	defer p.writeIndex() // not the damaged segment any more
	name, ok := segmentOf(cerr)
	res := resName(p.opts.Resource)
	w := p.w
	w.mu.Lock()
	cur := w.current()
	i := slices.IndexFunc(w.segs, func(s SegmentInfo) bool { return s.Name == name })
	var seg SegmentInfo
	if i >= 0 {
		seg = w.segs[i]
	}
	w.mu.Unlock()
	p.mu.Lock()
	applied := p.applied
	p.mu.Unlock()
	// Every record of a sealed segment is applied once the position is
	// past it, or at its end marker (which the next checkpoint covers).
	allApplied := name.Seq < applied.Segment || seg.Sealed && seg.LastSeq != 0 && seg.LastSeq <= applied.Seq+1
	switch {
	case !ok || i < 0:
		p.damage.note(cerr, "none: the segment is not part of the log any more", p.logger)
	case name == cur:
		// Seal it, so the records written from now on (and a full sync's
		// start) lie in an intact segment.
		if p.damage.note(cerr, fmt.Sprintf("the segment was sealed early; nodes that need its damaged records fetch them from another node or need `tharsis invalidate %s`", res), p.logger) {
			if err := p.Rotate(); err != nil {
				p.logger.Warn("cannot seal the damaged current segment", "err", err)
			}
		}
	case allApplied:
		to := QuarantinePrefix + name.String()
		if !p.damage.note(cerr, fmt.Sprintf(quarantineAction, to, res), p.logger) {
			return
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		i := slices.IndexFunc(w.segs, func(s SegmentInfo) bool { return s.Name == name })
		if i < 0 || i == len(w.segs)-1 {
			return
		}
		if _, err := quarantine(p.fsys, p.opts.Dir, name); err != nil {
			p.logger.Error("cannot move the damaged segment out of the log", "err", err)
			return
		}
		w.segs = slices.Delete(w.segs, i, i+1)
		p.damage.update(name.String(), func(d *Damage) { d.Quarantined = to })
	default:
		p.damage.note(cerr, fmt.Sprintf("none yet: the records are not applied; nodes that need them fetch them from another node or need `tharsis invalidate %s`", res), p.logger)
	}
}

// Restore puts back segment name, moved out of the log for damage, from
// the intact copy at path (in the log directory, e.g. written by
// FetchSegment): the copy must be sealed and fit between its neighbours.
func (p *Primary) Restore(name SegmentName, path string) error {
	f, err := p.fsys.Open(path)
	if err != nil {
		return fmt.Errorf("open fetched copy of %s: %w", name, err)
	}
	size, err := f.Size()
	if err == nil {
		var info SegmentInfo
		info, err = ScanSegment(f, size, name, ScanOptions{Path: path, Resource: p.opts.Resource}, nil)
		if err == nil {
			err = p.insertSegment(info, path)
		}
	}
	f.Close()
	if err != nil {
		return fmt.Errorf("restore log segment %s: %w", name, err)
	}
	p.damage.update(name.String(), func(d *Damage) { d.Restored, d.Action = true, "restored from a peer's intact copy" })
	p.writeIndex()
	p.logger.Info("damaged log segment restored from a peer's intact copy", "segment", name.String())
	return nil
}

func (p *Primary) insertSegment(info SegmentInfo, path string) error {
	w := p.w
	w.mu.Lock()
	defer w.mu.Unlock()
	i, found := slices.BinarySearchFunc(w.segs, info.Name.Seq, func(s SegmentInfo, seq uint64) int { return cmpU64(s.Name.Seq, seq) })
	switch {
	case found:
		return errors.New("the log holds that segment already")
	case i == len(w.segs):
		return errors.New("it is not older than the current segment")
	case i > 0 && w.segs[i-1].LastSeq != 0 && w.segs[i-1].Name.Seq == info.Name.Seq-1 && w.segs[i-1].LastSeq+1 != info.FirstSeq:
		return fmt.Errorf("its first record %d does not follow record %d of %s", info.FirstSeq, w.segs[i-1].LastSeq, w.segs[i-1].Name)
	case w.segs[i].FirstSeq != 0 && w.segs[i].Name.Seq == info.Name.Seq+1 && info.LastSeq+1 != w.segs[i].FirstSeq:
		return fmt.Errorf("its last record %d is not followed by record %d of %s", info.LastSeq, w.segs[i].FirstSeq, w.segs[i].Name)
	}
	if err := p.fsys.Rename(path, filepath.Join(p.opts.Dir, info.Name.String())); err != nil {
		return err
	}
	if err := p.fsys.SyncDir(p.opts.Dir); err != nil {
		return err
	}
	w.segs = slices.Insert(w.segs, i, info)
	return nil
}

// unappliedDamage turns recovery's error about damage in records that are
// not applied yet into what the operator of the stopped node can do.
func (p *Primary) unappliedDamage(err error, names []SegmentName) error {
	res := resName(p.opts.Resource)
	cerr, ok := corruptAt(err)
	name, ok2 := SegmentName{}, false
	if ok {
		name, ok2 = segmentOf(cerr)
	}
	if !ok2 {
		return fmt.Errorf("recover resource %s: %w", res, err)
	}
	var later []string
	for _, n := range names {
		if n.Seq > name.Seq {
			later = append(later, fmt.Sprintf("mv %s %s", filepath.Join(p.opts.Dir, n.String()), filepath.Join(p.opts.Dir, QuarantinePrefix+n.String())))
		}
	}
	steps := fmt.Sprintf("truncate -s %d %s", cerr.Offset, cerr.File)
	if len(later) > 0 {
		steps += "; " + strings.Join(later, "; ")
	}
	return fmt.Errorf("%w: the records from there on were acknowledged to clients but are not on the data device yet, so node %s cannot serve %s without losing them. "+
		"With this daemon stopped, either (1) if another node fetched them, make it primary there (`tharsis primary --force %s`), then start this node again: it follows the new primary, and `tharsis invalidate %s` on it resyncs it; "+
		"or (2) accept the loss of everything from that record on: `%s`, then start this node again",
		cerr, p.opts.Node, res, res, res, steps)
}

// FetchSegment fetches an intact copy of the sealed segment name of
// resource from peer p (as node, authenticated with auth) into a file in dir
// and returns its path, for Primary.Restore. Every record is verified; the
// copy must end with its segment-end marker.
func FetchSegment(ctx context.Context, node string, auth Auth, p Peer, resource string, name SegmentName, dir string) (string, error) {
	pc, err := dialPeer(ctx, node, auth, p)
	if err != nil {
		return "", err
	}
	defer pc.close()
	stop := context.AfterFunc(ctx, func() { pc.nc.SetDeadline(time.Now()) })
	defer stop()
	if err := pc.c.SendFlush(&wire.Fetch{Resource: resource, From: toWire(Position{Segment: name.Seq})}); err != nil {
		return "", err
	}
	path := filepath.Join(dir, "fetching-"+name.String())
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return "", err
	}
	ok := false
	defer func() {
		f.Close()
		if !ok {
			os.Remove(path)
		}
	}()
	var end int64
	for {
		pc.nc.SetReadDeadline(time.Now().Add(fetchStreamTimeout))
		m, err := pc.c.Recv()
		if err != nil {
			return "", fmt.Errorf("fetch segment %s from %s: %w", name, p, err)
		}
		switch m := m.(type) {
		case *wire.Heartbeat:
			continue
		case *wire.Error:
			return "", fmt.Errorf("fetch segment %s from %s: %w", name, p, &wire.Error{Code: m.Code, Message: m.Message})
		case *wire.SegmentData:
			if m.Segment != name.String() {
				return "", fmt.Errorf("peer %s does not hold segment %s (it sent %s)", p, name, m.Segment)
			}
			if m.Offset != end {
				return "", fmt.Errorf("peer %s sent %s at offset %d, expected %d", p, name, m.Offset, end)
			}
			sealed := false
			for b := m.Data; len(b) > 0; {
				rec, n, err := DecodeRecord(b)
				if err != nil {
					return "", fmt.Errorf("peer %s sent a bad record of %s: %w", p, name, err)
				}
				if rec.Segment != name.Seq || sealed {
					return "", fmt.Errorf("peer %s sent a record that does not belong to %s", p, name)
				}
				sealed = rec.Kind == KindSegmentEnd
				b = b[n:]
			}
			if _, err := f.WriteAt(m.Data, end); err != nil {
				return "", err
			}
			end += int64(len(m.Data))
			if sealed {
				if err := f.Sync(); err != nil {
					return "", err
				}
				ok = true
				return path, nil
			}
		default:
			return "", fmt.Errorf("peer %s sent %s in a log stream", p, m.Type())
		}
	}
}
