package clustertest

import "github.com/tharsis/tharsis/internal/nbdclient"

// The NBD client the tests drive the daemon with.
type (
	nbdConn  = nbdclient.Conn
	nbdError = nbdclient.Error
)

var dialNBD = nbdclient.Dial

const errNoSpace = nbdclient.ENOSPC
