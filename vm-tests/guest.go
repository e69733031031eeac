package vmtests

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// builderVersion changes whenever the layout of the base initramfs changes
// in a way the input hash would not notice.
const builderVersion = "tharsis-vm-guest-3"

//go:embed init.sh
var initScript []byte

//go:embed lib.sh
var libScript []byte

// Guest is a kernel and a base initramfs ready to boot.
type Guest struct {
	KernelVersion string // e.g. "6.1.0-56-amd64"
	Kernel        string // path of the bzImage
	Initrd        string // path of the base initramfs (uncompressed newc cpio)
	Key           string // hash of every input; names the cache entry
	Rebuilt       bool   // true when this call wrote the cache entry
}

// guestModules are loaded in this order (each after its dependencies, which
// are resolved from modules.dep); the value is the insmod argument string.
var guestModules = []struct{ name, args string }{
	{"virtio_pci", ""},
	{"virtio_net", ""},
	{"crc32c_generic", ""},
	{"ext4", ""},
	{"aoe", ""},
	{"nbd", "nbds_max=4"},
}

// guestTools are host files copied into the guest at the same path; ELF
// files bring the shared libraries ldd names.
var guestTools = []string{
	"/bin/bash",
	"/usr/sbin/aoe-discover", "/usr/sbin/aoe-stat", "/usr/sbin/aoe-interfaces",
	"/usr/sbin/aoe-flush", "/usr/sbin/aoe-revalidate", "/usr/sbin/aoe-version",
	"/usr/sbin/aoeping", "/usr/sbin/aoecfg",
	"/usr/sbin/nbd-client",
	"/usr/sbin/mke2fs", "/usr/sbin/e2fsck",
	"/etc/mke2fs.conf",
}

// CacheDir is where built guests are kept: $THARSIS_VM_CACHE, else
// $XDG_CACHE_HOME/tharsis-vm, else ~/.cache/tharsis-vm.
func CacheDir() string {
	if d := os.Getenv("THARSIS_VM_CACHE"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "tharsis-vm")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".cache", "tharsis-vm")
	}
	return filepath.Join(os.TempDir(), "tharsis-vm-cache")
}

// BuildGuest assembles the guest from the host's Debian packages, reusing
// the cached initramfs when no input changed.
func BuildGuest(ctx context.Context) (*Guest, error) {
	kver, kernel, err := findKernel()
	if err != nil {
		return nil, err
	}
	entries, err := guestEntries(ctx, kver)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00", builderVersion, kver)
	kdata, err := os.ReadFile(kernel)
	if err != nil {
		return nil, fmt.Errorf("read kernel: %w", err)
	}
	h.Write(kdata)
	sort.Slice(entries, func(i, j int) bool { return entries[i].Path < entries[j].Path })
	for _, e := range entries {
		fmt.Fprintf(h, "\x00%s\x00%o\x00%s\x00%v\x00%d\x00", e.Path, e.Mode, e.Link, e.IsDir, len(e.Data))
		h.Write(e.Data)
	}
	key := hex.EncodeToString(h.Sum(nil))[:20]
	dir := filepath.Join(CacheDir(), "guest-"+key)
	g := &Guest{KernelVersion: kver, Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initrd.cpio"), Key: key}
	if _, err := os.Stat(g.Initrd); err == nil {
		if _, err := os.Stat(g.Kernel); err == nil {
			return g, nil
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create guest cache %s: %w (set THARSIS_VM_CACHE to a writable directory)", dir, err)
	}
	var buf bytes.Buffer
	if err := WriteCpio(&buf, entries); err != nil {
		return nil, err
	}
	if err := writeAtomic(g.Kernel, kdata); err != nil {
		return nil, err
	}
	if err := writeAtomic(g.Initrd, buf.Bytes()); err != nil {
		return nil, err
	}
	g.Rebuilt = true
	// Inputs changed: older entries can never be hit again.
	old, _ := filepath.Glob(filepath.Join(CacheDir(), "guest-*"))
	for _, d := range old {
		if d != dir {
			os.RemoveAll(d)
		}
	}
	return g, nil
}

func writeAtomic(path string, data []byte) error {
	tmp := fmt.Sprintf("%s.tmp%d", path, os.Getpid())
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("write guest cache: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write guest cache: %w", err)
	}
	return nil
}

// findKernel picks the newest /boot/vmlinuz-* whose modules directory holds
// the aoe and nbd drivers.
func findKernel() (ver, path string, err error) {
	if v := os.Getenv("THARSIS_VM_KERNEL_VERSION"); v != "" {
		return v, "/boot/vmlinuz-" + v, nil
	}
	kernels, _ := filepath.Glob("/boot/vmlinuz-*")
	sort.Sort(sort.Reverse(sort.StringSlice(kernels)))
	for _, k := range kernels {
		v := strings.TrimPrefix(filepath.Base(k), "vmlinuz-")
		if _, err := os.Stat(filepath.Join("/lib/modules", v, "modules.dep")); err == nil {
			return v, k, nil
		}
	}
	return "", "", errors.New("no /boot/vmlinuz-* with matching /lib/modules/<version>/modules.dep: install linux-image-amd64")
}

func guestEntries(ctx context.Context, kver string) ([]Entry, error) {
	var entries []Entry
	add := func(e Entry) { entries = append(entries, e) }
	add(Entry{Path: "init", Mode: 0o755, Data: initScript})
	add(Entry{Path: "lib/tharsis.sh", Mode: 0o644, Data: libScript})
	add(Entry{Path: "dev/console", Mode: 0o600, Char: true, Dev: [2]uint32{5, 1}})
	for _, d := range []string{"proc", "sys", "dev", "tmp", "mnt", "run", "root", "etc"} {
		add(Entry{Path: d, IsDir: true, Mode: 0o755})
	}
	add(Entry{Path: "etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/bin/sh\n")})
	add(Entry{Path: "etc/nsswitch.conf", Mode: 0o644, Data: []byte("hosts: files\n")}) // static busybox wget crashes without it
	add(Entry{Path: "etc/hosts", Mode: 0o644, Data: []byte("127.0.0.1 localhost\n")})
	add(Entry{Path: "etc/group", Mode: 0o644, Data: []byte("root:x:0:\n")})

	// busybox and its applets
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return nil, fmt.Errorf("read static busybox: %w (install busybox-static)", err)
	}
	add(Entry{Path: "bin/busybox", Mode: 0o755, Data: bb})
	out, err := exec.CommandContext(ctx, "/bin/busybox", "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list: %w", err)
	}
	for _, a := range strings.Fields(string(out)) {
		if a == "busybox" || strings.Contains(a, "/") {
			continue
		}
		add(Entry{Path: "bin/" + a, Link: "busybox"})
	}

	// tools and their libraries
	libs := map[string]bool{}
	for _, tool := range guestTools {
		data, err := os.ReadFile(tool)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w (install aoetools, nbd-client, e2fsprogs, bash)", tool, err)
		}
		add(Entry{Path: tool, Mode: 0o755, Data: data})
		if bytes.HasPrefix(data, []byte("\x7fELF")) {
			deps, err := lddLibs(ctx, tool)
			if err != nil {
				return nil, err
			}
			for _, l := range deps {
				libs[l] = true
			}
		}
	}
	add(Entry{Path: "usr/sbin/mkfs.ext4", Link: "mke2fs"})
	add(Entry{Path: "usr/sbin/mkfs.ext2", Link: "mke2fs"})
	for l := range libs {
		data, err := os.ReadFile(l) // follows symlinks: the guest gets a regular file
		if err != nil {
			return nil, fmt.Errorf("read library %s: %w", l, err)
		}
		add(Entry{Path: l, Mode: 0o755, Data: data})
	}

	// kernel modules, dependencies first
	order, err := moduleOrder(kver)
	if err != nil {
		return nil, err
	}
	var list strings.Builder
	for _, m := range order {
		data, err := readModule(ctx, m.path)
		if err != nil {
			return nil, err
		}
		add(Entry{Path: "lib/modules/" + m.name + ".ko", Mode: 0o644, Data: data})
		fmt.Fprintf(&list, "%s %s\n", m.name, m.args)
	}
	add(Entry{Path: "lib/modules/order", Mode: 0o644, Data: []byte(list.String())})
	return entries, nil
}

// lddLibs lists the shared libraries (and the ELF interpreter) of an
// executable, as ldd resolves them on the host.
func lddLibs(ctx context.Context, bin string) ([]string, error) {
	out, err := exec.CommandContext(ctx, "ldd", bin).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", bin, err)
	}
	var libs []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			libs = append(libs, f[2])
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			libs = append(libs, f[0])
		}
	}
	return libs, nil
}

type module struct{ name, path, args string }

// moduleOrder resolves guestModules and their dependencies from
// modules.dep into a load order.
func moduleOrder(kver string) ([]module, error) {
	base := filepath.Join("/lib/modules", kver)
	f, err := os.Open(filepath.Join(base, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("read modules.dep: %w", err)
	}
	defer f.Close()
	paths := map[string]string{}
	deps := map[string][]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		i := strings.IndexByte(line, ':')
		if i < 0 {
			continue
		}
		p := line[:i]
		n := modName(p)
		paths[n] = filepath.Join(base, p)
		for _, d := range strings.Fields(line[i+1:]) {
			deps[n] = append(deps[n], modName(d))
		}
	}
	var order []module
	seen := map[string]bool{}
	var visit func(n, args string) error
	visit = func(n, args string) error {
		if seen[n] {
			return nil
		}
		seen[n] = true
		p, ok := paths[n]
		if !ok {
			return fmt.Errorf("kernel %s has no module %s (is it built in, or is linux-image-amd64 incomplete?)", kver, n)
		}
		// modules.dep lists transitive dependencies; load the deepest first.
		ds := deps[n]
		for i := len(ds) - 1; i >= 0; i-- {
			if err := visit(ds[i], ""); err != nil {
				return err
			}
		}
		order = append(order, module{name: n, path: p, args: args})
		return nil
	}
	for _, m := range guestModules {
		if err := visit(m.name, m.args); err != nil {
			return nil, err
		}
	}
	return order, nil
}

func modName(p string) string {
	b := filepath.Base(p)
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return strings.ReplaceAll(b, "-", "_")
}

// readModule returns an uncompressed .ko (busybox insmod cannot load
// compressed modules).
func readModule(ctx context.Context, path string) ([]byte, error) {
	var tool string
	switch {
	case strings.HasSuffix(path, ".ko"):
		return os.ReadFile(path)
	case strings.HasSuffix(path, ".xz"):
		tool = "xz"
	case strings.HasSuffix(path, ".zst"):
		tool = "zstd"
	case strings.HasSuffix(path, ".gz"):
		tool = "gzip"
	default:
		return nil, fmt.Errorf("module %s: unknown compression", path)
	}
	out, err := exec.CommandContext(ctx, tool, "-dc", path).Output()
	if err != nil {
		return nil, fmt.Errorf("decompress %s with %s: %w", path, tool, err)
	}
	return out, nil
}
