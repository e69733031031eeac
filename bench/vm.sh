#!/bin/sh
# bench/vm.sh: sequential O_DIRECT dd inside the QEMU test guest (Linux aoe
# and nbd drivers) against tharsis, vblade and nbd-server in the same run;
# appends the table to bench/RESULTS.md (or $RESULTS).
#
#   sudo bench/vm.sh                 # MTU 1500 and 9000, 256 MiB per run
#   MTUS=1500 SIZE=64 bench/vm.sh    # quicker smoke run
# THARSIS_VM_KVM=1 uses KVM instead of TCG.
set -eu
cd "$(dirname "$0")/.."
results=${RESULTS:-bench/RESULTS.md}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
go run ./vm-tests/vmbench -mtu "${MTUS:-1500,9000}" -size "${SIZE:-256}" > "$out"
cat "$out"
{
	printf '\n## Guest (Linux aoe/nbd drivers) vs vblade/nbd-server (%s)\n\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
	cat "$out"
} >> "$results"
echo "appended to $results" >&2
