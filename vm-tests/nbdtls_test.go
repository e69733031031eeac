//go:build vm

package vmtests

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/tharsis/tharsis/replicate"
)

// TestNBDTLS: the guest's nbd-client connects to an export with
// tls = "require" and tls_verify_client over TLS with a client certificate
// (it negotiates TLS and then proxies between the kernel and the TLS
// connection), a filesystem round trip through /dev/nbd0; a plain
// nbd-client is refused.
func TestNBDTLS(t *testing.T) {
	if kind == KindReference {
		t.Skip("the reference target (nbd-server) is not set up for TLS")
	}
	var clientFiles map[string][]byte
	sc := newScenario(t, 1500, func(s *Setup) {
		s.Resources = []Resource{{Name: "r0", Size: 64 * mib}}
		s.NBD = []NBDExport{{Resource: "r0", Name: "r0", Port: nbdPort, TLS: "require", VerifyClient: true}}
		s.TLSDir = filepath.Join(s.Dir, "tls")
		clientFiles = makeTLS(t, s.TLSDir, s.Tap.HostIP)
	})
	files := map[string][]byte{"data/f1": randBytes(7, mib), "data/f2": randBytes(8, 2*mib+99)}
	for k, v := range clientFiles {
		files[k] = v
	}
	sc.start()
	host := sc.s.Tap.HostIP
	r := sc.boot(fmt.Sprintf(`
nbd-client -N r0 %[1]s %[2]d /dev/nbd1 >/dev/null 2>&1; mark plain "exit $?"
run nbd-client -N r0 %[1]s %[2]d /dev/nbd0 -cacertfile /data/ca-cert.pem -certfile /data/client-cert.pem -keyfile /data/client-key.pem || exit 1
mark nbd-size $(blockdev --getsize64 /dev/nbd0)
run mkfs.ext4 -F -q /dev/nbd0 || exit 1
mkdir -p /mnt/a
run mount -t ext4 /dev/nbd0 /mnt/a || exit 1
cp /data/f1 /data/f2 /mnt/a/ && sync
run umount /mnt/a || exit 1
echo 3 > /proc/sys/vm/drop_caches
run mount -t ext4 -o ro /dev/nbd0 /mnt/a || exit 1
mark f1-reread $(sha /mnt/a/f1)
mark f2-reread $(sha /mnt/a/f2)
run umount /mnt/a || exit 1
run nbd-client -d /dev/nbd0 || exit 1
`, host, nbdPort), files)
	sc.proof(r, "rc", "plain", "nbd-size", "f1-reread", "f2-reread")
	if got := r.Values("plain"); len(got) != 1 || got[0] == "exit 0" {
		sc.fatalf("a plain nbd-client against tls = \"require\": %q, want a failure", got)
	}
	sc.want(r, "nbd-size", strconv.Itoa(64*mib))
	sc.want(r, "f1-reread", shaHex(files["data/f1"]))
	sc.want(r, "f2-reread", shaHex(files["data/f2"]))
	sc.stop()
	sc.checkFS("r0", map[string][]byte{"/f1": files["data/f1"], "/f2": files["data/f2"]})
}

// makeTLS writes a cluster CA and node "host"'s certificate for ip into
// dir (a tls_dir) and returns a client's files for the guest.
func makeTLS(t *testing.T, dir, ip string) map[string][]byte {
	t.Helper()
	now := time.Now()
	ca, caPEM, _, err := replicate.NewCA("vm-tests CA", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	crt, key, err := replicate.NewNodeCert(ca, "host", []string{ip}, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ccrt, ckey, err := replicate.NewClientCert(ca, "guest", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{replicate.CACertFile: caPEM, replicate.NodeCertFile("host"): crt, replicate.NodeKeyFile("host"): key} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return map[string][]byte{"data/ca-cert.pem": caPEM, "data/client-cert.pem": ccrt, "data/client-key.pem": ckey}
}
