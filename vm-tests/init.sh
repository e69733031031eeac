#!/bin/sh
# /init of the tharsis test guest: modules, eth0, /scenario.sh, poweroff.
export PATH=/usr/sbin:/sbin:/usr/bin:/bin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
export HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
. /lib/tharsis.sh

mark boot kernel=$(uname -r)
while read -r mod args; do
	# shellcheck disable=SC2086
	insmod /lib/modules/$mod.ko $args || mark modfail $mod
done < /lib/modules/order

i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
ip link set lo up
mtu=$(param mtu)
[ -n "$mtu" ] && ip link set eth0 mtu "$mtu"
ip addr add "$(param ip)" dev eth0
ip link set eth0 up
mark net mac=$(cat /sys/class/net/eth0/address) mtu=$(cat /sys/class/net/eth0/mtu) ip=$(param ip)

rc=1
if [ -f /scenario.sh ]; then
	( . /scenario.sh )
	rc=$?
else
	mark error no /scenario.sh in the initramfs
fi
sync
mark done rc=$rc
poweroff -f
