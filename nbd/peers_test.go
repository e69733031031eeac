package nbd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tharsis/tharsis/blockdev"
)

// Tests in this file run real NBD clients (libnbd's nbdinfo and nbdcopy,
// qemu-img, qemu-io, fio) against a Server on 127.0.0.1. A missing tool
// skips the test, or fails it when THARSIS_REQUIRE_PEERS=1.

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			msg := fmt.Sprintf("%s is not installed; install it with: apt-get install libnbd-bin qemu-utils fio", tool)
			if os.Getenv("THARSIS_REQUIRE_PEERS") == "1" {
				t.Fatal(msg + " (THARSIS_REQUIRE_PEERS=1 forbids skipping)")
			}
			t.Skip(msg)
		}
	}
}

// serveTCP serves exports on 127.0.0.1 and returns "host:port".
func serveTCP(t *testing.T, exports ...Export) string {
	t.Helper()
	return serveTCPWith(t, newServer(), "127.0.0.1:0", exports...)
}

// serveTCPWith serves exports with srv on addr and returns "host:port".
func serveTCPWith(t *testing.T, srv *Server, addr string, exports ...Export) string {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv.SetExports(exports)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-errc; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return l.Addr().String()
}

// run runs a command with a deadline and returns its combined output.
func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = t.TempDir() // fio leaves verify state files in its working directory
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := run(t, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func randomFile(t *testing.T, size int) (path string, sum [32]byte) {
	t.Helper()
	b := make([]byte, size)
	rand.Read(b)
	path = filepath.Join(t.TempDir(), "random.img")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, sha256.Sum256(b)
}

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func fileDevice(t *testing.T, size int64) *blockdev.File {
	t.Helper()
	f, err := blockdev.CreateFile(filepath.Join(t.TempDir(), "disk.img"), size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

type nbdinfoExport struct {
	Name         string `json:"export-name"`
	Description  string `json:"description"`
	Size         int64  `json:"export-size"`
	ReadOnly     bool   `json:"is_read_only"`
	CanFlush     bool   `json:"can_flush"`
	CanFUA       bool   `json:"can_fua"`
	CanTrim      bool   `json:"can_trim"`
	CanZero      bool   `json:"can_zero"`
	CanMultiConn bool   `json:"can_multi_conn"`
	BlockMin     int64  `json:"block_size_minimum"`
	BlockPref    int64  `json:"block_size_preferred"`
	BlockMax     int64  `json:"block_size_maximum"`
}

type nbdinfoOutput struct {
	Protocol   string          `json:"protocol"`
	Structured bool            `json:"structured"`
	Exports    []nbdinfoExport `json:"exports"`
}

func nbdinfo(t *testing.T, args ...string) nbdinfoOutput {
	t.Helper()
	out := mustRun(t, "nbdinfo", append([]string{"--json"}, args...)...)
	var v nbdinfoOutput
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("nbdinfo output: %v\n%s", err, out)
	}
	return v
}

func TestPeerNbdinfo(t *testing.T) {
	needTools(t, "nbdinfo")
	addr := serveTCP(t,
		Export{Name: "rw", Description: "scratch disk", Device: blockdev.NewMemory(64 << 20)},
		Export{Name: "ro", Device: blockdev.NewMemory(16 << 20), ReadOnly: true},
		Export{Name: "file", Device: fileDevice(t, 8<<20)})

	for _, tc := range []struct {
		name string
		want nbdinfoExport
	}{
		{"rw", nbdinfoExport{Name: "rw", Description: "scratch disk", Size: 64 << 20, CanFlush: true, CanFUA: true,
			CanTrim: true, CanZero: true, CanMultiConn: true, BlockMin: 1, BlockPref: 4096, BlockMax: DefaultMaxPayload}},
		{"ro", nbdinfoExport{Name: "ro", Size: 16 << 20, ReadOnly: true, CanFlush: true, CanMultiConn: true,
			BlockMin: 1, BlockPref: 4096, BlockMax: DefaultMaxPayload}},
	} {
		v := nbdinfo(t, "nbd://"+addr+"/"+tc.name)
		if !v.Structured || v.Protocol != "newstyle-fixed" {
			t.Errorf("%s: protocol %q structured %v, want newstyle-fixed with structured replies", tc.name, v.Protocol, v.Structured)
		}
		if len(v.Exports) != 1 || v.Exports[0] != tc.want {
			t.Errorf("%s: nbdinfo says\n%+v\nwant\n%+v", tc.name, v.Exports, tc.want)
		}
	}

	v := nbdinfo(t, "--list", "nbd://"+addr)
	var names []string
	for _, e := range v.Exports {
		names = append(names, e.Name)
	}
	if strings.Join(names, ",") != "rw,ro,file" {
		t.Errorf("nbdinfo --list shows %q, want rw, ro, file", names)
	}
}

func TestPeerNbdcopyRoundTrip(t *testing.T) {
	needTools(t, "nbdcopy")
	const size = 32 << 20
	addr := serveTCP(t,
		Export{Name: "mem", Device: blockdev.NewMemory(size)},
		Export{Name: "file", Device: fileDevice(t, size)})
	for _, name := range []string{"mem", "file"} {
		src, sum := randomFile(t, size)
		uri := "nbd://" + addr + "/" + name
		mustRun(t, "nbdcopy", "--no-extents", src, uri)
		dst := filepath.Join(t.TempDir(), "back.img")
		mustRun(t, "nbdcopy", "--no-extents", uri, dst)
		if fileSum(t, dst) != sum {
			t.Fatalf("%s: data read back by nbdcopy differs from what it wrote", name)
		}
	}
}

func TestPeerQemuImg(t *testing.T) {
	needTools(t, "qemu-img")
	const size = 16 << 20
	addr := serveTCP(t, Export{Name: "d", Device: fileDevice(t, size)})
	uri := "nbd://" + addr + "/d"
	src, sum := randomFile(t, size)
	mustRun(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, uri)
	out := mustRun(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri)
	if !strings.Contains(out, "identical") {
		t.Fatalf("qemu-img compare: %s", out)
	}
	dst := filepath.Join(t.TempDir(), "back.img")
	mustRun(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", uri, dst)
	if fileSum(t, dst) != sum {
		t.Fatal("qemu-img convert from the export returned different data")
	}
	// A changed byte is noticed: compare must fail.
	b, _ := os.ReadFile(src)
	b[size/2] ^= 0xff
	os.WriteFile(src, b, 0o600)
	if out, err := run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri); err == nil {
		t.Fatalf("qemu-img compare found no difference after a change: %s", out)
	}
}

func TestPeerFioVerify(t *testing.T) {
	needTools(t, "fio")
	if out, _ := run(t, "fio", "--enghelp=nbd"); !strings.Contains(out, "uri") {
		needTools(t, "fio-with-nbd-engine")
	}
	addr := serveTCP(t,
		Export{Name: "mem", Device: blockdev.NewMemory(32 << 20)},
		Export{Name: "file", Device: fileDevice(t, 32<<20)})
	for _, name := range []string{"mem", "file"} {
		out := mustRun(t, "fio", "--name=verify", "--ioengine=nbd", "--uri=nbd://"+addr+"/"+name,
			"--rw=randwrite", "--bs=4k", "--size=16M", "--iodepth=16", "--verify=crc32c",
			"--do_verify=1", "--verify_fatal=1")
		if !strings.Contains(out, "err= 0") || strings.Contains(out, "verify: bad") {
			t.Fatalf("%s: fio reported errors:\n%s", name, out)
		}
	}
}

func TestPeerReadOnlyRefusesWrites(t *testing.T) {
	needTools(t, "nbdcopy", "qemu-io")
	const size = 4 << 20
	dev := blockdev.NewMemory(size)
	orig := pattern(size, 42)
	dev.WriteAt(orig, 0)
	addr := serveTCP(t, Export{Name: "ro", Device: dev, ReadOnly: true})
	uri := "nbd://" + addr + "/ro"

	src, _ := randomFile(t, size)
	if out, err := run(t, "nbdcopy", "--no-extents", src, uri); err == nil {
		t.Errorf("nbdcopy wrote to a read-only export:\n%s", out)
	}
	out, err := run(t, "qemu-io", "-f", "raw", "-c", "write -P 0xab 0 64k", uri)
	if err == nil && !strings.Contains(strings.ToLower(out), "read-only") && !strings.Contains(out, "failed") {
		t.Errorf("qemu-io write to a read-only export did not fail:\n%s", out)
	}
	dst := filepath.Join(t.TempDir(), "back.img")
	mustRun(t, "nbdcopy", "--no-extents", uri, dst)
	if fileSum(t, dst) != sha256.Sum256(orig) {
		t.Fatal("read-only export's data changed")
	}
}

// TestPeerExportNameTCP is an old-style client over a real TCP socket: it
// enters transmission with NBD_OPT_EXPORT_NAME (no NO_ZEROES, so the 124
// zero bytes must come) and uses simple replies.
func TestPeerExportNameTCP(t *testing.T) {
	addr := serveTCP(t, Export{Name: "old", Device: blockdev.NewMemory(1 << 20)})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	k := &client{t: t, c: c, br: bufio.NewReader(c), reads: map[uint64]uint32{}}
	k.greet(flagCFixedNewstyle)
	k.sendOpt(optExportName, []byte("old"))
	b := k.readN(8 + 2 + 124)
	if got := b[0:8]; !bytes.Equal(got, []byte{0, 0, 0, 0, 0, 0x10, 0, 0}) {
		t.Fatalf("size % x", got)
	}
	data := pattern(65536, 1)
	if r := k.do(cmdWrite, cmdFlagFUA, 1, 65536, 65536, data); r.errno != 0 {
		t.Fatalf("write: %v", r)
	}
	if r := k.do(cmdRead, 0, 2, 65536, 65536, nil); r.errno != 0 || !bytes.Equal(r.data, data) {
		t.Fatalf("read: %v", r)
	}
	if r := k.do(cmdRead, 0, 3, 1<<20, 512, nil); r.errno != errInval {
		t.Fatalf("read past end: %v", r)
	}
	k.send(cmdDisc, 0, 4, 0, 0, nil)
	k.expectClosed()
}

// TestPeerStructuredTCP reads through structured replies over TCP with
// many requests in flight, as nbdcopy does.
func TestPeerStructuredTCP(t *testing.T) {
	dev := blockdev.NewMemory(8 << 20)
	want := pattern(8<<20, 7)
	dev.WriteAt(want, 0)
	addr := serveTCP(t, Export{Name: "s", Device: dev})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	k := &client{t: t, c: c, br: bufio.NewReader(c), reads: map[uint64]uint32{}}
	k.open("s", true)
	const n, bs = 128, 64 << 10
	go func() {
		var b []byte
		for i := range n {
			r := request{typ: cmdRead, handle: uint64(i), offset: uint64(i * bs), length: bs}
			b = r.appendBinary(b)
		}
		c.Write(b) // one burst: the replies come back concurrently
	}()
	got := make([]byte, n*bs)
	seen := map[uint64]bool{}
	for range n {
		r := k.recv()
		if r.errno != 0 || len(r.data) != bs || seen[r.handle] || r.handle >= n {
			t.Fatalf("reply %v", r)
		}
		seen[r.handle] = true
		copy(got[r.handle*bs:], r.data)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("structured reads returned wrong data")
	}
}
