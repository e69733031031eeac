// Package appliance is the tharsis node daemon: it turns the cluster config
// into the resources this node holds, wraps each disk in the replicated
// device when the resource is replicated, serves the exports of the
// resources this node is primary for, and answers the admin CLI on a control
// socket (HTTP over a unix socket, root only).
//
// Export packages (aoe, nbd) see only a blockdev.Device; replication sees
// nothing of the exports. This package is where they meet.
package appliance
