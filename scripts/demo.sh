#!/usr/bin/env bash
# The tharsis demo: a primary and a secondary on this machine (see README).
# Needs root for the AoE veth pair; re-runs itself with sudo when it is not
# root. Extra arguments go to `tharsis demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
	exec sudo -E env "PATH=$PATH" bash "$0" "$@"
fi
export PATH="/usr/local/go/bin:$PATH"
exec go run ./cmd/tharsis demo "$@"
