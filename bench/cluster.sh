#!/usr/bin/env bash
# Replication over an emulated WAN link (issue 6, item 11): two tharsis nodes,
# alpha (primary) and beta (secondary), each in its own network namespace,
# joined by veth pairs to a bridge namespace. Each node's veth end gets
#   tc qdisc add dev eth0 root netem delay 25ms rate 1gbit
# so every direction is shaped: 50 ms RTT at 1 Gbit/s. It measures
#   1. catch-up: beta disconnected, 1 GiB written on alpha (fio over NBD,
#      fsync at the end), beta connected: time until beta replayed it all;
#      target >= 90 % of the link rate;
#   2. lag: alpha written steadily at half the link rate (fio --rate, a flush
#      every BENCH_LAG_FSYNC writes) while beta's view is sampled every 100 ms;
#      target: bounded, under 2 s;
#   3. fast full sync: beta joins with a copy of alpha's 1 GiB disk in which
#      1 % of the 1 MiB chunks differ: bytes alpha sent (its veth counter) and
#      bytes view reports transferred; target <= 3 % of 1 GiB.
# Prints a table and appends it to bench/RESULTS.md. It asserts nothing.
#
# BENCH_MATRIX=1 runs, instead of 1-3, the catch-up side by side in one run
# for each transport (plain: cluster secret; tls: mutual TLS 1.3 from
# `tharsis cert`), compression (off, zstd) and workload (text: fio buffers
# BENCH_COMPRESS_PERCENT % compressible; random: fio --refill_buffers),
# with the CPU time (user+sys) of both daemons per MB caught up, the bytes
# on beta's link, ratios to plain and the negotiated TLS cipher.
#
# Needs root, ip, tc, fio (with the nbd engine), go. On a kernel without
# sch_netem (CONFIG_NET_SCH_NETEM) the link is emulated in userspace instead
# (BENCH_SHAPE=wan: `bench/cluster wan` forwards frames between the two veth
# ends with the same delay and rate, in place of the bridge); the table says
# which. BENCH_SHAPE=none shapes nothing (only proves the script works).
#
# Environment:
#   BENCH_CATCHUP_MIB  data written while beta is disconnected (default 1024)
#   BENCH_LAG_SECONDS  length of the steady-write lag run (default 30)
#   BENCH_LAG_FSYNC    fio --fsync during the lag run: a flush every N 64 KiB
#                      writes (default 16: every 1 MiB; 0: none)
#   BENCH_SYNC_MIB     disk size of the full-sync run (default 1024)
#   BENCH_SYNC_PERCENT percentage of differing 1 MiB chunks (default 1)
#   BENCH_DELAY_MS     one-way delay per direction (default 25)
#   BENCH_RATE_MBIT    link rate (default 1000)
#   BENCH_SHAPE        auto (default: netem if the kernel has it, else wan) |
#                      netem | wan | none
#   BENCH_DIR          where images, logs and state live (default /var/tmp)
#   BENCH_RESULTS      file to append to (default bench/RESULTS.md)
#   BENCH_KEEP=1       keep the work dir
#   BENCH_NOTE         a line added under the heading (e.g. "smoke run")
#   BENCH_MATRIX=1     the catch-up matrix only (see above)
#   BENCH_MODES        its modes (default "plain tls zstd tls+zstd")
#   BENCH_WORKLOADS    its workloads (default "text random")
#   BENCH_COMPRESS_PERCENT  fio --buffer_compress_percentage of "text" (default 75)
set -euo pipefail

cd "$(dirname "$0")/.."
CATCHUP_MIB=${BENCH_CATCHUP_MIB:-1024}
LAG_SECONDS=${BENCH_LAG_SECONDS:-30}
LAG_FSYNC=${BENCH_LAG_FSYNC:-16}
SYNC_MIB=${BENCH_SYNC_MIB:-1024}
SYNC_PERCENT=${BENCH_SYNC_PERCENT:-1}
DELAY_MS=${BENCH_DELAY_MS:-25}
MBIT=${BENCH_RATE_MBIT:-1000}
SHAPE=${BENCH_SHAPE:-auto}
BASE=${BENCH_DIR:-/var/tmp}
RESULTS=${BENCH_RESULTS:-bench/RESULTS.md}
LINK_BPS=$((MBIT * 1000000 / 8)) # link rate in bytes/s

[ "$(id -u)" = 0 ] || {
	echo "bench/cluster.sh: needs root (network namespaces, tc)" >&2
	exit 1
}
for tool in go ip tc fio python3; do
	command -v "$tool" >/dev/null || {
		echo "bench/cluster.sh: $tool is missing; install with: apt-get install iproute2 fio python3" >&2
		exit 1
	}
done

ID=tcb$$
NS_BR=$ID-br
WORK=$(mktemp -d "$BASE/tharsis-cluster-bench.XXXXXX")
declare -A PID IP
WAN=
IP[alpha]=10.78.0.1
IP[beta]=10.78.0.2

cleanup() {
	[ -n "$WAN" ] && kill "$WAN" 2>/dev/null || true
	for n in "${!PID[@]}"; do
		[ -n "${PID[$n]}" ] && kill -9 "${PID[$n]}" 2>/dev/null || true
	done
	wait 2>/dev/null || true
	for n in alpha beta br probe; do ip netns del "$ID-$n" 2>/dev/null || true; done
	if [ "${BENCH_KEEP:-}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "building tharsis and the bench helper..."
go build -o "$WORK/tharsis" ./cmd/tharsis
go build -o "$WORK/helper" ./bench/cluster
T=$WORK/tharsis
H=$WORK/helper

# ---- network: a bridge namespace, one namespace per node, shaped veths ----
if [ "$SHAPE" = auto ]; then
	SHAPE=wan
	ip netns add "$ID-probe"
	ip -n "$ID-probe" link add p0 type veth peer name p1
	tc -n "$ID-probe" qdisc add dev p0 root netem delay 1ms 2>/dev/null && SHAPE=netem
	ip netns del "$ID-probe"
fi
ip netns add "$NS_BR"
ip -n "$NS_BR" link add br0 type bridge
ip -n "$NS_BR" link set br0 up
SHAPED="none"
for n in alpha beta; do
	ns=$ID-$n
	ip netns add "$ns"
	ip link add eth0 netns "$ns" type veth peer name "v-$n" netns "$NS_BR"
	if [ "$SHAPE" = wan ]; then
		ip -n "$NS_BR" link set "v-$n" up # joined by the wan relay, not the bridge
	else
		ip -n "$NS_BR" link set "v-$n" master br0 up
	fi
	ip -n "$ns" addr add "${IP[$n]}/24" dev eth0
	ip -n "$ns" link set eth0 up
	ip -n "$ns" link set lo up
	# Let TCP windows grow past the bandwidth-delay product (6.25 MB at
	# 1 Gbit/s x 50 ms); the defaults cap them at 4-6 MiB. Per namespace.
	ip netns exec "$ns" sysctl -qw net.ipv4.tcp_rmem="4096 131072 67108864" net.ipv4.tcp_wmem="4096 16384 67108864"
	case $SHAPE in
	netem)
		if ! tc -n "$ns" qdisc add dev eth0 root netem delay "${DELAY_MS}ms" rate "${MBIT}mbit" limit 1000000 2>"$WORK/tc.err"; then
			echo "bench/cluster.sh: tc netem failed: $(cat "$WORK/tc.err"); use BENCH_SHAPE=wan" >&2
			exit 1
		fi
		SHAPED="tc netem delay ${DELAY_MS}ms rate ${MBIT}mbit on both veth ends"
		;;
	wan)
		SHAPED="userspace relay (bench/cluster wan: no sch_netem in this kernel), delay ${DELAY_MS} ms and ${MBIT} Mbit/s each direction"
		;;
	none)
		SHAPED="NOT SHAPED (veth at full speed, no delay): not the WAN figures"
		;;
	*)
		echo "bench/cluster.sh: BENCH_SHAPE must be auto, netem, wan or none" >&2
		exit 2
		;;
	esac
done
if [ "$SHAPE" = wan ]; then
	ip netns exec "$NS_BR" "$H" wan -a v-alpha -b v-beta -delay "${DELAY_MS}ms" -rate-mbit "$MBIT" >"$WORK/wan.log" 2>&1 &
	WAN=$!
fi
# The round trip as TCP sees it: connect() time from beta to alpha.
ip netns exec "$ID-alpha" python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],9)); s.listen(8); import time; time.sleep(30)' "${IP[alpha]}" &
PROBE=$!
sleep 0.3
RTT_MS=$(ip netns exec "$ID-beta" python3 -c '
import socket,sys,time
best=1e9
for _ in range(5):
    t=time.perf_counter(); s=socket.create_connection((sys.argv[1],9),timeout=5); best=min(best,time.perf_counter()-t); s.close()
print("%.1f" % (best*1000))' "${IP[alpha]}")
kill "$PROBE" 2>/dev/null
wait "$PROBE" 2>/dev/null || true
SHAPED="$SHAPED; measured RTT ${RTT_MS} ms"
echo "link: $SHAPED"

# ---- nodes ----
sock() { echo "$WORK/$1/control.sock"; }

# write_config [tls] [zstd]: the config of alpha and beta; tls: tls_dir
# instead of secret_file (certificates made once with `tharsis cert`);
# zstd: compress = "zstd" on r0.
write_config() {
	local auth='secret_file = "secret"' compress=
	echo "bench secret $ID" >"$WORK/secret"
	if [ "${1:-}" = tls ]; then
		auth='tls_dir = "tls"'
	fi
	[ "${2:-}" = zstd ] && compress='compress = "zstd"'
	cat >"$WORK/tharsis.toml" <<TOML
$auth

[nodes.alpha]
replication = "${IP[alpha]}:7777"
state_dir = "alpha"

[nodes.beta]
replication = "${IP[beta]}:7777"
state_dir = "beta"

[resources.r0]
disk = { alpha = "alpha.img", beta = "beta.img" }
primary = "alpha"
segment_size = "64MiB"
$compress

[[exports.nbd]]
resource = "r0"
listen = "${IP[alpha]}:10809"
name = "r0"
TOML
}

start() {
	local n=$1
	ip netns exec "$ID-$n" "$T" run --config "$WORK/tharsis.toml" --node "$n" >>"$WORK/$n.log" 2>&1 &
	PID[$n]=$!
	for _ in $(seq 400); do
		"$T" view --socket "$(sock "$n")" >/dev/null 2>&1 && return 0
		kill -0 "${PID[$n]}" 2>/dev/null || break
		sleep 0.05
	done
	echo "tharsis run for $n did not come up; its log:" >&2
	cat "$WORK/$n.log" >&2
	exit 1
}

stop_all() {
	for n in alpha beta; do
		[ -n "${PID[$n]:-}" ] && kill "${PID[$n]}" 2>/dev/null && wait "${PID[$n]}" 2>/dev/null || true
		PID[$n]=
	done
}

verb() { "$T" "$1" --socket "$(sock "$2")" r0; }

# bytes NODE tx|rx: the byte counter of the node's veth end.
bytes() { ip netns exec "$ID-$1" cat "/sys/class/net/eth0/statistics/$2_bytes"; }

kv() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$2"; }
calc() { python3 -c "print($1)"; }

fio_nbd() {
	ip netns exec "$ID-alpha" fio --name=w --ioengine=nbd --uri="nbd://${IP[alpha]}:10809/r0" \
		--output-format=terse "$@" >>"$WORK/fio.out"
}

# cpu_ticks: user+sys clock ticks of both daemons so far.
cpu_ticks() {
	local t=0 n
	for n in alpha beta; do
		t=$((t + $(awk '{print $14 + $15}' "/proc/${PID[$n]}/stat")))
	done
	echo "$t"
}

# catchup_run MODE WORKLOAD: one catch-up of CATCHUP_MIB on fresh disks;
# sets RUN_S, RUN_MBS, RUN_WIRE, RUN_CPU (CPU seconds per 100 MB caught up).
catchup_run() {
	local mode=$1 workload=$2 tls= zstd= buf=()
	case $mode in *tls*) tls=tls ;; esac
	case $mode in *zstd*) zstd=zstd ;; esac
	case $workload in
	text) buf=(--buffer_compress_percentage="${BENCH_COMPRESS_PERCENT:-75}" --buffer_compress_chunk=4k --refill_buffers) ;;
	random) buf=(--refill_buffers) ;;
	esac
	rm -rf "$WORK/alpha" "$WORK/beta" "$WORK/alpha.img" "$WORK/beta.img"
	write_config "$tls" "$zstd"
	truncate -s "$(((CATCHUP_MIB + 64) << 20))" "$WORK/alpha.img" "$WORK/beta.img"
	start alpha
	start beta
	verb fake-sync beta >/dev/null 2>&1 || true
	"$H" consistent -secondary "$(sock beta)" -timeout 10m >/dev/null
	verb disconnect beta
	fio_nbd --rw=write --bs=1m --iodepth=8 --size="${CATCHUP_MIB}m" --end_fsync=1 "${buf[@]}"
	local rx0 rx1 c0 c1 out
	rx0=$(bytes beta rx)
	c0=$(cpu_ticks)
	verb connect beta
	out=$("$H" caught-up -primary "$(sock alpha)" -secondary "$(sock beta)" -timeout 30m)
	c1=$(cpu_ticks)
	rx1=$(bytes beta rx)
	RUN_S=$(kv caught_up_seconds "$out")
	RUN_MBS=$(calc "round($CATCHUP_MIB * 1048576 / $RUN_S / 1e6, 1)")
	RUN_WIRE=$((rx1 - rx0))
	RUN_CPU=$(calc "round(($c1 - $c0) / $(getconf CLK_TCK) / ($CATCHUP_MIB * 1048576 / 1e8), 3)")
	if [ -n "$tls" ]; then
		CIPHER=$(sed -n 's/.*peer fetches the log.* cipher=\([^ ]*\).*/\1/p' "$WORK/alpha.log" | tail -1)
	fi
	stop_all
	: >"$WORK/alpha.log"
}

if [ "${BENCH_MATRIX:-}" = 1 ]; then
	mkdir -p "$WORK/tls"
	"$T" cert create-ca --dir "$WORK/tls" >/dev/null
	write_config tls
	for n in alpha beta; do "$T" cert create-node --dir "$WORK/tls" --config "$WORK/tharsis.toml" "$n" >/dev/null; done
	CIPHER=?
	ROWS=
	for workload in ${BENCH_WORKLOADS:-text random}; do
		PLAIN_MBS=
		for mode in ${BENCH_MODES:-plain tls zstd tls+zstd}; do
			echo "== catch-up of ${CATCHUP_MIB} MiB, $workload data, $mode"
			catchup_run "$mode" "$workload"
			[ -z "$PLAIN_MBS" ] && PLAIN_MBS=$RUN_MBS
			RATIO=$(calc "round($RUN_MBS / $PLAIN_MBS, 2)")
			WIRE_PCT=$(calc "round(100 * $RUN_WIRE / ($CATCHUP_MIB * 1048576), 1)")
			echo "   ${RUN_S} s, ${RUN_MBS} MB/s (${RATIO}x of the first mode), wire ${WIRE_PCT} % of the data, CPU ${RUN_CPU} s per 100 MB"
			ROWS+="| $workload | $mode | ${RUN_S} s | ${RUN_MBS} | ${RATIO}× | ${WIRE_PCT} % | ${RUN_CPU} |"$'\n'
		done
	done
	TABLE=$(
		cat <<MD

## Catch-up over a 50 ms / 1 Gbit/s link: plain, TLS, zstd ($(date -u +%Y-%m-%d))
${BENCH_NOTE:+
${BENCH_NOTE}
}
Machine: $(nproc) CPUs, $(uname -r); link: ${SHAPED}; ${CATCHUP_MIB} MiB written by fio over NBD while beta was disconnected, then caught up; images in $BASE; TLS: mutual TLS 1.3, cipher ${CIPHER}; zstd: \`compress = "zstd"\` (per ~1 MiB frame, level fastest); text: fio --buffer_compress_percentage=${BENCH_COMPRESS_PERCENT:-75}; random: --refill_buffers. CPU: user+sys of both daemons (alpha and beta, in the same machine as the relay) per 100 MB of data. Ratio: throughput over the first mode of the workload.

| data | mode | catch-up | MB/s of data | ratio | bytes on beta's link / data | CPU s per 100 MB |
| --- | --- | ---: | ---: | ---: | ---: | ---: |
${ROWS}
MD
	)
	echo "$TABLE"
	echo "$TABLE" >>"$RESULTS"
	echo "appended to $RESULTS"
	exit 0
fi

# ---- 1. catch-up of a secondary that is CATCHUP_MIB behind ----
echo "== 1. catch-up of ${CATCHUP_MIB} MiB"
write_config
truncate -s "$(((CATCHUP_MIB + 64) << 20))" "$WORK/alpha.img" "$WORK/beta.img"
start alpha
start beta
verb fake-sync beta >/dev/null 2>&1 || true # both disks are fresh zeros
"$H" consistent -secondary "$(sock beta)" -timeout 10m >/dev/null
verb disconnect beta
fio_nbd --rw=write --bs=1m --iodepth=8 --size="${CATCHUP_MIB}m" --end_fsync=1
rx0=$(bytes beta rx)
verb connect beta
OUT=$("$H" caught-up -primary "$(sock alpha)" -secondary "$(sock beta)" -timeout 30m)
rx1=$(bytes beta rx)
CU_S=$(kv caught_up_seconds "$OUT")
CU_MBS=$(calc "round($CATCHUP_MIB * 1048576 / $CU_S / 1e6, 1)")
CU_WIRE_MBS=$(calc "round(($rx1 - $rx0) / $CU_S / 1e6, 1)")
CU_PCT=$(calc "round(100 * $CATCHUP_MIB * 1048576 / $CU_S / $LINK_BPS, 1)")
echo "   ${CU_S} s: ${CU_MBS} MB/s of data (${CU_PCT} % of the link), ${CU_WIRE_MBS} MB/s on beta's link"

# ---- 2. lag under steady writes at half the link rate ----
echo "== 2. lag while alpha writes ${LAG_SECONDS} s at half the link rate"
RATE=$((LINK_BPS / 2))
FSYNC=()
[ "$LAG_FSYNC" -gt 0 ] && FSYNC=(--fsync="$LAG_FSYNC")
fio_nbd --rw=write --bs=64k --iodepth=4 --rate="$RATE" --size="${CATCHUP_MIB}m" \
	--time_based --runtime="$((LAG_SECONDS + 3))" "${FSYNC[@]}" &
FIO=$!
sleep 2 # let the stream settle before sampling
OUT=$("$H" lag -secondary "$(sock beta)" -duration "${LAG_SECONDS}s")
wait "$FIO"
LAG_P50=$(kv lag_p50_s "$OUT")
LAG_P99=$(kv lag_p99_s "$OUT")
LAG_MAX=$(kv lag_max_s "$OUT")
LAG_BYTES=$(kv lag_max_bytes "$OUT")
echo "   lag p50 ${LAG_P50} s, p99 ${LAG_P99} s, max ${LAG_MAX} s, max ${LAG_BYTES} bytes behind"
"$H" caught-up -primary "$(sock alpha)" -secondary "$(sock beta)" -timeout 10m >/dev/null
stop_all

# ---- 3. fast full sync with SYNC_PERCENT % differing chunks ----
echo "== 3. fast full sync of ${SYNC_MIB} MiB with ${SYNC_PERCENT} % differing chunks"
rm -rf "$WORK/alpha" "$WORK/beta" "$WORK/alpha.img" "$WORK/beta.img"
OUT=$("$H" disks -size "${SYNC_MIB}MiB" -chunk 1MiB -percent "$SYNC_PERCENT" -a "$WORK/alpha.img" -b "$WORK/beta.img")
DIFF_BYTES=$(kv differing_bytes "$OUT")
start alpha
tx0=$(bytes alpha tx)
start beta
verb join-resource beta >/dev/null 2>&1 || true # a fresh node may join by itself
OUT=$("$H" consistent -secondary "$(sock beta)" -timeout 30m)
tx1=$(bytes alpha tx)
SY_S=$(kv sync_seconds "$OUT")
SY_VIEW=$(kv transferred_bytes "$OUT")
SY_SENT=$((tx1 - tx0))
SY_PCT=$(calc "round(100 * $SY_SENT / ($SYNC_MIB * 1048576), 2)")
SY_VIEW_PCT=$(calc "round(100 * $SY_VIEW / ($SYNC_MIB * 1048576), 2) if $SY_VIEW >= 0 else 'n/a'")
echo "   ${SY_S} s; alpha sent ${SY_SENT} bytes (${SY_PCT} %), view says ${SY_VIEW} transferred (${SY_VIEW_PCT} %), ${DIFF_BYTES} bytes differ"
stop_all

verdict() { python3 -c "print('met' if $1 else 'BELOW TARGET')"; }
TABLE=$(
	cat <<MD

## Replication over a 50 ms / 1 Gbit/s link ($(date -u +%Y-%m-%d))
${BENCH_NOTE:+
${BENCH_NOTE}
}
Machine: $(nproc) CPUs, $(uname -r); link: ${SHAPED}; images, logs and state in $BASE ($(df -T "$BASE" | awk 'NR==2{print $2}')); \`sync = false\`, 1 MiB sync chunks; load: fio over NBD inside alpha's namespace.

| measurement | result | target | |
| --- | ---: | --- | --- |
| catch-up of ${CATCHUP_MIB} MiB written while beta was disconnected | ${CU_S} s, ${CU_MBS} MB/s of data (${CU_WIRE_MBS} MB/s on the wire) = ${CU_PCT} % of the link | ≥ 90 % of the link | $(verdict "$CU_PCT >= 90") |
| lag while alpha writes ${LAG_SECONDS} s at $((RATE / 1000000)) MB/s (fio --fsync=${LAG_FSYNC}, 64 KiB writes) | p50 ${LAG_P50} s, p99 ${LAG_P99} s, max ${LAG_MAX} s (max ${LAG_BYTES} bytes behind) | bounded, < 2 s | $(verdict "$LAG_MAX < 2") |
| fast full sync of ${SYNC_MIB} MiB, ${SYNC_PERCENT} % of 1 MiB chunks differing (${DIFF_BYTES} bytes) | alpha sent ${SY_SENT} bytes = ${SY_PCT} % (view: ${SY_VIEW} bytes transferred), ${SY_S} s | ≤ 3 % | $(verdict "$SY_PCT <= 3") |
MD
)
echo "$TABLE"
echo "$TABLE" >>"$RESULTS"
echo "appended to $RESULTS"
