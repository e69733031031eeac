package appliance

import (
	"time"

	"github.com/tharsis/tharsis/replicate"
)

// Status is a node's view of itself and of its peers, served on the
// control socket and rendered by `tharsis view`.
type Status struct {
	Node    string    `json:"node"`
	Started time.Time `json:"started"`
	// Time is when the status was taken (the daemon's clock): the ages of
	// the peers' statuses count from it.
	Time      time.Time        `json:"time"`
	Resources []ResourceStatus `json:"resources"`
	// Peers is the latest status of every other node, as polled over the
	// replication protocol (empty when this node has no peers).
	Peers []replicate.PeerState `json:"peers,omitempty"`
	// SyncRate and FetchRate are the node's traffic limits in bytes per
	// second ([limits] sync_rate, fetch_rate; 0: none).
	SyncRate  int64 `json:"sync_rate,omitempty"`
	FetchRate int64 `json:"fetch_rate,omitempty"`
	// Deleted lists the resources delete-resource removed on this node
	// that the config still names (remove them from it).
	Deleted []string `json:"deleted,omitempty"`
}

// ResourceStatus is one resource as this node holds it.
type ResourceStatus struct {
	Name string `json:"name"`
	// Role is the node's phase for the resource: "primary", "secondary",
	// "starting", "handing-over", "promoting" or "left" ("primary" or
	// "secondary" for an unreplicated resource).
	Role       string         `json:"role"`
	Disk       string         `json:"disk"`
	Size       int64          `json:"size"`
	Replicated bool           `json:"replicated"`
	Exports    []ExportStatus `json:"exports,omitempty"`
	// ExportError says why an export of the resource failed to start.
	ExportError string `json:"export_error,omitempty"`
	// Log is the primary's transaction log in detail.
	Log *replicate.Status `json:"log,omitempty"`
	// Replication is this node's replication state of the resource (the
	// same record its peers see).
	Replication *replicate.ResourceStatus `json:"replication,omitempty"`
}

// ExportStatus is one export being served.
type ExportStatus struct {
	Kind       string `json:"kind"` // "nbd", "aoe" or "ip" (the service address)
	Name       string `json:"name"` // NBD export name, AoE eX.Y or ADDRESS/LEN
	Where      string `json:"where"`
	ReadOnly   bool   `json:"read_only"`
	WriteCache bool   `json:"write_cache"` // AoE: writes acknowledged before they are durable
}

// Status returns the node's current status.
func (d *Daemon) Status() Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	lim := d.limits()
	st := Status{Node: d.node.Name, Started: d.started, Time: time.Now(), SyncRate: lim.SyncRate, FetchRate: lim.FetchRate}
	for _, name := range sortedKeys(d.deleted) {
		if d.config().Resources[name] != nil {
			st.Deleted = append(st.Deleted, name)
		}
	}
	for _, name := range sortedKeys(d.resources) {
		r := d.resources[name]
		rs := ResourceStatus{Name: name, Role: "secondary", Disk: r.disk.Name(), Size: r.disk.Size(), Replicated: r.config().Replicated}
		if r.role != nil {
			rs.Role = r.role.snapshot().Phase.String()
		} else if r.config().Primary == d.node.Name {
			rs.Role = "primary"
		}
		prim, _, src := r.paths()
		r.mu.Lock()
		serving, exportErr := r.serving, r.exportErr
		r.mu.Unlock()
		rs.ExportError = exportErr
		if serving {
			for _, e := range d.config().NBD {
				if e.Resource == name {
					rs.Exports = append(rs.Exports, ExportStatus{Kind: "nbd", Name: e.Name, Where: e.Listen, ReadOnly: e.ReadOnly})
				}
			}
			for _, e := range d.config().AoE {
				if e.Resource == name {
					rs.Exports = append(rs.Exports, ExportStatus{Kind: "aoe", Name: aoeName(e.Shelf, e.Slot), Where: joinComma(e.Interfaces), ReadOnly: e.ReadOnly, WriteCache: e.WriteCache})
				}
			}
			rs.Exports = append(rs.Exports, d.serviceStatus(r)...)
		}
		if prim != nil {
			ls := prim.Status()
			rs.Log = &ls
		}
		if r.role != nil {
			var rep replicate.ResourceStatus
			if src != nil {
				rep = roleSource{src, r}.Status()
			} else {
				rep = roleSource{replicate.IdleSource(r.dir, r.name), r}.Status()
			}
			rep.Resource = name
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
