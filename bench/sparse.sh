#!/usr/bin/env bash
# Sparse-image copy benchmark on loopback: nbdcopy of a 1 GiB sparse file
# holding 16 MiB of data (four 4 MiB runs), served read-only by tharsis's
# nbd.Server (bench/nbd/serve -file) and by nbdkit's file plugin, each with
# base:allocation block status (nbdcopy's default) and with --no-extents
# (every zero read). It reports the median of $BENCH_REPEAT copies to null:
# and the bytes each server process read (rchar in /proc/PID/io: the file
# and the requests), prints a table with ratios to nbdkit and appends it to
# bench/RESULTS.md. It asserts nothing: it is not a test (nbd's
# TestPeerBlockStatus asserts the bytes read).
#
# Environment:
#   BENCH_REPEAT    copies per server and mode (default 5)
#   BENCH_RESULTS   file to append to (default bench/RESULTS.md)
#   BENCH_PORT      first of two TCP ports on 127.0.0.1 (default 21810)
#   BENCH_NOPIN=1   do not pin server and client to different cores
#
# Needs: go, nbdcopy nbdinfo (libnbd-bin), nbdkit, python3.
set -euo pipefail

cd "$(dirname "$0")/.."
REPEAT=${BENCH_REPEAT:-5}
RESULTS=${BENCH_RESULTS:-bench/RESULTS.md}
PORT=${BENCH_PORT:-21810}

. bench/nbd/lib.sh
bench_need "libnbd-bin nbdkit python3" go nbdcopy nbdinfo nbdkit python3

bench_work sparse

echo "building the tharsis export server..."
go build -o "$WORK/serve" ./bench/nbd/serve

img=$WORK/sparse.img
truncate -s 1G "$img"
for mib in 0 100 512 1020; do
	dd if=/dev/urandom of="$img" bs=1M count=4 seek="$mib" conv=notrunc status=none
done
echo "1 GiB image, $(du -k "$img" | cut -f1) KiB allocated, in $WORK"

"${SRV[@]}" "$WORK/serve" -ro -file "$img" -name bench -listen "127.0.0.1:$PORT" >"$WORK/serve.log" 2>&1 &
PIDS+=($!)
declare -A PID URI
PID[tharsis]=$!
URI[tharsis]="nbd://127.0.0.1:$PORT/bench"
"${SRV[@]}" nbdkit -f -r -i 127.0.0.1 -p "$((PORT + 1))" file "$img" >"$WORK/nbdkit.log" 2>&1 &
PIDS+=($!)
PID[nbdkit]=$!
URI[nbdkit]="nbd://127.0.0.1:$((PORT + 1))/"
names=(tharsis nbdkit)
for n in "${names[@]}"; do bench_wait_up "${URI[$n]}"; done

rchar() { awk '/^rchar:/ {print $2}' "/proc/$1/io"; }
# copy NAME MODE: median seconds of $REPEAT copies, and MiB read per copy.
declare -A SECS MIB
for mode in extents no-extents; do
	for n in "${names[@]}"; do
		args=()
		[ "$mode" = no-extents ] && args=(--no-extents)
		times=()
		r0=$(rchar "${PID[$n]}")
		for _ in $(seq "$REPEAT"); do
			t0=$(date +%s.%N)
			"${CLI[@]}" nbdcopy "${args[@]}" "${URI[$n]}" null:
			t1=$(date +%s.%N)
			times+=("$(python3 -c "print($t1 - $t0)")")
		done
		r1=$(rchar "${PID[$n]}")
		SECS[$n,$mode]=$(printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {printf "%.3f", a[int((NR+1)/2)]}')
		MIB[$n,$mode]=$(python3 -c "print(f'{($r1 - $r0) / $REPEAT / 2**20:.1f}')")
		echo "$n $mode: median ${SECS[$n,$mode]} s, ${MIB[$n,$mode]} MiB read per copy"
	done
done

ratio() { python3 -c "print(f'{$1 / $2:.2f}x')"; }
date=$(date -u '+%Y-%m-%d %H:%M UTC')
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
section=$(
	echo "## Sparse image copy: tharsis vs nbdkit file ($date, tharsis $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
	echo
	echo "Machine: $(uname -r), ${cpu:-unknown CPU}, $(nproc) cores. $PIN."
	echo "nbdcopy URI null: of a 1 GiB sparse file with 16 MiB of data (4 × 4 MiB), read-only exports; median of $REPEAT copies; MiB the server process read per copy (rchar)."
	echo
	echo "| server | with block status: s | MiB read | --no-extents: s | MiB read | time vs nbdkit, block status (lower is faster) |"
	echo "| --- | ---: | ---: | ---: | ---: | ---: |"
	for n in "${names[@]}"; do
		echo "| $n | ${SECS[$n,extents]} | ${MIB[$n,extents]} | ${SECS[$n,no-extents]} | ${MIB[$n,no-extents]} | $(ratio "${SECS[$n,extents]}" "${SECS[nbdkit,extents]}") |"
	done
)
echo
echo "$section"
printf '\n%s\n' "$section" >>"$RESULTS"
echo
echo "appended to $RESULTS"
