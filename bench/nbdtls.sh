#!/usr/bin/env bash
# NBD with TLS vs without, side by side on loopback against the same export:
# bench/nbd/serve with a 256 MiB memory device and tls = "on" (so plain and
# TLS clients reach the same server), its certificate from `tharsis cert`.
# Against nbd://… (plain) and nbds://… (TLS, libnbd/GnuTLS, the CA in $HOME/.pki/libnbd)
# it runs, BENCH_ROUNDS times alternating:
#   nbdcopy --no-extents: 256 MiB write (from a /dev/shm file), then read (to null:)
#   fio --ioengine=nbd --rw=randrw --bs=4k --iodepth=32 --runtime=$BENCH_RUNTIME --time_based
# prints the best of the rounds, the TLS/plain ratios, the server's CPU
# seconds per GB moved (user+system from /proc, the least of the rounds:
# steadier than throughput on a busy machine) and the negotiated TLS
# version and cipher (from the server's log), and appends them, with the
# date and the machine, to bench/RESULTS.md. It asserts nothing.
#
# Environment:
#   BENCH_RUNTIME   fio seconds per run (default 20; 3 for a smoke run)
#   BENCH_ROUNDS    rounds of plain+TLS (default 2)
#   BENCH_RESULTS   file to append to (default bench/RESULTS.md)
#   BENCH_PORT      TCP port on 127.0.0.1 (default 21810)
#   BENCH_NOPIN=1   do not pin server and client to different cores
#
# Needs: go, nbdcopy nbdinfo (libnbd-bin), fio (with the nbd engine), python3.
set -euo pipefail

cd "$(dirname "$0")/.."
RUNTIME=${BENCH_RUNTIME:-20}
ROUNDS=${BENCH_ROUNDS:-2}
RESULTS=${BENCH_RESULTS:-bench/RESULTS.md}
PORT=${BENCH_PORT:-21810}
SIZE=$((256 << 20))

. bench/nbd/lib.sh
bench_need "libnbd-bin fio python3" go nbdcopy nbdinfo fio python3

base=/dev/shm
[ -w "$base" ] || base=${TMPDIR:-/tmp}
bench_work nbdtls "$base"

echo "building the export server and tharsis..."
go build -o "$WORK/serve" ./bench/nbd/serve
go build -o "$WORK/tharsis" ./cmd/tharsis

echo "making a CA and the server's certificate for 127.0.0.1..."
"$WORK/tharsis" cert create-ca --dir "$WORK/tls" >/dev/null
"$WORK/tharsis" cert create-node --dir "$WORK/tls" --host 127.0.0.1 bench >/dev/null
# fio's nbd engine refuses tls-certificates=DIR in a URI (local file
# access), so every client finds the CA where libnbd looks by default.
mkdir -p "$WORK/home/.pki/libnbd"
cp "$WORK/tls/ca.crt" "$WORK/home/.pki/libnbd/ca-cert.pem"
export HOME=$WORK/home

echo "preparing 256 MiB of source data in $WORK..."
head -c "$SIZE" /dev/urandom >"$WORK/src.img"

"${SRV[@]}" "$WORK/serve" -mem 256MiB -name bench -listen "127.0.0.1:$PORT" -v \
	-tls-cert "$WORK/tls/bench.crt" -tls-key "$WORK/tls/bench.key" >"$WORK/serve.out" 2>"$WORK/serve.log" &
SPID=$!
PIDS+=("$SPID")

declare -A URI
URI[plain]="nbd://127.0.0.1:$PORT/bench"
URI[tls]="nbds://127.0.0.1:$PORT/bench"
ok=
for _ in $(seq 100); do
	if nbdinfo --size "${URI[tls]}" >/dev/null 2>&1; then ok=1; break; fi
	sleep 0.1
done
[ -n "$ok" ] || { echo "bench/nbdtls.sh: the server did not come up; its log:" >&2; cat "$WORK/serve.log" >&2; exit 1; }

now() { date +%s.%N; }
mbps() { python3 -c "print(f'{$SIZE / 1e6 / ($2 - $1):.0f}')"; }
best() { python3 -c "import sys; print(max(int(x) for x in sys.argv[1:]))" "$@"; }
least() { python3 -c "import sys; print(min(float(x) for x in sys.argv[1:]))" "$@"; }
TCK=$(getconf CLK_TCK)
# cpu prints the server's CPU time so far (user+system, clock ticks).
cpu() { awk '{print $14 + $15}' "/proc/$SPID/stat"; }
# pergb prints the server's CPU seconds per GB from ticks $1 to $2 over $3 bytes.
pergb() { python3 -c "print(f'{($2 - $1) / $TCK / ($3 / 1e9):.2f}')"; }

declare -A WMB RMB IOPS WCPU RCPU FCPU
for round in $(seq "$ROUNDS"); do
	for n in plain tls; do
		uri=${URI[$n]}
		c0=$(cpu) t0=$(now)
		"${CLI[@]}" nbdcopy --no-extents "$WORK/src.img" "$uri"
		c1=$(cpu) t1=$(now)
		"${CLI[@]}" nbdcopy --no-extents "$uri" null:
		c2=$(cpu) t2=$(now)
		w=$(mbps "$t0" "$t1") r=$(mbps "$t1" "$t2")
		wc=$(pergb "$c0" "$c1" "$SIZE") rc=$(pergb "$c1" "$c2" "$SIZE")
		"${CLI[@]}" fio --name=bench --ioengine=nbd --uri="$uri" --rw=randrw --bs=4k --iodepth=32 \
			--size=256M --runtime="$RUNTIME" --time_based --output-format=json >"$WORK/fio.json"
		i=$(python3 -c '
import json, sys
text = open(sys.argv[1]).read()
j = json.loads(text[text.index("{"):])["jobs"][0]  # fio may print a line before the JSON
print("%.0f %d" % (j["read"]["iops"] + j["write"]["iops"], j["read"]["io_bytes"] + j["write"]["io_bytes"]))' "$WORK/fio.json")
		c3=$(cpu)
		fc=$(pergb "$c2" "$c3" "${i#* }") i=${i% *}
		echo "round $round $n: nbdcopy write $w MB/s, read $r MB/s; fio randrw $i IOPS; server CPU s/GB: write $wc, read $rc, fio $fc"
		WMB[$n]="${WMB[$n]:-} $w" RMB[$n]="${RMB[$n]:-} $r" IOPS[$n]="${IOPS[$n]:-} $i"
		WCPU[$n]="${WCPU[$n]:-} $wc" RCPU[$n]="${RCPU[$n]:-} $rc" FCPU[$n]="${FCPU[$n]:-} $fc"
	done
done
for n in plain tls; do
	WMB[$n]=$(best ${WMB[$n]}) RMB[$n]=$(best ${RMB[$n]}) IOPS[$n]=$(best ${IOPS[$n]})
	WCPU[$n]=$(least ${WCPU[$n]}) RCPU[$n]=$(least ${RCPU[$n]}) FCPU[$n]=$(least ${FCPU[$n]})
done

cipher=$(grep -m1 -o 'version="[^"]*" cipher=[^ ]*' "$WORK/serve.log" | tr -d '"' || echo "version/cipher not logged")
ratio() { python3 -c "print(f'{$1 / $2:.2f}x')"; }
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
date=$(date -u '+%Y-%m-%d %H:%M UTC')
section=$(
	echo "## NBD over TLS vs plain ($date)"
	echo
	echo "Machine: $(uname -r), ${cpu:-unknown CPU}, $(nproc) cores. $PIN. Best of $ROUNDS alternating rounds."
	echo "One bench/nbd/serve, 256 MiB memory device, tls = \"on\"; plain nbd:// vs nbds:// (libnbd $(nbdinfo --version 2>/dev/null | sed -n 's/^libnbd //p'), GnuTLS). Negotiated: $cipher."
	echo "nbdcopy --no-extents 256 MiB write (from /dev/shm) then read (to null:); fio --ioengine=nbd --rw=randrw --bs=4k --iodepth=32 --runtime=$RUNTIME --time_based."
	echo
	echo "| client | plain | TLS | TLS / plain |"
	echo "| --- | ---: | ---: | ---: |"
	echo "| nbdcopy read MB/s | ${RMB[plain]} | ${RMB[tls]} | $(ratio "${RMB[tls]}" "${RMB[plain]}") |"
	echo "| nbdcopy write MB/s | ${WMB[plain]} | ${WMB[tls]} | $(ratio "${WMB[tls]}" "${WMB[plain]}") |"
	echo "| fio 4k randrw IOPS | ${IOPS[plain]} | ${IOPS[tls]} | $(ratio "${IOPS[tls]}" "${IOPS[plain]}") |"
	echo "| server CPU s/GB, nbdcopy read | ${RCPU[plain]} | ${RCPU[tls]} | $(ratio "${RCPU[tls]}" "${RCPU[plain]}") |"
	echo "| server CPU s/GB, nbdcopy write | ${WCPU[plain]} | ${WCPU[tls]} | $(ratio "${WCPU[tls]}" "${WCPU[plain]}") |"
	echo "| server CPU s/GB, fio randrw | ${FCPU[plain]} | ${FCPU[tls]} | $(ratio "${FCPU[tls]}" "${FCPU[plain]}") |"
)
echo
echo "$section"
if [ ! -f "$RESULTS" ]; then
	printf '# Benchmark results\n\nAppended by the scripts in bench/. Figures depend on the machine and its load.\n' >"$RESULTS"
fi
printf '\n%s\n' "$section" >>"$RESULTS"
echo
echo "appended to $RESULTS"
