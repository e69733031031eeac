//go:build vm

package vmtests

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
)

const (
	mib     = 1 << 20
	nbdPort = 10809
)

// TestAoE: discovery, aoe-stat of two slots, a filesystem round trip on
// e1.1 (replicated resource) and raw reads and writes on e1.2
// (replicated = false), all checked by the host through the resource files.
func TestAoE(t *testing.T) {
	sc := newScenario(t, 1500, func(s *Setup) {
		s.Resources = []Resource{{Name: "r0", Size: 64 * mib}, {Name: "r1", Size: 32 * mib, Replicated: ptr(false)}}
		s.AoE = []AoEExport{{Resource: "r0", Shelf: 1, Slot: 1}, {Resource: "r1", Shelf: 1, Slot: 2}}
	})
	hostData := randBytes(1, 4*mib)
	sc.writeResource("r1", 0, hostData)
	files := map[string][]byte{"data/f1": randBytes(2, mib), "data/f2": randBytes(3, 3*mib+123), "data/raw": randBytes(4, 2*mib)}
	sc.start()
	r := sc.boot(`
aoe_wait e1.1 e1.2 || exit 1
aoe_stat
mark e1.2-read $(sha /dev/etherd/e1.2 4194304)
run mkfs.ext4 -F -q /dev/etherd/e1.1 || exit 1
mkdir -p /mnt/a
run mount -t ext4 /dev/etherd/e1.1 /mnt/a || exit 1
cp /data/f1 /data/f2 /mnt/a/ && sync
run umount /mnt/a || exit 1
run mount -t ext4 -o ro /dev/etherd/e1.1 /mnt/a || exit 1
mark f1-reread $(sha /mnt/a/f1)
mark f2-reread $(sha /mnt/a/f2)
run umount /mnt/a || exit 1
run dd if=/data/raw of=/dev/etherd/e1.2 bs=1M seek=8 oflag=direct conv=fsync || exit 1
`, files)
	sc.proof(r, "aoe-stat", "rc", "e1.2-read", "f1-reread", "f2-reread")
	sc.wantAoEStat(r, "e1.1", 64*mib, 1024)
	sc.wantAoEStat(r, "e1.2", 32*mib, 1024)
	sc.want(r, "e1.2-read", shaHex(hostData))
	sc.want(r, "f1-reread", shaHex(files["data/f1"]))
	sc.want(r, "f2-reread", shaHex(files["data/f2"]))
	sc.stop()
	sc.checkFS("r0", map[string][]byte{"/f1": files["data/f1"], "/f2": files["data/f2"]})
	if got := sc.readResource("r1", 8*mib, 2*mib); shaHex(got) != shaHex(files["data/raw"]) {
		sc.fatalf("r1 at 8 MiB on the host: sha256 %s, want %s", shaHex(got), shaHex(files["data/raw"]))
	}
	if got := sc.readResource("r1", 0, 4*mib); shaHex(got) != shaHex(hostData) {
		sc.fatalf("r1 at 0 changed on the host")
	}
}

// TestNBD: nbd-client connects by export name, a filesystem round trip,
// then nbd-client -d disconnects.
func TestNBD(t *testing.T) {
	sc := newScenario(t, 1500, func(s *Setup) {
		s.Resources = []Resource{{Name: "r0", Size: 64 * mib}}
		s.NBD = []NBDExport{{Resource: "r0", Name: "r0", Port: nbdPort}}
	})
	files := map[string][]byte{"data/f1": randBytes(5, mib), "data/f2": randBytes(6, 3*mib+77)}
	sc.start()
	r := sc.boot(fmt.Sprintf(`
run nbd-client -N r0 %s %d /dev/nbd0 || exit 1
mark nbd-size $(blockdev --getsize64 /dev/nbd0)
run mkfs.ext4 -F -q /dev/nbd0 || exit 1
mkdir -p /mnt/a
run mount -t ext4 /dev/nbd0 /mnt/a || exit 1
cp /data/f1 /data/f2 /mnt/a/ && sync
run umount /mnt/a || exit 1
run mount -t ext4 -o ro /dev/nbd0 /mnt/a || exit 1
mark f1-reread $(sha /mnt/a/f1)
mark f2-reread $(sha /mnt/a/f2)
run umount /mnt/a || exit 1
run nbd-client -d /dev/nbd0 || exit 1
i=0; while [ -e /sys/block/nbd0/pid ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
mark nbd-size-after-disconnect $(blockdev --getsize64 /dev/nbd0)
`, sc.s.Tap.HostIP, nbdPort), files)
	sc.proof(r, "rc", "nbd-size", "f1-reread", "f2-reread", "nbd-size-after-disconnect")
	sc.want(r, "rc", fmt.Sprintf("nbd-client -N r0 %s %d /dev/nbd0 = 0", sc.s.Tap.HostIP, nbdPort))
	sc.want(r, "nbd-size", strconv.Itoa(64*mib))
	sc.want(r, "f1-reread", shaHex(files["data/f1"]))
	sc.want(r, "f2-reread", shaHex(files["data/f2"]))
	sc.want(r, "rc", "nbd-client -d /dev/nbd0 = 0")
	sc.want(r, "nbd-size-after-disconnect", "0")
	sc.stop()
	sc.checkFS("r0", map[string][]byte{"/f1": files["data/f1"], "/f2": files["data/f2"]})
}

// TestReadOnly: writes through read-only AoE and NBD exports fail in the
// guest and leave the data unchanged.
func TestReadOnly(t *testing.T) {
	sc := newScenario(t, 1500, func(s *Setup) {
		s.Resources = []Resource{{Name: "r0", Size: 32 * mib}, {Name: "r1", Size: 32 * mib}}
		s.AoE = []AoEExport{{Resource: "r0", Shelf: 1, Slot: 1, ReadOnly: true}}
		s.NBD = []NBDExport{{Resource: "r1", Name: "r1", Port: nbdPort, ReadOnly: true}}
	})
	d0, d1 := randBytes(7, 4*mib), randBytes(8, 4*mib)
	sc.writeResource("r0", 0, d0)
	sc.writeResource("r1", 0, d1)
	sc.start()
	r := sc.boot(fmt.Sprintf(`
aoe_wait e1.1 || exit 1
aoe_stat
mark aoe-read $(sha /dev/etherd/e1.1 4194304)
dd if=/data/junk of=/dev/etherd/e1.1 bs=1M count=1 oflag=direct conv=fsync
mark aoe-write-rc $?
mark aoe-reread $(sha /dev/etherd/e1.1 4194304)
run nbd-client -N r1 %s %d /dev/nbd0 || exit 1
mark nbd-ro $(blockdev --getro /dev/nbd0)
mark nbd-read $(sha /dev/nbd0 4194304)
dd if=/data/junk of=/dev/nbd0 bs=1M count=1 oflag=direct conv=fsync
mark nbd-write-rc $?
mark nbd-reread $(sha /dev/nbd0 4194304)
run nbd-client -d /dev/nbd0
`, sc.s.Tap.HostIP, nbdPort), map[string][]byte{"data/junk": randBytes(9, mib)})
	sc.proof(r, "aoe-stat", "aoe-read", "aoe-write-rc", "aoe-reread", "nbd-ro", "nbd-read", "nbd-write-rc", "nbd-reread")
	for _, k := range []string{"aoe-write-rc", "nbd-write-rc"} {
		if v, _ := r.Value(k); v == "0" || v == "" {
			sc.fatalf("%s = %q: the write through a read-only export succeeded", k, v)
		}
	}
	sc.want(r, "aoe-read", shaHex(d0))
	sc.want(r, "aoe-reread", shaHex(d0))
	sc.want(r, "nbd-read", shaHex(d1))
	sc.want(r, "nbd-reread", shaHex(d1))
	sc.stop()
	if shaHex(sc.readResource("r0", 0, 4*mib)) != shaHex(d0) || shaHex(sc.readResource("r1", 0, 4*mib)) != shaHex(d1) {
		sc.fatalf("read-only resource changed on the host")
	}
}

// TestACL: allow_macs naming the guest's MAC lets it see e2.1; a list
// without it hides e2.2.
func TestACL(t *testing.T) {
	sc := newScenario(t, 1500, func(s *Setup) {
		s.Resources = []Resource{{Name: "r0", Size: 32 * mib}, {Name: "r1", Size: 32 * mib}}
		s.AoE = []AoEExport{
			{Resource: "r0", Shelf: 2, Slot: 1, AllowMACs: []string{guestMAC}},
			{Resource: "r1", Shelf: 2, Slot: 2, AllowMACs: []string{"02:00:00:00:00:01"}},
		}
	})
	sc.start()
	r := sc.boot(`
aoe_wait e2.1 || exit 1
# e2.1 answered; give e2.2 three more discover rounds to answer too
for i in 1 2 3 4 5 6; do aoe-discover; sleep 0.5; done
aoe_stat
if [ -e "/sys/block/etherd!e2.2" ]; then mark e2.2-seen yes; else mark e2.2-seen no; fi
mark e2.1-read $(sha /dev/etherd/e2.1 1048576)
`, nil)
	sc.proof(r, "aoe-stat", "e2.2-seen", "e2.1-read")
	sc.wantAoEStat(r, "e2.1", 32*mib, 1024)
	sc.want(r, "e2.2-seen", "no")
	for _, v := range r.Values("aoe-stat") {
		if strings.HasPrefix(strings.TrimSpace(v), "e2.2") {
			sc.fatalf("aoe-stat lists e2.2 although its allow_macs excludes the guest: %q", v)
		}
	}
	sc.want(r, "e2.1-read", shaHex(make([]byte, mib)))
}

// TestJumbo: MTU 9000 on tap and guest gives 8704-byte payloads, and data
// round-trips through them.
func TestJumbo(t *testing.T) {
	sc := newScenario(t, 9000, func(s *Setup) {
		s.Resources = []Resource{{Name: "r0", Size: 64 * mib}}
		s.AoE = []AoEExport{{Resource: "r0", Shelf: 1, Slot: 1}}
	})
	data := randBytes(10, 8*mib)
	sc.start()
	r := sc.boot(`
aoe_wait e1.1 || exit 1
aoe_stat
run dd if=/data/d of=/dev/etherd/e1.1 bs=1M seek=16 oflag=direct conv=fsync || exit 1
mark reread $(dd if=/dev/etherd/e1.1 bs=1M skip=16 count=8 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
`, map[string][]byte{"data/d": data})
	sc.proof(r, "net", "aoe-stat", "reread")
	sc.want(r, "net", fmt.Sprintf("mac=%s mtu=9000 ip=%s/24", guestMAC, sc.s.Tap.GuestIP))
	sc.wantAoEStat(r, "e1.1", 64*mib, 8704)
	sc.want(r, "reread", shaHex(data))
	sc.stop()
	if shaHex(sc.readResource("r0", 16*mib, 8*mib)) != shaHex(data) {
		sc.fatalf("host reads different bytes at 16 MiB than the guest wrote")
	}
}

// TestRestart: the target restarts while the guest holds e1.1 open with a
// write in flight; the driver retries, the write completes, nothing is lost.
func TestRestart(t *testing.T) {
	sc := newScenario(t, 1500, func(s *Setup) {
		s.Resources = []Resource{{Name: "r0", Size: 32 * mib}}
		s.AoE = []AoEExport{{Resource: "r0", Shelf: 1, Slot: 1}}
	})
	p1, p2 := randBytes(11, 4*mib), randBytes(12, 4*mib)
	sc.start()
	sc.ctl.Handle("stop", func(ctx context.Context) error { return sc.target.Stop() })
	sc.ctl.Handle("start", func(ctx context.Context) error { return sc.target.Start(ctx) })
	r := sc.boot(`
aoe_wait e1.1 || exit 1
exec 3<>/dev/etherd/e1.1
run dd if=/data/p1 of=/dev/etherd/e1.1 bs=1M oflag=direct conv=fsync || exit 1
hoststep stop || exit 1
dd if=/data/p2 of=/dev/etherd/e1.1 bs=1M seek=4 oflag=direct conv=fsync &
pid=$!
i=0
while [ $i -lt 100 ]; do
	set -- $(cat "/sys/block/etherd!e1.1/inflight")
	[ "$2" -gt 0 ] && break
	sleep 0.1; i=$((i+1))
done
mark inflight-while-down "$(cat "/sys/block/etherd!e1.1/inflight")"
hoststep start || exit 1
wait $pid
mark dd-across-restart-rc $?
mark state "$(cat "/sys/block/etherd!e1.1/state")"
mark reread $(sha /dev/etherd/e1.1 8388608)
exec 3<&-
`, map[string][]byte{"data/p1": p1, "data/p2": p2})
	sc.proof(r, "rc", "step", "inflight-while-down", "dd-across-restart-rc", "state", "reread")
	if f := strings.Fields(firstValue(r, "inflight-while-down")); len(f) != 2 || f[1] == "0" {
		sc.fatalf("no write was in flight while the target was down: inflight %q", f)
	}
	sc.want(r, "dd-across-restart-rc", "0")
	want := shaHex(append(append([]byte(nil), p1...), p2...))
	sc.want(r, "reread", want)
	sc.stop()
	if got := shaHex(sc.readResource("r0", 0, 8*mib)); got != want {
		sc.fatalf("host reads sha256 %s in the first 8 MiB, want %s", got, want)
	}
}

func firstValue(r *Result, key string) string {
	v, _ := r.Value(key)
	return v
}
