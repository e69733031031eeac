#!/usr/bin/env bash
# The tharsis demo: a primary and a secondary on this machine (see README).
# Builds bin/tharsis once (as the invoking user, so Go's build cache stays
# theirs), then runs `bin/tharsis demo` as root, through sudo when the user is
# not root (root creates the AoE veth pair). Extra arguments go to
# `tharsis demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
command -v go >/dev/null || { echo "Go is missing: install Go 1.26 at /usr/local/go" >&2; exit 1; }
go build -o bin/tharsis ./cmd/tharsis
if [ "$(id -u)" -ne 0 ]; then
	exec sudo "$PWD/bin/tharsis" demo "$@"
fi
exec "$PWD/bin/tharsis" demo "$@"
