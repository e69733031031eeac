# Shared set-up of the NBD benchmark scripts (bench/nbd.sh, bench/nbdtls.sh,
# bench/sparse.sh), sourced by them:
#   bench_work NAME [BASE]  makes WORK, a fresh directory BASE/tharsis-NAME-bench.*
#                           (BASE: $TMPDIR or /tmp), removed at exit after
#                           the servers whose PIDs the script appends to
#                           PIDS are killed and waited for; a script may
#                           define bench_kill_more to stop others meanwhile;
#   SRV, CLI, PIN           the command prefixes that pin servers to CPU 0 and
#                           clients to CPU 1 when there are two cores (unless
#                           BENCH_NOPIN=1), and a line that says which.

bench_work() {
	WORK=$(mktemp -d "${2:-${TMPDIR:-/tmp}}/tharsis-$1-bench.XXXXXX")
	PIDS=()
	trap bench_cleanup EXIT
	trap 'exit 130' INT TERM
}

bench_cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	if declare -F bench_kill_more >/dev/null; then bench_kill_more; fi
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$WORK"
}

SRV=() CLI=() PIN="not pinned"
if [ "${BENCH_NOPIN:-}" != 1 ] && command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
	SRV=(taskset -c 0) CLI=(taskset -c 1)
	PIN="servers pinned to CPU 0, clients to CPU 1 (taskset)"
fi

# bench_need PACKAGES TOOL...: exit, naming the Debian packages to install,
# when a tool is missing.
bench_need() {
	local pkgs=$1 tool
	shift
	for tool in "$@"; do
		command -v "$tool" >/dev/null || {
			echo "$0: $tool is missing; install with: apt-get install $pkgs" >&2
			exit 1
		}
	done
}

# bench_wait_up URI...: wait (10 s at most) until each NBD URI answers;
# exit naming the first that does not.
bench_wait_up() {
	local uri ok
	for uri in "$@"; do
		ok=
		for _ in $(seq 100); do
			if nbdinfo --size "$uri" >/dev/null 2>&1; then ok=1; break; fi
			sleep 0.1
		done
		[ -n "$ok" ] || { echo "$0: no NBD server came up at $uri" >&2; exit 1; }
	done
}
