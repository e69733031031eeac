package replicate

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// NodeStatus is what a node tells its peers about itself (and what `tharsis
// view` renders for every node): one entry per resource it holds a log of.
type NodeStatus struct {
	Node      string           `json:"node"`
	Time      time.Time        `json:"time"` // the node's clock when taken
	Resources []ResourceStatus `json:"resources"`
	// Features lists the protocol extensions the node's ship server
	// understands (wire.FeatureFetchAccept); nodes of older releases list
	// none, and a fetcher uses none with them.
	Features []string `json:"features,omitempty"`
}

// Resource returns the status of resource res, or false.
func (n *NodeStatus) Resource(res string) (ResourceStatus, bool) {
	for _, r := range n.Resources {
		if r.Resource == res {
			return r, true
		}
	}
	return ResourceStatus{}, false
}

// ResourceStatus is one node's replication state of one resource.
type ResourceStatus struct {
	Resource string `json:"resource"`
	Role     Role   `json:"role"` // what the data path runs here
	// Phase, Designation, Diverged and Forks come from the node's role
	// core: its phase, the designated primary it knows, whether its log
	// forks from the current history, and every fork it sees with a peer.
	Phase       Phase       `json:"phase"`
	Designation Designation `json:"designation"`
	Diverged    bool        `json:"diverged,omitempty"`
	Forks       []PeerFork  `json:"forks,omitempty"`
	// Handover names the other node of a handover under way.
	Handover string `json:"handover,omitempty"`
	// Detached: the node's data device is detached (`tharsis detach`).
	Detached bool `json:"detached,omitempty"`
	// Unverified: the node was primary of an older designation and has
	// not yet compared its log with the current history's: it ships
	// nothing (RoleStatus.RefuseShip).
	Unverified bool `json:"unverified,omitempty"`
	// End is the durable end of the log held here: what was written (on
	// the primary) or fetched and fsync'd (on a secondary).
	End Position `json:"end"`
	// Logged is the end of the records in the log, durable or not (the
	// primary acknowledges writes before their fdatasync when sync =
	// false); on a secondary it equals End.
	Logged Position `json:"logged"`
	// Applied is the position up to which the data device holds the log:
	// the replay position of a secondary (persisted), the applied position
	// of the primary. During a full sync it is the position the sync
	// started from (the node needs the log after it).
	Applied Position `json:"applied"`
	// Consistent: the data device equals the current history's state after
	// some prefix of its acknowledged writes. False while a sync has not
	// finished (and until the log written during it is replayed), and on a
	// node whose log forks from the current history.
	Consistent bool `json:"consistent"`
	// Source is the peer a secondary fetches from ("" when not fetching)
	// and SourceEnd the log end that peer reported last.
	Source    string   `json:"source,omitempty"`
	SourceEnd Position `json:"source_end"`
	// LagBytes is the log a secondary has not replayed yet: what it has not
	// fetched from its source plus what it fetched but did not replay.
	LagBytes int64 `json:"lag_bytes"`
	// UnfetchedBytes is the part of LagBytes not fetched yet.
	UnfetchedBytes int64 `json:"unfetched_bytes"`
	// LagSeconds is how long ago this node's data device last held the
	// whole log of its source (0 when caught up); it needs no clock sync.
	LagSeconds float64 `json:"lag_seconds"`
	// FetchRate and ReplayRate are the log bytes per second a secondary
	// fetched and replayed over the last 10 s.
	FetchRate  float64 `json:"fetch_bytes_per_second,omitempty"`
	ReplayRate float64 `json:"replay_bytes_per_second,omitempty"`
	// FetchLogBytes and FetchWireBytes count the log a secondary fetched
	// since it opened: its bytes, and the bytes of it that crossed the
	// network (less when the source compresses: see Compression).
	FetchLogBytes  int64 `json:"fetch_log_bytes,omitempty"`
	FetchWireBytes int64 `json:"fetch_wire_bytes,omitempty"`
	// FetchCompression is the compression of the stream being fetched
	// ("zstd" once a compressed frame arrived on it, else "").
	FetchCompression string `json:"fetch_compression,omitempty"`
	FetchPaused      bool   `json:"fetch_paused,omitempty"`
	ReplayPaused     bool   `json:"replay_paused,omitempty"`
	SyncPaused       bool   `json:"sync_paused,omitempty"`
	// Sync is the progress of a full sync, when one is running or needed.
	Sync *SyncProgress `json:"sync,omitempty"`
	// LastSync is the outcome of the last full sync since the daemon
	// started (State "done"), for the bytes it compared and transferred.
	LastSync *SyncProgress `json:"last_sync,omitempty"`
	// Verify is the running or last online verify of this node's disk
	// against its source (secondaries only).
	Verify   *VerifyReport    `json:"verify,omitempty"`
	Segments []SegmentSummary `json:"segments"`
	Err      string           `json:"error,omitempty"`
	// Emergency is the primary's emergency mode (active, or marks not yet
	// replayed past by every node); StoppedAtMark is where a secondary's
	// replay stopped before such a mark (consistent, outdated: `tharsis
	// invalidate` copies the chunks written without the log).
	Emergency *EmergencyState `json:"emergency,omitempty"`
	// Ack is the primary's synchronous acknowledgement (ack_secondaries):
	// what it promises, whether it fell back, who acknowledged what.
	Ack *AckStatus `json:"ack,omitempty"`
	// DiskCapacity is the real size of this node's disk (what a resize
	// may grow the resource to); set by the daemon.
	DiskCapacity  int64     `json:"disk_capacity,omitempty"`
	StoppedAtMark *Position `json:"stopped_at_mark,omitempty"`
	// Damage lists damaged places found in this node's log.
	Damage []Damage `json:"damage,omitempty"`
	// Released lists the nodes this node no longer keeps log segments for
	// (retain_max, retain_max_age): they may need a full sync.
	Released []Release `json:"released,omitempty"`
	// Exports is the state of the resource's exports that travels with
	// the resource (AoE config strings, Mac Mask lists, reservations set
	// by initiators), published by the primary that serves them so that
	// its peers keep the latest copy. Opaque to replicate: the appliance
	// writes and reads it.
	Exports json.RawMessage `json:"exports,omitempty"`
}

// SegmentSummary is one segment of a node's log in its status.
type SegmentSummary struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	Sealed bool   `json:"sealed"`
	// SHA256 is the hex SHA-256 of a sealed segment's bytes (empty for the
	// segment being written, or until it is computed), so nodes holding the
	// same segment can be compared.
	SHA256 string `json:"sha256,omitempty"`
}

// SyncProgress is the progress of a fast full sync.
type SyncProgress struct {
	// State is SyncNeeded (not started: paused or no source), SyncRunning,
	// SyncCatchingUp (chunks done, replaying the log written meanwhile) or
	// SyncDone (in LastSync).
	State SyncState `json:"state"`
	// Start is the source's applied position when the sync started; the
	// log after it is replayed once the chunks are done.
	Start  Position `json:"start"`
	Source string   `json:"source,omitempty"`
	// Compared and Total count bytes of the device compared so far and in
	// all; Transferred the bytes of differing chunks copied.
	Compared    int64     `json:"compared_bytes"`
	Total       int64     `json:"total_bytes"`
	Transferred int64     `json:"transferred_bytes"`
	Started     time.Time `json:"started,omitzero"`
	ETASeconds  float64   `json:"eta_seconds"`
}

// segmentSums caches the SHA-256 of sealed segments (they never change)
// that no segment index lists (segBook.sum keeps the others in the index).
// Sums are computed in the background, one at a time, so a status request
// never waits for hashing a large segment.
var segmentSums = struct {
	sync.Mutex
	m    map[string]string // path|size -> hex sum
	busy bool
	todo []sumJob
}{m: map[string]string{}}

type sumJob struct {
	key, path string
	size      int64
	// done, if set, gets the sum instead of the cache.
	done func(sum string)
}

// segmentSum returns the cached SHA-256 of a sealed segment, or "" (and
// queues its computation). With done, the sum is not cached but passed to
// done (the caller keeps it).
func segmentSum(dir, name string, size int64, sealed bool, done func(string)) string {
	if !sealed {
		return ""
	}
	path := filepath.Join(dir, name)
	key := fmt.Sprintf("%s|%d", path, size)
	s := &segmentSums
	s.Lock()
	defer s.Unlock()
	if v, ok := s.m[key]; ok && done == nil {
		return v
	}
	for _, j := range s.todo {
		if j.key == key {
			return ""
		}
	}
	if len(s.todo) < 64 {
		s.todo = append(s.todo, sumJob{key: key, path: path, size: size, done: done})
	}
	if !s.busy {
		s.busy = true
		go sumWorker()
	}
	return ""
}

func sumWorker() {
	s := &segmentSums
	for {
		s.Lock()
		if len(s.todo) == 0 {
			s.busy = false
			s.Unlock()
			return
		}
		j := s.todo[0]
		s.Unlock()
		sum := ""
		if f, err := os.Open(j.path); err == nil {
			h := sha256.New()
			if n, err := io.Copy(h, io.LimitReader(f, j.size)); err == nil && n == j.size {
				sum = hex.EncodeToString(h.Sum(nil))
			}
			f.Close()
		}
		if sum != "" && j.done != nil {
			j.done(sum)
		}
		s.Lock()
		s.todo = s.todo[1:] // only now: the same segment is not queued twice meanwhile
		if sum != "" && j.done == nil {
			if len(s.m) > 4096 {
				clear(s.m)
			}
			s.m[j.key] = sum
		}
		s.Unlock()
	}
}

// Release says that a node no longer holds log segments back, and why.
type Release struct {
	Node string `json:"node"`
	Why  string `json:"why"`
}
