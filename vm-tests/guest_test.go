package vmtests

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tharsis/tharsis/config"
	"github.com/tharsis/tharsis/internal/testutil"
)

// TestWriteCpio checks the archive with GNU cpio: every member, its type
// and content come back.
func TestWriteCpio(t *testing.T) {
	cpio := testutil.NeedTool(t, "cpio")
	var buf bytes.Buffer
	err := WriteCpio(&buf, []Entry{
		{Path: "/init", Mode: 0o755, Data: []byte("#!/bin/sh\necho hi\n")},
		{Path: "bin/sh", Link: "busybox"},
		{Path: "dev/console", Mode: 0o600, Char: true, Dev: [2]uint32{5, 1}},
		{Path: "a/b/c/odd", Mode: 0o644, Data: []byte("12345")}, // parents added, odd sizes padded
	})
	if err != nil {
		t.Fatal(err)
	}
	if buf.Len()%4 != 0 {
		t.Fatalf("archive length %d is not 4-byte aligned: a second archive appended to it would not unpack", buf.Len())
	}
	cmd := exec.Command(cpio, "-itv", "--quiet")
	cmd.Stdin = bytes.NewReader(buf.Bytes())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -it: %v\n%s", err, out)
	}
	for _, want := range []string{"-rwxr-xr-x", " init", "lrwxrwxrwx", "bin/sh -> busybox", "crw-------", "5,", "dev/console", "drwxr-xr-x", "a/b/c\n", "a/b/c/odd"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("cpio -itv output lacks %q:\n%s", want, out)
		}
	}
	dir := t.TempDir()
	cmd = exec.Command(cpio, "-id", "--quiet", "--no-absolute-filenames")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(buf.Bytes())
	if out, err := cmd.CombinedOutput(); err != nil && !strings.Contains(string(out), "dev/console") {
		t.Fatalf("cpio -id: %v\n%s", err, out) // creating the device node may fail unprivileged
	}
	if got, err := os.ReadFile(filepath.Join(dir, "a/b/c/odd")); err != nil || string(got) != "12345" {
		t.Fatalf("a/b/c/odd = %q, %v", got, err)
	}
}

// TestModuleOrder checks that every module loads after the modules it
// depends on, using this machine's kernel.
func TestModuleOrder(t *testing.T) {
	kver, _, err := findKernel()
	if err != nil {
		testutil.Unavailable(t, err.Error())
	}
	order, err := moduleOrder(kver)
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, m := range order {
		pos[m.name] = i
	}
	for _, pair := range [][2]string{{"virtio_ring", "virtio_pci"}, {"virtio", "virtio_net"}, {"failover", "net_failover"},
		{"net_failover", "virtio_net"}, {"jbd2", "ext4"}, {"crc16", "ext4"}} {
		a, okA := pos[pair[0]]
		b, okB := pos[pair[1]]
		if !okA || !okB || a > b {
			t.Errorf("%s must load before %s: order %v", pair[0], pair[1], order)
		}
	}
	for _, m := range []string{"aoe", "nbd"} {
		if _, ok := pos[m]; !ok {
			t.Errorf("module %s missing from the load order", m)
		}
	}
}

// TestConfigParses checks that the config the scenarios give tharsis is
// accepted by tharsis's own config package.
func TestConfigParses(t *testing.T) {
	s := &Setup{Dir: t.TempDir(), Tap: &Tap{Name: "thvtest", HostIP: "10.200.0.1"},
		Resources: []Resource{{Name: "r0", Size: 1 << 20}, {Name: "r1", Size: 1 << 20, Replicated: new(bool)}},
		AoE: []AoEExport{{Resource: "r0", Shelf: 1, Slot: 1, AllowMACs: []string{"52:54:00:12:34:56"}},
			{Resource: "r1", Shelf: 1, Slot: 2, ReadOnly: true}},
		NBD: []NBDExport{{Resource: "r1", Name: "r1", Port: 10809, ReadOnly: true}},
	}
	if err := s.CreateResources(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(s.Dir, "c.toml")
	if err := os.WriteFile(p, []byte(s.Config("127.0.0.1:17777")), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(p)
	if err != nil {
		t.Fatalf("tharsis rejects the generated config: %v\n%s", err, s.Config("127.0.0.1:17777"))
	}
	aoe, nbd := cfg.ExportsOf("r1")
	if len(aoe) != 1 || len(nbd) != 1 {
		t.Fatalf("r1 exports: %d AoE, %d NBD; want 1 and 1", len(aoe), len(nbd))
	}
}

// TestBuildGuestCached checks that a second build reuses the cache entry.
func TestBuildGuestCached(t *testing.T) {
	if _, _, err := findKernel(); err != nil {
		testutil.Unavailable(t, err.Error())
	}
	t.Setenv("THARSIS_VM_CACHE", t.TempDir())
	g1, err := BuildGuest(context.Background())
	if err != nil {
		testutil.Unavailable(t, "guest inputs missing: "+err.Error())
	}
	g2, err := BuildGuest(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !g1.Rebuilt || g2.Rebuilt || g1.Key != g2.Key {
		t.Fatalf("first build rebuilt=%v key %s; second rebuilt=%v key %s: want a rebuild, then a cache hit with the same key",
			g1.Rebuilt, g1.Key, g2.Rebuilt, g2.Key)
	}
}
