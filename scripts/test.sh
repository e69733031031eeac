#!/usr/bin/env bash
# The whole tharsis test suite, from a fresh machine: installs what the tests
# need (Debian packages, idempotent), then runs every test, including the
# real-peer tests (libnbd, qemu-img, fio, vblade) and the QEMU guest tests
# with the Linux aoe and nbd drivers. Needs root (apt, network namespaces,
# raw sockets, tap devices); re-runs itself with sudo when it is not root.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
	# Root's own Go caches: root-owned files in the user's would break
	# their later builds.
	exec sudo -E env -u GOCACHE -u GOMODCACHE -u GOPATH "PATH=$PATH" \
		"HOME=$(getent passwd root | cut -d: -f6)" bash "$0" "$@"
fi

packages=(
	libnbd-bin nbdkit qemu-utils nbd-server fio      # NBD peers
	vblade aoetools                                  # AoE reference target and tools
	nbd-client qemu-system-x86 linux-image-amd64     # the QEMU guest for vm-tests
	busybox-static cpio e2fsprogs kmod
	iproute2 util-linux procps
	prometheus                                       # promtool checks the /metrics text
	systemd                                          # systemd-analyze verify of the unit
)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "== installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

export PATH="/usr/local/go/bin:$PATH"
command -v go >/dev/null || { echo "Go is missing: install Go 1.26 at /usr/local/go" >&2; exit 1; }
go version

echo "== gofmt, go vet"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then echo "gofmt would change: $unformatted" >&2; exit 1; fi
go vet ./...
go vet -tags vm ./vm-tests/...

# Tests that need a peer tool, root or a namespace fail instead of skipping.
export THARSIS_REQUIRE_PEERS=1
echo "== go test -race ./..."
go test -race -count=1 -timeout 40m ./...
echo "== vm-tests: the Linux aoe driver, aoetools and nbd-client in a QEMU guest"
go test -tags vm -count=1 -timeout 25m -v ./vm-tests/...
echo "== all tests passed"
