package replicate

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Damage is one damaged place in this node's copy of the log, as found by
// replay, recovery or the ship server, and shown in the status (`tharsis
// view`). The same place found again only counts up.
type Damage struct {
	Segment string    `json:"segment"` // segment file name
	Offset  int64     `json:"offset"`  // byte offset of the damaged record
	Reason  string    `json:"reason"`
	Seen    time.Time `json:"seen"`  // first found
	Count   int       `json:"count"` // times found
	// Quarantined is the file the damaged segment was moved to (it is no
	// longer shipped or read), "" while it is still in place.
	Quarantined string `json:"quarantined,omitempty"`
	// Restored says an intact copy of the segment was fetched from a peer.
	Restored bool `json:"restored,omitempty"`
	// Action says what happens about it, or what the operator should do.
	Action string `json:"action"`
}

// QuarantinePrefix starts the name a damaged segment is renamed to. Such
// files are never read as part of the log; they are kept for inspection.
const QuarantinePrefix = "damaged-"

// damageBook collects the damage a node found. It logs each new place once
// at ERROR; later finds only count.
type damageBook struct {
	mu   sync.Mutex
	list []Damage
}

// note records the damage cerr describes and reports whether it is new.
func (b *damageBook) note(cerr *CorruptError, action string, logger *slog.Logger) bool {
	seg := filepath.Base(cerr.File)
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := range b.list {
		if d := &b.list[i]; d.Segment == seg && d.Offset == cerr.Offset {
			d.Count++
			return false
		}
	}
	b.list = append(b.list, Damage{Segment: seg, Offset: cerr.Offset, Reason: cerr.Reason, Seen: time.Now(), Count: 1, Action: action})
	logger.Error("the transaction log is damaged", "segment", cerr.File, "offset", cerr.Offset, "reason", cerr.Reason, "action", action)
	return true
}

// update changes the entry of segment seg (every place in it).
func (b *damageBook) update(seg string, fn func(*Damage)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := range b.list {
		if b.list[i].Segment == seg {
			fn(&b.list[i])
		}
	}
}

// all returns a copy of the list (nil when empty).
func (b *damageBook) all() []Damage {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.list) == 0 {
		return nil
	}
	return append([]Damage(nil), b.list...)
}

// DamageSink is implemented by Sources that want to hear of damage the
// ship server found while reading their log (a wrapping Source should
// pass it on).
type DamageSink interface {
	NoteDamage(cerr *CorruptError)
}

// quarantine renames segment name in dir out of the log and returns the
// new file name.
func quarantine(fsys FS, dir string, name SegmentName) (string, error) {
	to := QuarantinePrefix + name.String()
	if err := fsys.Rename(filepath.Join(dir, name.String()), filepath.Join(dir, to)); err != nil {
		return "", fmt.Errorf("quarantine damaged log segment %s: %w", name, err)
	}
	if err := fsys.SyncDir(dir); err != nil {
		return "", fmt.Errorf("quarantine damaged log segment %s: %w", name, err)
	}
	return to, nil
}

// corruptAt returns err's *CorruptError, if it is one.
func corruptAt(err error) (*CorruptError, bool) {
	var ce *CorruptError
	if errors.As(err, &ce) {
		return ce, true
	}
	return nil, false
}

// segmentOf parses the segment name of a CorruptError's file.
func segmentOf(cerr *CorruptError) (SegmentName, bool) {
	return ParseSegmentName(strings.TrimPrefix(filepath.Base(cerr.File), QuarantinePrefix))
}
