#!/usr/bin/env bash
# Side-by-side AoE benchmark: tharsis' aoe.Server against Debian's vblade on
# the same veth pair between two network namespaces, serving the same
# 256 MiB file (on disk, read into the page cache), driven by the same load generator
# (bench/aoe/load: tharsis' initiator, random full-frame READ EXT / WRITE EXT)
# at window 1, 16 and 64, at MTU 1500 and 9000. The target is pinned to CPU 0,
# the load generator to CPU 1. For each run it prints req/s, MB/s and the
# target's CPU time per request (utime+stime from /proc/PID/stat), then ratios:
#   reads:  tharsis (write_cache) vs vblade
#   writes: tharsis write_cache=true vs plain vblade (page cache, no flush)
#           tharsis durable (default) vs vblade -s (O_SYNC)
# and appends the table with date, kernel and CPU to bench/RESULTS.md.
# It asserts nothing.
#
# Environment:
#   BENCH_RUNTIME   seconds per run (default 5; BENCH_RUNTIME=1 for a smoke run)
#   BENCH_WINDOWS   windows (default "1 16 64")
#   BENCH_MTUS      MTUs (default "1500 9000")
#   BENCH_RESULTS   file to append to (default bench/RESULTS.md)
#   BENCH_DIR       disk-backed directory for the 256 MiB file (default /var/tmp)
#   BENCH_NOPIN=1   do not pin
#   BENCH_KINDS     targets to run (default "vblade tharsis-wc vblade-s tharsis
#                   tharsis-repl tharsis-repl-sync")
#   BENCH_THARSIS=serve  use bench/aoe/serve (aoe.Server without the daemon)
#                   instead of `tharsis run`
#   BENCH_THARSIS_BIN  a prebuilt tharsis binary (default: go build ./cmd/tharsis)
#   BENCH_PPROF     a directory: save a CPU profile of `tharsis run` during
#                   each of its runs there (KIND-OP-MTU-WINDOW.pprof; the
#                   daemon serves THARSIS_PPROF on 127.0.0.1:6060 in its netns)
# Needs root, ip(8), vblade, taskset, go, awk.
set -euo pipefail

cd "$(dirname "$0")/.."
RUNTIME=${BENCH_RUNTIME:-5}
WINDOWS=${BENCH_WINDOWS:-1 16 64}
MTUS=${BENCH_MTUS:-1500 9000}
KINDS=${BENCH_KINDS:-vblade tharsis-wc vblade-s tharsis tharsis-repl tharsis-repl-sync}
THARSIS=${BENCH_THARSIS:-run}
RESULTS=${BENCH_RESULTS:-bench/RESULTS.md}
SIZE=$((256 << 20))

[ "$(id -u)" = 0 ] || { echo "bench/aoe.sh: needs root (network namespaces, raw sockets)" >&2; exit 1; }
for tool in go ip vblade taskset awk; do
	command -v "$tool" >/dev/null || { echo "bench/aoe.sh: $tool is missing (apt-get install vblade iproute2 util-linux)" >&2; exit 1; }
done

# A disk-backed directory, so that fdatasync (tharsis durable) and O_SYNC
# (vblade -s) cost what they cost; the file is read once into the page cache.
base=${BENCH_DIR:-/var/tmp}
. bench/aoe/lib.sh
aoe_setup "$base" b

SRV=() CLI=() PIN="not pinned"
if [ "${BENCH_NOPIN:-}" != 1 ] && [ "$(nproc)" -ge 2 ]; then
	SRV=(taskset -c 0) CLI=(taskset -c 1)
	PIN="target pinned to CPU 0, load generator to CPU 1 (taskset)"
fi

echo "building the load generator and the tharsis target..."
go build -o "$WORK/load" ./bench/aoe/load
if [ "$THARSIS" = serve ]; then
	go build -o "$WORK/serve" ./bench/aoe/serve
elif [ -n "${BENCH_THARSIS_BIN:-}" ]; then
	cp "$BENCH_THARSIS_BIN" "$WORK/tharsis"
else
	go build -o "$WORK/tharsis" ./cmd/tharsis
fi
head -c "$SIZE" /dev/urandom >"$WORK/disk.img"
sync "$WORK/disk.img"
cat "$WORK/disk.img" >/dev/null # into the page cache

aoe_veth
ip -n "$NS_T" link set lo up # the daemon's replication listener

TCK=$(getconf CLK_TCK)

# tharsis_run NAME REPLICATED SYNC WRITE_CACHE: `tharsis run` of a
# one-node cluster exporting the file as e1.1 on the target interface;
# state and log in $WORK/run-NAME (beside the file, same filesystem).
tharsis_run() {
	local d=$WORK/run-$1
	rm -rf "$d" && mkdir -p "$d"
	cat >"$d/tharsis.toml" <<TOML
[nodes.bench]
replication = "127.0.0.1:17777"
state_dir = "$d/state"

[resources.r0]
disk = { bench = "$WORK/disk.img" }
replicated = $2
sync = $3

[[exports.aoe]]
resource = "r0"
shelf = 1
slot = 1
interfaces = ["$IF_T"]
bufcnt = 64
write_cache = $4
TOML
	ip netns exec "$NS_T" env THARSIS_PPROF="${BENCH_PPROF:+127.0.0.1:6060}" "${SRV[@]}" "$WORK/tharsis" run --config "$d/tharsis.toml" --node bench >"$WORK/target.log" 2>&1 &
}

# start_target KIND: vblade | vblade-s | tharsis-wc | tharsis | tharsis-repl | tharsis-repl-sync
start_target() {
	case $THARSIS:$1 in
	*:vblade) ip netns exec "$NS_T" "${SRV[@]}" vblade -b 64 1 1 "$IF_T" "$WORK/disk.img" >"$WORK/target.log" 2>&1 & ;;
	*:vblade-s) ip netns exec "$NS_T" "${SRV[@]}" vblade -s -b 64 1 1 "$IF_T" "$WORK/disk.img" >"$WORK/target.log" 2>&1 & ;;
	run:tharsis-wc) tharsis_run "$1" false false true ;;
	run:tharsis) tharsis_run "$1" false false false ;;
	run:tharsis-repl) tharsis_run "$1" true false false ;;
	run:tharsis-repl-sync) tharsis_run "$1" true true false ;;
	serve:tharsis-wc) ip netns exec "$NS_T" "${SRV[@]}" "$WORK/serve" -write-cache -i "$IF_T" -f "$WORK/disk.img" >"$WORK/target.log" 2>&1 & ;;
	serve:tharsis) ip netns exec "$NS_T" "${SRV[@]}" "$WORK/serve" -i "$IF_T" -f "$WORK/disk.img" >"$WORK/target.log" 2>&1 & ;;
	serve:tharsis-repl | serve:tharsis-repl-sync)
		rm -rf "$WORK/log" && mkdir -p "$WORK/log"
		local sync=false
		[ "$1" = tharsis-repl-sync ] && sync=true
		ip netns exec "$NS_T" "${SRV[@]}" "$WORK/serve" -log "$WORK/log" -sync="$sync" -i "$IF_T" -f "$WORK/disk.img" >"$WORK/target.log" 2>&1 &
		;;
	*) echo "bench/aoe.sh: unknown target kind $1" >&2; exit 1 ;;
	esac
	TPID=$!
}
stop_target() { kill "$TPID" 2>/dev/null || true; wait "$TPID" 2>/dev/null || true; TPID=""; }

ROWS=$WORK/rows
: >"$ROWS"
# run KIND OP MTU WINDOW -> appends "kind op mtu window reqs/s MB/s us-cpu/req errors"
run() {
	local kind=$1 op=$2 mtu=$3 w=$4 t0 t1 out prof=
	if [ -n "${BENCH_PPROF:-}" ] && [ "$THARSIS" = run ] && [[ $kind == tharsis* ]]; then
		mkdir -p "$BENCH_PPROF"
		ip netns exec "$NS_T" curl -s --retry 20 --retry-connrefused --retry-delay 1 -o "$BENCH_PPROF/$kind-$op-$mtu-$w.pprof" \
			"http://127.0.0.1:6060/debug/pprof/profile?seconds=$((RUNTIME > 2 ? RUNTIME - 1 : 1))" &
		prof=$!
	fi
	t0=$(cputicks "$TPID")
	if ! out=$(ip netns exec "$NS_I" "${CLI[@]}" "$WORK/load" -i "$IF_I" -op "$op" -window "$w" -duration "${RUNTIME}s"); then
		echo "bench/aoe.sh: load against $kind failed; target log:" >&2
		cat "$WORK/target.log" >&2
		exit 1
	fi
	t1=$(cputicks "$TPID")
	[ -z "$prof" ] || wait "$prof"
	echo "$out" | awk -v k="$kind" -v o="$op" -v m="$mtu" -v w="$w" -v c=$((t1 - t0)) -v tck="$TCK" \
		'{ printf "%s %s %s %s %.0f %.1f %.2f %d\n", k, o, m, w, $1/$3, $2/$3/1e6, ($1 > 0 ? c/tck*1e6/$1 : 0), $4 }' >>"$ROWS"
	tail -1 "$ROWS"
}

for mtu in $MTUS; do
	ip -n "$NS_T" link set "$IF_T" mtu "$mtu"
	ip -n "$NS_I" link set "$IF_I" mtu "$mtu"
	for kind in $KINDS; do
		start_target "$kind"
		for w in $WINDOWS; do
			case $kind in
			vblade | tharsis-wc | tharsis-repl) run "$kind" read "$mtu" "$w"; run "$kind" write "$mtu" "$w" ;;
			*) run "$kind" write "$mtu" "$w" ;;
			esac
		done
		stop_target
	done
done

THARSIS_DESC="\`tharsis run\` (bufcnt 64; write_cache = true for reads and cached writes of the file)"
[ "$THARSIS" = serve ] && THARSIS_DESC="bench/aoe/serve (aoe.Server without the daemon)"
CPU=$(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ *//')
TABLE=$(awk -v pin="$PIN" -v rt="$RUNTIME" '
function row(lbl, a, b, f) {
	if (!(a in r) || !(b in r)) return
	printf "| %s | %s | %s | %s | %s | %.2f | %s | %s | %.2f | %s |\n", lbl, f[2], f[3], r[a], r[b], (r[a] ? r[b]/r[a] : 0), cpu[a], cpu[b], (cpu[a] ? cpu[b]/cpu[a] : 0), mb[b]
}
{ key = $2 " " $3 " " $4; r[$1 " " key] = $5; mb[$1 " " key] = $6; cpu[$1 " " key] = $7; e[$1 " " key] = $8; keys[key] = 1; order[n++] = key }
END {
	print "| op | MTU | window | vblade req/s | tharsis req/s | ratio | vblade CPU µs/req | tharsis CPU µs/req | CPU ratio | tharsis MB/s |"
	print "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
	for (i = 0; i < n; i++) {
		k = order[i]; if (seen[k]++) continue
		split(k, f, " ")
		if (f[1] != "read") continue
		row("read (tharsis file)", "vblade " k, "tharsis-wc " k, f)
		row("read (tharsis replicated)", "vblade " k, "tharsis-repl " k, f)
	}
	for (i = 0; i < n; i++) {
		k = order[i]; if (seen2[k]++) continue
		split(k, f, " ")
		if (f[1] != "write") continue
		row("write (tharsis file write_cache vs vblade)", "vblade " k, "tharsis-wc " k, f)
		row("durable write (tharsis file vs vblade -s)", "vblade-s " k, "tharsis " k, f)
		row("durable write (tharsis replicated vs vblade -s)", "vblade-s " k, "tharsis-repl " k, f)
		row("durable write (tharsis replicated sync=true vs vblade -s)", "vblade-s " k, "tharsis-repl-sync " k, f)
	}
	for (x in e) if (e[x] > 0) printf "\nerrors (timeouts or I/O errors) in %s: %d\n", x, e[x]
}' "$ROWS")

{
	echo
	echo "## AoE target vs vblade ($(date -u +%Y-%m-%d))"
	echo
	echo "$(date -u '+%Y-%m-%d %H:%M UTC'), kernel $(uname -r), $(nproc) x $CPU; $PIN; ${RUNTIME}s per run;"
	echo "256 MiB file in $base (in page cache), veth pair between two netns, load: bench/aoe/load (tharsis initiator, random full-frame READ/WRITE EXT);"
	echo "tharsis: $THARSIS_DESC; file = replicated = false, replicated = transaction log beside the file (sync = false: ack after the shared log fdatasync; sync = true: WriteAt waits for it); vblade $(dpkg-query -W -f '${Version}' vblade 2>/dev/null) -b 64."
	echo
	echo "$TABLE"
} | tee -a "$RESULTS"
