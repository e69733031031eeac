# Helpers for scenario scripts (sourced by /init; scenarios run in a subshell).

# mark KEY VALUE...: a line the host parses.
mark() { echo "THARSIS-MARK $*"; }

# param NAME: value of tharsis.NAME= on the kernel command line.
param() {
	for w in $(cat /proc/cmdline); do
		case "$w" in tharsis.$1=*) echo "${w#*=}"; return 0 ;; esac
	done
	return 1
}

# hoststep NAME: ask the host to run step NAME; returns when it is done.
hoststep() {
	ctl=$(param ctl)
	# busybox nc, not wget: the static wget crashes resolving in a bare initramfs
	printf 'GET /step/%s HTTP/1.0\r\n\r\n' "$1" | nc -w 120 "${ctl%:*}" "${ctl#*:}" > /tmp/hoststep.out 2>&1
	if head -n 1 /tmp/hoststep.out | grep -q ' 200 '; then
		mark step "$1" ok
		return 0
	fi
	mark step "$1" failed "$(tail -n 1 /tmp/hoststep.out)"
	return 1
}

# run CMD...: run a command, print its status as a marker (KEY is the first word).
run() {
	"$@"
	r=$?
	mark rc "$*" = $r
	return $r
}

# aoe_wait DEV...: discover until every /dev/etherd/DEV is up (bounded, ~30 s).
aoe_wait() {
	i=0
	while [ $i -lt 60 ]; do
		aoe-discover
		ok=1
		for d in "$@"; do
			grep -q up "/sys/block/etherd!$d/state" 2>/dev/null || ok=0
			[ -b "/dev/etherd/$d" ] || ok=0
		done
		[ $ok = 1 ] && return 0
		sleep 0.5
		i=$((i+1))
	done
	mark timeout aoe_wait "$@"
	return 1
}

# aoe_stat: print aoe-stat's lines as markers.
aoe_stat() {
	aoe-stat > /tmp/aoe-stat.out 2>&1
	while read -r line; do mark aoe-stat "$line"; done < /tmp/aoe-stat.out
}

# sha FILE [BYTES]: sha256 of FILE (or its first BYTES bytes, read with O_DIRECT).
sha() {
	if [ -n "$2" ]; then
		dd if="$1" bs=1M count=$(($2 / 1048576)) iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1
	else
		sha256sum "$1" | cut -d' ' -f1
	fi
}
