// Package systemd holds tharsis's systemd unit template, tharsis@.service
// (one instance per node: tharsis@NODE runs `tharsis run --node NODE`), so
// that `tharsis install-systemd` installs the file kept in the repository.
package systemd

import _ "embed"

// Unit is the text of tharsis@.service.
//
//go:embed tharsis@.service
var Unit string

// UnitName is the file name of the template under /etc/systemd/system.
const UnitName = "tharsis@.service"

// DefaultBinary is where the unit expects the tharsis binary.
const DefaultBinary = "/usr/local/sbin/tharsis"
