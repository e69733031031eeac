#!/usr/bin/env bash
# Profiles tharsis' AoE target (bench/aoe/serve, aoe.Server without the
# daemon) under bench/aoe/load on a veth pair between two network
# namespaces, set up as bench/aoe.sh does (target pinned to CPU 0, load
# generator to CPU 1). For each op and window it prints:
#   - req/s and the target's CPU µs/request (utime+stime, /proc/PID/stat);
#   - system calls and context switches per request of the target
#     (perf stat tracepoints: recvmmsg, sendmmsg, sendto (the transmit ring), epoll_pwait, futex, ...),
#     when perf is installed;
#   - the top of the target's pprof CPU profile (Go's, with runtime and
#     syscall time).
# Profiles are kept in $BENCH_OUT (default /tmp/tharsis-aoe-profile) as
# OP-wWINDOW.pprof, with the serve binary beside them, for
# `go tool pprof -top|-web serve OP-wWINDOW.pprof`. It asserts nothing.
#
# Environment:
#   BENCH_RUNTIME   seconds per run (default 5)
#   BENCH_WINDOWS   windows (default "1 64")
#   BENCH_OPS       ops (default "read write")
#   BENCH_MTU       MTU (default 1500)
#   BENCH_SERVE     extra flags for serve (default "-write-cache"; "" for
#                   durable writes)
#   BENCH_TOP       lines of pprof -top to print (default 25)
#   BENCH_OUT       where the profiles go
# Needs root, ip(8), taskset, go; perf optional.
set -euo pipefail

cd "$(dirname "$0")/.."
RUNTIME=${BENCH_RUNTIME:-5}
WINDOWS=${BENCH_WINDOWS:-1 64}
OPS=${BENCH_OPS:-read write}
MTU=${BENCH_MTU:-1500}
SERVE=${BENCH_SERVE--write-cache}
TOP=${BENCH_TOP:-25}
OUT=${BENCH_OUT:-/tmp/tharsis-aoe-profile}
SIZE=$((256 << 20))

[ "$(id -u)" = 0 ] || { echo "bench/aoe-profile.sh: needs root" >&2; exit 1; }
mkdir -p "$OUT"
. bench/aoe/lib.sh
aoe_setup /var/tmp p

go build -o "$WORK/load" ./bench/aoe/load
go build -o "$OUT/serve" ./bench/aoe/serve
head -c "$SIZE" /dev/urandom >"$WORK/disk.img"
cat "$WORK/disk.img" >/dev/null

aoe_veth
ip -n "$NS_T" link set "$IF_T" mtu "$MTU"
ip -n "$NS_I" link set "$IF_I" mtu "$MTU"

TCK=$(getconf CLK_TCK)
EVENTS=syscalls:sys_enter_recvmmsg,syscalls:sys_enter_sendmmsg,syscalls:sys_enter_sendto,syscalls:sys_enter_epoll_pwait,syscalls:sys_enter_futex,syscalls:sys_enter_nanosleep,syscalls:sys_enter_fdatasync,syscalls:sys_enter_pread64,syscalls:sys_enter_pwrite64,context-switches

for op in $OPS; do
	for w in $WINDOWS; do
		prof=$OUT/$op-w$w.pprof
		# shellcheck disable=SC2086
		ip netns exec "$NS_T" taskset -c 0 "$OUT/serve" $SERVE -cpuprofile "$prof" -i "$IF_T" -f "$WORK/disk.img" >"$WORK/target.log" 2>&1 &
		TPID=$!
		# Warm up (discovery, first frames) before counting.
		ip netns exec "$NS_I" taskset -c 1 "$WORK/load" -i "$IF_I" -op "$op" -window "$w" -duration 1s >/dev/null
		t0=$(cputicks "$TPID")
		PERF=()
		if command -v perf >/dev/null; then
			perf stat -x, -e "$EVENTS" -p "$TPID" -o "$WORK/perf.txt" &
			PERF=($!)
		fi
		out=$(ip netns exec "$NS_I" taskset -c 1 "$WORK/load" -i "$IF_I" -op "$op" -window "$w" -duration "${RUNTIME}s")
		t1=$(cputicks "$TPID")
		if [ ${#PERF[@]} -gt 0 ]; then
			kill -INT "${PERF[0]}" && wait "${PERF[0]}" || true
		fi
		kill -INT "$TPID" && wait "$TPID" || true
		TPID=""
		reqs=$(echo "$out" | awk '{print $1}')
		echo "== $op window $w MTU $MTU (serve $SERVE): $(echo "$out" | awk -v c=$((t1 - t0)) -v tck="$TCK" '{ printf "%.0f req/s, %.2f CPU µs/req", $1/$3, ($1 > 0 ? c/tck*1e6/$1 : 0) }')"
		if [ -s "$WORK/perf.txt" ]; then
			awk -F, -v n="$reqs" '/^[0-9]/ { sub(/^syscalls:sys_enter_/, "", $3); printf "   %-18s %8.3f per request\n", $3, $1/n }' "$WORK/perf.txt"
		fi
		go tool pprof -top -nodecount="$TOP" "$OUT/serve" "$prof" 2>/dev/null | sed -n '4,$p'
	done
done
