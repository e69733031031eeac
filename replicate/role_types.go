package replicate

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
)

// enumName returns names[v], or kind(v) for a value out of range.
func enumName[T ~uint8](names []string, kind string, v T) string {
	if int(v) < len(names) {
		return names[v]
	}
	return fmt.Sprintf("%s(%d)", kind, uint8(v))
}

// parseEnum finds b among names (from index first on).
func parseEnum[T ~uint8](names []string, kind string, first int, b []byte) (T, error) {
	for i := first; i < len(names); i++ {
		if string(b) == names[i] {
			return T(i), nil
		}
	}
	return 0, fmt.Errorf("unknown %s %q", kind, b)
}

// Role is what a node's data path does for a resource: write the log and
// serve the exports (primary), or fetch and replay it (secondary).
type Role uint8

// Roles. The zero value means the data path is not open (the node is still
// starting, or left the resource).
const (
	RoleNone Role = iota
	RoleSecondary
	RolePrimary
)

var roleNames = [...]string{"none", "secondary", "primary"}

// String returns "none", "secondary" or "primary".
func (r Role) String() string { return enumName(roleNames[:], "role", r) }

// MarshalText implements encoding.TextMarshaler.
func (r Role) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (r *Role) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*r = RoleNone
		return nil
	}
	v, err := parseEnum[Role](roleNames[:], "role", 0, b)
	*r = v
	return err
}

// SyncState is where a node stands in a fast full sync.
type SyncState uint8

// Sync states. SyncDone only appears in SyncProgress.State of LastSync.
const (
	SyncNone       SyncState = iota // no sync needed
	SyncNeeded                      // needed, not started (paused, or no source yet)
	SyncRunning                     // comparing and copying chunks
	SyncCatchingUp                  // chunks done; replaying the log written meanwhile
	SyncDone                        // finished (LastSync only)
)

var syncNames = [...]string{"", "needed", "running", "catching-up", "done"}

// String returns the state's name ("" for SyncNone).
func (s SyncState) String() string { return enumName(syncNames[:], "sync", s) }

// Syncing reports whether the data device is being rewritten by a sync (or
// waits for one): it is not consistent.
func (s SyncState) Syncing() bool { return s == SyncNeeded || s == SyncRunning }

// MarshalText implements encoding.TextMarshaler.
func (s SyncState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *SyncState) UnmarshalText(b []byte) error {
	v, err := parseEnum[SyncState](syncNames[:], "sync state", 0, b)
	*s = v
	return err
}

// Phase is the state of a node's role machine for one resource.
type Phase uint8

// Phases.
const (
	// PhaseStarting: the daemon just started and waits for its peers'
	// designations before it opens the data path (an old primary must not
	// serve a single write before it learns that another took over).
	PhaseStarting Phase = iota
	// PhaseSecondary: fetching and replaying (or idle: no source).
	PhaseSecondary
	// PhasePrimary: the designated primary, writing the log and serving
	// the exports.
	PhasePrimary
	// PhaseHandingOver: a primary that stopped its exports and sealed its
	// log because another node takes over (or it resigns); it serves
	// nothing until the handover is done or aborted.
	PhaseHandingOver
	// PhasePromoting: a secondary that fetches and replays exactly to the
	// old primary's sealed end before it takes over.
	PhasePromoting
	// PhaseLeft: the node left the resource (leave-resource): no data
	// path, no fetching; its disk is left alone.
	PhaseLeft
)

var phaseNames = [...]string{"starting", "secondary", "primary", "handing-over", "promoting", "left"}

// String returns the phase's name.
func (p Phase) String() string { return enumName(phaseNames[:], "phase", p) }

// MarshalText implements encoding.TextMarshaler.
func (p Phase) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *Phase) UnmarshalText(b []byte) error {
	v, err := parseEnum[Phase](phaseNames[:], "phase", 0, b)
	*p = v
	return err
}

// Role is the data-path role the phase needs.
func (p Phase) Role() Role {
	switch p {
	case PhasePrimary:
		return RolePrimary
	case PhaseSecondary, PhaseHandingOver, PhasePromoting:
		return RoleSecondary
	}
	return RoleNone
}

// Designation names a resource's primary: cluster state that every node
// persists and exchanges with its peers (in its status). A newer one
// replaces an older one everywhere. The config's `primary` only seeds
// generation 0, which the first primary turns into generation 1 when it
// starts serving.
type Designation struct {
	// Primary is the designated primary ("": none, after `secondary`).
	Primary string `json:"primary"`
	// Generation counts designations; every handover, forced failover and
	// resignation makes a new one.
	Generation uint64 `json:"generation"`
	// End is where the last primary sealed its log when it resigned
	// (Primary == ""): the next primary replays exactly to it.
	End Position `json:"end,omitzero"`
}

// Newer reports whether d replaces o: a higher generation, or (two nodes
// that took over at the same generation, e.g. forced during a partition,
// or two configs that disagree) the same generation naming the primary that
// sorts first. Every node orders designations alike.
func (d Designation) Newer(o Designation) bool {
	if d.Generation != o.Generation {
		return d.Generation > o.Generation
	}
	if d.Primary == o.Primary {
		return false
	}
	return d.Primary != "" && (o.Primary == "" || d.Primary < o.Primary)
}

// String formats the designation for operators.
func (d Designation) String() string {
	p := d.Primary
	if p == "" {
		p = "no primary"
	}
	return fmt.Sprintf("%s (generation %d)", p, d.Generation)
}

// roleFile holds a node's persisted role state of a resource in its log
// directory (JSON, replaced atomically).
const roleFile = "role.json"

// RoleState is what a node persists of its role machine: the designation it
// knows, and whether it left the resource.
type RoleState struct {
	Designation Designation `json:"designation"`
	Left        bool        `json:"left,omitempty"`
	// Detached: the data device is detached (`tharsis detach`).
	Detached bool `json:"detached,omitempty"`
}

// ReadRoleState reads the persisted role state in dir; ok is false when
// there is none yet (a node that never started with this resource).
func ReadRoleState(dir string) (st RoleState, ok bool, err error) {
	b, err := readFile(OSFS{}, filepath.Join(dir, roleFile))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return RoleState{}, false, nil
		}
		return RoleState{}, false, fmt.Errorf("read role state: %w", err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return RoleState{}, false, fmt.Errorf("%w: role state file %s is unreadable (%v)", ErrCorrupt, filepath.Join(dir, roleFile), err)
	}
	return st, true, nil
}

// WriteRoleState persists st in dir (tmp file, fsync, rename, fsync dir).
func WriteRoleState(dir string, st RoleState) error {
	b, _ := json.Marshal(st)
	if err := (OSFS{}).MkdirAll(dir); err != nil {
		return err
	}
	if err := writeFileAtomic(OSFS{}, filepath.Join(dir, roleFile), append(b, '\n')); err != nil {
		return fmt.Errorf("persist the role state: %w", err)
	}
	return nil
}
