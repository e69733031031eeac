#!/usr/bin/env bash
# Replication on vs off, side by side: the same `tharsis run` NBD export of a
# file disk without the transaction log (replicated = false: the file device,
# one fdatasync per FLUSH/FUA), with it and `sync = false` (the default: log
# pwrite -> apply -> ack; fdatasync per FLUSH/FUA, so the same promise as
# off), and with it and `sync = true` (log -> fdatasync -> ack on every write),
# driven by the same clients:
#   nbdcopy --flush sequential 256 MiB write
#   fio --ioengine=nbd 4k randwrite qd32, plain and with --fsync=32
#   4k random writes qd32 with FUA on every write (go run ./bench/replicate/fua:
#   fio's nbd engine cannot send FUA, and --sync=1 does nothing for it)
# then the time recovery takes to replay a log (go run ./bench/replicate/replay).
# Prints a table with ratios (on/off) and appends it to bench/RESULTS.md.
# It asserts nothing: it is not a test.
#
# Environment:
#   BENCH_RUNTIME   fio seconds per run (default 20; 3 for a smoke run)
#   BENCH_DIR       where disk images and logs live (default /var/tmp: a real
#                   disk, so fdatasync costs what it costs; /dev/shm hides it)
#   BENCH_REPLAY_MIB  log size for the replay timing (default 1024)
#   BENCH_RESULTS   file to append to (default bench/RESULTS.md)
#   BENCH_PORT      first of three TCP ports on 127.0.0.1 (default 21900)
#   BENCH_MODES     which of off, on, sync to run (default "off on sync")
#   BENCH_PPROF     a directory: save a CPU profile of the daemon during each
#                   fio run there (MODE-rand.pprof, MODE-randfsync.pprof; the
#                   daemon runs with THARSIS_PPROF on 127.0.0.1:PORT+200)
#   BENCH_THARSIS_BIN  a prebuilt tharsis binary (default: go build ./cmd/tharsis)
set -euo pipefail

cd "$(dirname "$0")/.."
RUNTIME=${BENCH_RUNTIME:-20}
RESULTS=${BENCH_RESULTS:-bench/RESULTS.md}
PORT=${BENCH_PORT:-21900}
BASE=${BENCH_DIR:-/var/tmp}
REPLAY_MIB=${BENCH_REPLAY_MIB:-1024}
MODES=${BENCH_MODES:-off on sync}
SIZE=$((256 << 20))

for tool in go nbdcopy nbdinfo fio python3; do
	command -v "$tool" >/dev/null || {
		echo "bench/replicate.sh: $tool is missing; install with: apt-get install libnbd-bin fio python3" >&2
		exit 1
	}
done

WORK=$(mktemp -d "$BASE/tharsis-repl-bench.XXXXXX")
PID=
cleanup() {
	[ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "building tharsis..."
if [ -n "${BENCH_THARSIS_BIN:-}" ]; then
	cp "$BENCH_THARSIS_BIN" "$WORK/tharsis"
else
	go build -o "$WORK/tharsis" ./cmd/tharsis
fi
[ -n "${BENCH_PPROF:-}" ] && mkdir -p "$BENCH_PPROF"
go build -o "$WORK/fua" ./bench/replicate/fua
head -c "$SIZE" /dev/urandom >"$WORK/src.img"

# start MODE(off|on|sync) PORT: run a node exporting r0 without replication
# (off), with it (on: sync = false) or with it and sync = true (sync).
start() {
	local mode=$1 port=$2 repl=true sync=false
	[ "$mode" = off ] && repl=false
	[ "$mode" = sync ] && sync=true
	rm -rf "$WORK/$mode" && mkdir -p "$WORK/$mode"
	truncate -s $((2 * SIZE)) "$WORK/$mode/r0.img"
	cat >"$WORK/$mode/tharsis.toml" <<TOML
[nodes.alpha]
replication = "127.0.0.1:$((port + 100))"
state_dir = "$WORK/$mode/state"

[resources.r0]
disk = { alpha = "$WORK/$mode/r0.img" }
replicated = $repl
sync = $sync

[[exports.nbd]]
resource = "r0"
listen = "127.0.0.1:$port"
name = "r0"
TOML
	THARSIS_PPROF=${BENCH_PPROF:+127.0.0.1:$((port + 200))} \
		"$WORK/tharsis" run --config "$WORK/$mode/tharsis.toml" --node alpha >"$WORK/$mode/daemon.log" 2>&1 &
	PID=$!
	for _ in $(seq 200); do
		nbdinfo --size "nbd://127.0.0.1:$port/r0" >/dev/null 2>&1 && return 0
		sleep 0.05
	done
	echo "tharsis run ($mode) did not come up:" >&2
	cat "$WORK/$mode/daemon.log" >&2
	exit 1
}

stop() {
	kill "$PID" && wait "$PID" 2>/dev/null || true
	PID=
}

# fio_iops PORT LABEL EXTRA...: write IOPS of 4k randwrite qd32 (with
# BENCH_PPROF, a CPU profile of the daemon meanwhile: $mode-LABEL.pprof).
fio_iops() {
	local port=$1 label=$2 prof=
	shift 2
	if [ -n "${BENCH_PPROF:-}" ]; then
		curl -s --retry 20 --retry-connrefused --retry-delay 1 -o "$BENCH_PPROF/$mode-$label.pprof" \
			"http://127.0.0.1:$((port + 200))/debug/pprof/profile?seconds=$((RUNTIME > 2 ? RUNTIME - 1 : 1))" &
		prof=$!
	fi
	fio --name=rw --ioengine=nbd --uri="nbd://127.0.0.1:$port/r0" --rw=randwrite --bs=4k --iodepth=32 \
		--size=$SIZE --runtime="$RUNTIME" --time_based --output-format=json "$@" >"$WORK/fio.json"
	[ -z "$prof" ] || wait "$prof"
	# fio prints a line before the JSON
	python3 -c 'import json,sys; t=open(sys.argv[1]).read(); print("%.0f" % json.loads(t[t.index("{"):])["jobs"][0]["write"]["iops"])' "$WORK/fio.json"
}

# copy_mibs PORT: MiB/s of nbdcopy --flush of 256 MiB.
copy_mibs() {
	local t0 t1
	t0=$(date +%s.%N)
	nbdcopy --flush --no-extents "$WORK/src.img" "nbd://127.0.0.1:$1/r0"
	t1=$(date +%s.%N)
	python3 -c "print('%.0f' % (256 / ($t1 - $t0)))"
}

# fua_iops PORT: write IOPS of 4k random writes qd32, each with FUA.
fua_iops() {
	"$WORK/fua" -addr "127.0.0.1:$1" -name r0 -qd 32 -bs 4096 -seconds "$RUNTIME"
}

declare -A R
for mode in off on sync; do for k in copy rand randfsync fua; do R[$mode,$k]=; done; done
p=$PORT
for mode in $MODES; do
	echo "== replication $mode"
	start "$mode" "$p"
	R[$mode,copy]=$(copy_mibs "$p")
	R[$mode,rand]=$(fio_iops "$p" rand)
	R[$mode,randfsync]=$(fio_iops "$p" randfsync --fsync=32)
	R[$mode,fua]=$(fua_iops "$p")
	echo "   nbdcopy ${R[$mode,copy]} MiB/s, randwrite ${R[$mode,rand]} IOPS, randwrite+fsync=32 ${R[$mode,randfsync]} IOPS, randwrite+FUA ${R[$mode,fua]} IOPS"
	stop
	p=$((p + 1))
done

echo "== replay of a ${REPLAY_MIB} MiB log"
REPLAY=$(go run ./bench/replicate/replay -dir "$WORK" -log-mib "$REPLAY_MIB" | tail -1)
echo "   $REPLAY"
replay_s=$(sed -n 's/.*replay_seconds=\([0-9.]*\).*/\1/p' <<<"$REPLAY")
replay_rate=$(sed -n 's/.*replay_mib_per_s=\([0-9.]*\).*/\1/p' <<<"$REPLAY")

ratio() { python3 -c "print('%.2f' % ($1 / $2) if $2 else 'n/a')" 2>/dev/null || echo n/a; }
TABLE=$(
	cat <<MD

## Replication on vs off ($(date -u +%Y-%m-%d))

Machine: $(nproc) CPUs, $(uname -r), images and log in $BASE ($(df -T "$BASE" | awk 'NR==2{print $2}')); ${RUNTIME}s per fio/FUA run; same \`tharsis run\` NBD export: off = \`replicated = false\`, on = \`replicated = true\` with \`sync = false\` (default), sync = \`replicated = true\` with \`sync = true\`.

| workload | off (file, fdatasync per FLUSH/FUA) | on, sync = false (log, fdatasync per FLUSH/FUA) | on/off (target ≥ 0.8) | on, sync = true (fdatasync before each ack) | sync/off |
| --- | ---: | ---: | ---: | ---: | ---: |
| nbdcopy --flush 256 MiB sequential (MiB/s) | ${R[off,copy]} | ${R[on,copy]} | $(ratio "${R[on,copy]}" "${R[off,copy]}") | ${R[sync,copy]} | $(ratio "${R[sync,copy]}" "${R[off,copy]}") |
| fio 4k randwrite qd32 (IOPS) | ${R[off,rand]} | ${R[on,rand]} | $(ratio "${R[on,rand]}" "${R[off,rand]}") | ${R[sync,rand]} | $(ratio "${R[sync,rand]}" "${R[off,rand]}") |
| fio 4k randwrite qd32 --fsync=32 (IOPS) | ${R[off,randfsync]} | ${R[on,randfsync]} | $(ratio "${R[on,randfsync]}" "${R[off,randfsync]}") | ${R[sync,randfsync]} | $(ratio "${R[sync,randfsync]}" "${R[off,randfsync]}") |
| 4k randwrite qd32, FUA on every write (IOPS) | ${R[off,fua]} | ${R[on,fua]} | $(ratio "${R[on,fua]}" "${R[off,fua]}") | ${R[sync,fua]} | $(ratio "${R[sync,fua]}" "${R[off,fua]}") |

Recovery replay of a ${REPLAY_MIB} MiB log (64 KiB records): ${replay_s} s (${replay_rate} MiB/s).
MD
)
echo "$TABLE"
echo "$TABLE" >>"$RESULTS"
echo "appended to $RESULTS"
