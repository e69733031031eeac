# Shared by bench/aoe.sh and bench/aoe-profile.sh (sourced, not run).
#
# aoe_setup BASE PREFIX: a work directory under BASE (removed at exit) and
# the names of two network namespaces and a veth pair unique to this
# shell ($NS_T/$IF_T for the target, $NS_I/$IF_I for the initiator,
# deleted at exit with the target process $TPID if one runs).
aoe_setup() {
	WORK=$(mktemp -d "$1/tharsis-aoe-$2.XXXXXX")
	local id=$$
	NS_T=aoe${2}t-$id NS_I=aoe${2}i-$id IF_T=a${2}t$id IF_I=a${2}i$id
	TPID=""
	trap aoe_cleanup EXIT
	trap 'exit 130' INT TERM
}

aoe_cleanup() {
	[ -n "$TPID" ] && kill "$TPID" 2>/dev/null && wait "$TPID" 2>/dev/null || true
	ip netns del "$NS_T" 2>/dev/null || true
	ip netns del "$NS_I" 2>/dev/null || true
	rm -rf "$WORK"
}

# aoe_veth: the two namespaces joined by the veth pair, both ends up.
aoe_veth() {
	ip netns add "$NS_T"
	ip netns add "$NS_I"
	ip link add "$IF_T" netns "$NS_T" type veth peer name "$IF_I" netns "$NS_I"
	ip -n "$NS_T" link set "$IF_T" up
	ip -n "$NS_I" link set "$IF_I" up
}

# cputicks PID: the process's utime+stime in clock ticks.
cputicks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
