package appliance

import (
	"time"

	"github.com/tharsis/tharsis/replicate"
)

// Status is a node's view of itself and of its peers, served on the
// control socket and rendered by `tharsis view`.
type Status struct {
	Node      string           `json:"node"`
	Started   time.Time        `json:"started"`
	Resources []ResourceStatus `json:"resources"`
	// Peers is the latest status of every other node, as polled over the
	// replication protocol (empty when this node has no peers).
	Peers []replicate.PeerState `json:"peers,omitempty"`
}

// ResourceStatus is one resource as this node holds it.
type ResourceStatus struct {
	Name       string         `json:"name"`
	Role       string         `json:"role"` // "primary" or "secondary"
	Disk       string         `json:"disk"`
	Size       int64          `json:"size"`
	Replicated bool           `json:"replicated"`
	Exports    []ExportStatus `json:"exports,omitempty"`
	// Log is the primary's transaction log in detail.
	Log *replicate.Status `json:"log,omitempty"`
	// Replication is this node's replication state of the resource (the
	// same record its peers see).
	Replication *replicate.ResourceStatus `json:"replication,omitempty"`
}

// ExportStatus is one export being served.
type ExportStatus struct {
	Kind       string `json:"kind"` // "nbd" or "aoe"
	Name       string `json:"name"` // NBD export name or AoE eX.Y
	Where      string `json:"where"`
	ReadOnly   bool   `json:"read_only,omitempty"`
	WriteCache bool   `json:"write_cache,omitempty"`
}

// Status returns the node's current status.
func (d *Daemon) Status() Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := Status{Node: d.node.Name, Started: d.started}
	for _, name := range sortedKeys(d.resources) {
		r := d.resources[name]
		rs := ResourceStatus{Name: name, Role: "secondary", Disk: r.disk.Name(), Size: r.disk.Size(), Replicated: r.cfg.Replicated}
		if r.primary {
			rs.Role = "primary"
			for _, e := range d.cfg.NBD {
				if e.Resource == name {
					rs.Exports = append(rs.Exports, ExportStatus{Kind: "nbd", Name: e.Name, Where: e.Listen, ReadOnly: e.ReadOnly})
				}
			}
			for _, e := range d.cfg.AoE {
				if e.Resource == name {
					rs.Exports = append(rs.Exports, ExportStatus{Kind: "aoe", Name: aoeName(e.Shelf, e.Slot), Where: joinComma(e.Interfaces), ReadOnly: e.ReadOnly, WriteCache: e.WriteCache})
				}
			}
		}
		if r.prim != nil {
			ls := r.prim.Status()
			rs.Log = &ls
		}
		if r.src != nil {
			rep := r.src.Status()
			rs.Replication = &rep
		}
		st.Resources = append(st.Resources, rs)
	}
	if d.cluster != nil {
		peers := d.cluster.Peers()
		for _, n := range sortedKeys(peers) {
			st.Peers = append(st.Peers, peers[n])
		}
	}
	return st
}
