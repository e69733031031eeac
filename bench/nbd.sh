#!/usr/bin/env bash
# Side-by-side NBD benchmark on loopback: tharsis's nbd.Server (memory device
# and file device) against nbdkit (memory 256M), qemu-nbd (-e 8 -t, raw file)
# and nbd-server. Against each it runs
#   nbdcopy --no-extents: 256 MiB write (from a /dev/shm file), then read (to null:)
#   fio --ioengine=nbd --rw=randrw --bs=4k --iodepth=32 --runtime=$BENCH_RUNTIME --time_based
# prints a table with ratios to nbdkit and appends it, with the date and the
# machine, to bench/RESULTS.md. It asserts nothing: it is not a test.
#
# Environment:
#   BENCH_RUNTIME   fio seconds per server (default 20; BENCH_RUNTIME=3 for a smoke run)
#   BENCH_RESULTS   file to append to (default bench/RESULTS.md)
#   BENCH_PORT      first of five TCP ports on 127.0.0.1 (default 21800)
#   BENCH_NOPIN=1   do not pin server and client to different cores
#
# Needs: go, nbdcopy nbdinfo (libnbd-bin), nbdkit, qemu-nbd (qemu-utils),
# nbd-server, fio (with the nbd engine), python3.
set -euo pipefail

cd "$(dirname "$0")/.."
RUNTIME=${BENCH_RUNTIME:-20}
RESULTS=${BENCH_RESULTS:-bench/RESULTS.md}
PORT=${BENCH_PORT:-21800}
SIZE=$((256 << 20))

. bench/nbd/lib.sh
bench_need "libnbd-bin nbdkit qemu-utils nbd-server fio python3" go nbdcopy nbdinfo nbdkit qemu-nbd nbd-server fio python3

base=/dev/shm
[ -w "$base" ] || base=${TMPDIR:-/tmp}
bench_work nbd "$base"
NBD_SERVER_PIDFILE=$WORK/nbd-server.pid
bench_kill_more() {
	# nbd-server forks a child per connection; they exit with their client.
	if [ -s "$NBD_SERVER_PIDFILE" ]; then kill "$(cat "$NBD_SERVER_PIDFILE")" 2>/dev/null || true; fi
}

echo "building the tharsis export server..."
go build -o "$WORK/serve" ./bench/nbd/serve

echo "preparing 256 MiB source data and backing files in $WORK..."
head -c "$SIZE" /dev/urandom >"$WORK/src.img"
for f in tharsis qemu nbdserver; do truncate -s "$SIZE" "$WORK/$f.img"; done

names=(tharsis-mem tharsis-file nbdkit qemu-nbd nbd-server)
declare -A URI
URI[tharsis-mem]="nbd://127.0.0.1:$PORT/bench"
URI[tharsis-file]="nbd://127.0.0.1:$((PORT + 1))/bench"
URI[nbdkit]="nbd://127.0.0.1:$((PORT + 2))/"
URI[qemu-nbd]="nbd://127.0.0.1:$((PORT + 3))/bench"
URI[nbd-server]="nbd://127.0.0.1:$((PORT + 4))/bench"

"${SRV[@]}" "$WORK/serve" -mem 256MiB -name bench -listen "127.0.0.1:$PORT" >"$WORK/mem.log" 2>&1 &
PIDS+=($!)
"${SRV[@]}" "$WORK/serve" -file "$WORK/tharsis.img" -name bench -listen "127.0.0.1:$((PORT + 1))" >"$WORK/file.log" 2>&1 &
PIDS+=($!)
"${SRV[@]}" nbdkit -f -i 127.0.0.1 -p "$((PORT + 2))" memory 256M >"$WORK/nbdkit.log" 2>&1 &
PIDS+=($!)
"${SRV[@]}" qemu-nbd -e 8 -t -f raw -x bench -b 127.0.0.1 -p "$((PORT + 3))" "$WORK/qemu.img" >"$WORK/qemu-nbd.log" 2>&1 &
PIDS+=($!)
cat >"$WORK/nbd-server.conf" <<EOF
[generic]
	listenaddr = 127.0.0.1
	port = $((PORT + 4))
	allowlist = true
[bench]
	exportname = $WORK/nbdserver.img
EOF
"${SRV[@]}" nbd-server -C "$WORK/nbd-server.conf" -p "$NBD_SERVER_PIDFILE" >"$WORK/nbd-server.log" 2>&1

for n in "${names[@]}"; do bench_wait_up "${URI[$n]}"; done

now() { date +%s.%N; }
mbps() { python3 -c "import sys; print(f'{$SIZE / 1e6 / ($2 - $1):.0f}')" ; }

declare -A WMB RMB IOPS
for n in "${names[@]}"; do
	uri=${URI[$n]}
	echo "== $n ($uri)"
	t0=$(now)
	"${CLI[@]}" nbdcopy --no-extents "$WORK/src.img" "$uri"
	t1=$(now)
	"${CLI[@]}" nbdcopy --no-extents "$uri" null:
	t2=$(now)
	WMB[$n]=$(mbps "$t0" "$t1")
	RMB[$n]=$(mbps "$t1" "$t2")
	"${CLI[@]}" fio --name=bench --ioengine=nbd --uri="$uri" --rw=randrw --bs=4k --iodepth=32 \
		--size=256M --runtime="$RUNTIME" --time_based --output-format=json >"$WORK/fio-$n.json"
	IOPS[$n]=$(python3 -c '
import json, sys
text = open(sys.argv[1]).read()
j = json.loads(text[text.index("{"):])["jobs"][0]  # fio prints a line before the JSON
print("%.0f" % (j["read"]["iops"] + j["write"]["iops"]))' "$WORK/fio-$n.json")
	echo "   nbdcopy write ${WMB[$n]} MB/s, read ${RMB[$n]} MB/s; fio randrw ${IOPS[$n]} IOPS"
done

ratio() { python3 -c "print(f'{$1 / $2:.2f}x')"; }
table() {
	echo "| server | nbdcopy read MB/s | nbdcopy write MB/s | fio 4k randrw IOPS | read vs nbdkit | write vs nbdkit | IOPS vs nbdkit |"
	echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
	for n in "${names[@]}"; do
		echo "| $n | ${RMB[$n]} | ${WMB[$n]} | ${IOPS[$n]} | $(ratio "${RMB[$n]}" "${RMB[nbdkit]}") | $(ratio "${WMB[$n]}" "${WMB[nbdkit]}") | $(ratio "${IOPS[$n]}" "${IOPS[nbdkit]}") |"
	done
}

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
date=$(date -u '+%Y-%m-%d %H:%M UTC')
section=$(
	echo "## NBD export vs nbdkit/qemu-nbd/nbd-server ($date)"
	echo
	echo "Machine: $(uname -r), ${cpu:-unknown CPU}, $(nproc) cores. $PIN."
	echo "nbdcopy --no-extents 256 MiB write (from /dev/shm) then read (to null:); fio --ioengine=nbd --rw=randrw --bs=4k --iodepth=32 --runtime=$RUNTIME --time_based."
	echo "tharsis-mem/-file: bench/nbd/serve with a memory / file (in $base) device; nbdkit memory 256M; qemu-nbd -e 8 -t -f raw; nbd-server, raw file."
	echo
	table
)
echo
echo "$section"
if [ ! -f "$RESULTS" ]; then
	printf '# Benchmark results\n\nAppended by the scripts in bench/. Figures depend on the machine and its load.\n' >"$RESULTS"
fi
printf '\n%s\n' "$section" >>"$RESULTS"
echo
echo "appended to $RESULTS"
