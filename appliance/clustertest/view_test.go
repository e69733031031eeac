package clustertest

import (
	"encoding/json"
	"fmt"
)

// The JSON of `tharsis view --json` as far as these tests read it. The
// replication status of a resource is found by shape rather than by key (the
// object, at the resource's level or one below, that has "lag_bytes"), so
// the tests follow the daemon's JSON as it grows.

// View is one node's `tharsis view --json`.
type View struct {
	Node      string
	Resources []*ResourceView
}

// ResourceView is one resource in a View.
type ResourceView struct {
	Name string          `json:"name"`
	Role string          `json:"role"`
	Log  *LogStatus      `json:"log"`
	Repl *ReplStatus     `json:"-"`
	Raw  json.RawMessage `json:"-"`
}

// LogStatus is the primary's transaction log (replicate.Status).
type LogStatus struct {
	Written Position `json:"written"`
	Applied Position `json:"applied"`
	Err     string   `json:"error"`
}

// Position is replicate.Position.
type Position struct {
	Segment uint64 `json:"segment"`
	Offset  int64  `json:"offset"`
	Seq     uint64 `json:"seq"`
}

func (p Position) String() string {
	return fmt.Sprintf("seq %d (segment %d @%d)", p.Seq, p.Segment, p.Offset)
}

// ReplStatus is replicate.ResourceStatus: one node's replication state.
type ReplStatus struct {
	Role        string   `json:"role"`
	End         Position `json:"end"`
	Applied     Position `json:"applied"`
	Consistent  bool     `json:"consistent"`
	Source      string   `json:"source"`
	SourceEnd   Position `json:"source_end"`
	LagBytes    int64    `json:"lag_bytes"`
	LagSeconds  float64  `json:"lag_seconds"`
	FetchPaused bool     `json:"fetch_paused"`
	// FetchLogBytes and FetchWireBytes: log fetched, and its bytes on the
	// network; FetchCompression: of the current stream.
	FetchLogBytes    int64         `json:"fetch_log_bytes"`
	FetchWireBytes   int64         `json:"fetch_wire_bytes"`
	FetchCompression string        `json:"fetch_compression"`
	ReplayPaused     bool          `json:"replay_paused"`
	SyncPaused       bool          `json:"sync_paused"`
	Detached         bool          `json:"detached"`
	Sync             *SyncProgress `json:"sync"`
	LastSync         *SyncProgress `json:"last_sync"`
	Emergency        *struct {
		Active bool       `json:"active"`
		Chunks int        `json:"chunks"`
		Marks  []Position `json:"marks"`
	} `json:"emergency"`
	StoppedAtMark *Position `json:"stopped_at_mark"`
	Err           string    `json:"error"`
	Phase         string    `json:"phase"`
	Designation   struct {
		Primary    string `json:"primary"`
		Generation uint64 `json:"generation"`
	} `json:"designation"`
	Diverged bool `json:"diverged"`
	Forks    []struct {
		Peer    string `json:"peer"`
		Segment uint64 `json:"segment"`
		Loser   string `json:"loser"`
	} `json:"forks"`
	Damage []struct {
		Segment     string `json:"segment"`
		Offset      int64  `json:"offset"`
		Count       int    `json:"count"`
		Quarantined string `json:"quarantined"`
		Restored    bool   `json:"restored"`
	} `json:"damage"`
}

// SyncProgress is replicate.SyncProgress.
type SyncProgress struct {
	State       string  `json:"state"`
	Source      string  `json:"source"`
	Compared    int64   `json:"compared_bytes"`
	Total       int64   `json:"total_bytes"`
	Transferred int64   `json:"transferred_bytes"`
	ETASeconds  float64 `json:"eta_seconds"`
}

func (s *SyncProgress) String() string {
	if s == nil {
		return "none"
	}
	return fmt.Sprintf("%s from %q: compared %d of %d bytes, transferred %d", s.State, s.Source, s.Compared, s.Total, s.Transferred)
}

func parseView(b []byte) (*View, error) {
	var raw struct {
		Node      string            `json:"node"`
		Resources []json.RawMessage `json:"resources"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("`tharsis view --json` printed something that is not its JSON: %w\n%s", err, b)
	}
	v := &View{Node: raw.Node}
	for _, rb := range raw.Resources {
		r := &ResourceView{Raw: rb}
		if err := json.Unmarshal(rb, r); err != nil {
			return nil, fmt.Errorf("view: resource: %w\n%s", err, rb)
		}
		repl, err := findRepl(rb)
		if err != nil {
			return nil, err
		}
		r.Repl = repl
		v.Resources = append(v.Resources, r)
	}
	return v, nil
}

// findRepl returns the replication status in a resource's JSON object: the
// object itself or a member object that has "lag_bytes"; nil if none.
func findRepl(rb json.RawMessage) (*ReplStatus, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(rb, &obj); err != nil {
		return nil, fmt.Errorf("view: resource is not an object: %w", err)
	}
	pick := func(b json.RawMessage) (*ReplStatus, error) {
		var r ReplStatus
		if err := json.Unmarshal(b, &r); err != nil {
			return nil, fmt.Errorf("view: replication status: %w\n%s", err, b)
		}
		return &r, nil
	}
	if _, ok := obj["lag_bytes"]; ok {
		return pick(rb)
	}
	for _, v := range obj {
		var sub map[string]json.RawMessage
		if json.Unmarshal(v, &sub) != nil {
			continue
		}
		if _, ok := sub["lag_bytes"]; ok {
			return pick(v)
		}
	}
	return nil, nil
}

// Resource returns the named resource of the view, or nil.
func (v *View) Resource(name string) *ResourceView {
	for _, r := range v.Resources {
		if r.Name == name {
			return r
		}
	}
	return nil
}

// LogEnd is the end of the log the primary may ship: the replication
// status's end when there is one, else the log's written position.
func (v *View) LogEnd(res string) (Position, bool) {
	r := v.Resource(res)
	switch {
	case r == nil:
		return Position{}, false
	case r.Repl != nil && r.Repl.End.Seq != 0:
		return r.Repl.End, true
	case r.Log != nil:
		return r.Log.Written, true
	case r.Repl != nil:
		return r.Repl.End, true
	}
	return Position{}, false
}
