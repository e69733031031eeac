package vmtests

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// MarkPrefix starts every line the guest prints for the host to parse.
const MarkPrefix = "THARSIS-MARK "

// BootConfig describes one guest boot.
type BootConfig struct {
	Guest   *Guest
	Tap     *Tap
	MAC     string            // guest MAC; default 52:54:00:12:34:56
	Script  string            // /scenario.sh, run by /init with the helpers of lib.sh
	Files   map[string][]byte // extra files for the scenario cpio (path without leading slash)
	Control *Control          // optional: serves `hoststep NAME`
	Memory  int               // MiB; default 512
	WorkDir string            // where the per-boot initramfs is written
	// Console, when set, receives every console line as it arrives.
	Console io.Writer
	// Programs are extra executables for the scenario cpio (mode 0755),
	// e.g. "bin/guestio".
	Programs map[string][]byte
}

// Mark is one marker line: THARSIS-MARK <Key> <Value>.
type Mark struct{ Key, Value string }

// Result is what a finished boot printed.
type Result struct {
	Accel   string // "tcg" or "kvm"
	Console string // full serial console output
	Marks   []Mark
	Elapsed time.Duration
}

// Values returns the values of every marker with key, in order.
func (r *Result) Values(key string) []string {
	var v []string
	for _, m := range r.Marks {
		if m.Key == key {
			v = append(v, m.Value)
		}
	}
	return v
}

// Value returns the first value for key.
func (r *Result) Value(key string) (string, bool) {
	for _, m := range r.Marks {
		if m.Key == key {
			return m.Value, true
		}
	}
	return "", false
}

// Lines returns the full marker lines whose key is one of keys, for reports.
func (r *Result) Lines(keys ...string) []string {
	var out []string
	for _, m := range r.Marks {
		for _, k := range keys {
			if m.Key == k {
				out = append(out, MarkPrefix+m.Key+" "+m.Value)
			}
		}
	}
	return out
}

// Accel returns the accelerator to use: kvm when THARSIS_VM_KVM=1, else tcg
// (nested KVM on the development machines is far slower than TCG).
func Accel() string {
	if os.Getenv("THARSIS_VM_KVM") == "1" {
		return "kvm"
	}
	return "tcg"
}

// ErrGuestIncomplete means the guest did not reach `mark done`.
var ErrGuestIncomplete = errors.New("guest did not finish its scenario")

// Boot runs the guest until it powers off or ctx ends. The returned Result
// holds the console even when err is not nil.
func Boot(ctx context.Context, cfg BootConfig) (*Result, error) {
	res := &Result{Accel: Accel()}
	if cfg.MAC == "" {
		cfg.MAC = "52:54:00:12:34:56"
	}
	if cfg.Memory == 0 {
		cfg.Memory = 512
	}
	files := []Entry{{Path: "scenario.sh", Mode: 0o755, Data: []byte(cfg.Script)}}
	for p, d := range cfg.Files {
		files = append(files, Entry{Path: p, Mode: 0o644, Data: d})
	}
	for p, d := range cfg.Programs {
		files = append(files, Entry{Path: p, Mode: 0o755, Data: d})
	}
	var extra bytes.Buffer
	if err := WriteCpio(&extra, files); err != nil {
		return res, err
	}
	base, err := os.ReadFile(cfg.Guest.Initrd)
	if err != nil {
		return res, err
	}
	dir := cfg.WorkDir
	if dir == "" {
		dir = os.TempDir()
	}
	initrd, err := os.CreateTemp(dir, "initrd-*.cpio")
	if err != nil {
		return res, err
	}
	defer os.Remove(initrd.Name())
	initrd.Write(base) // newc archives concatenate: base, then the scenario
	initrd.Write(extra.Bytes())
	if err := initrd.Close(); err != nil {
		return res, err
	}

	appendLine := []string{"console=ttyS0", "panic=-1", "loglevel=6",
		"tharsis.ip=" + cfg.Tap.GuestIP + "/24", fmt.Sprintf("tharsis.mtu=%d", cfg.Tap.MTU)}
	if cfg.Control != nil {
		appendLine = append(appendLine, "tharsis.ctl="+cfg.Control.Addr)
	}
	args := []string{
		"-nodefaults", "-display", "none", "-no-reboot",
		"-m", fmt.Sprint(cfg.Memory), "-smp", "1",
		"-kernel", cfg.Guest.Kernel, "-initrd", initrd.Name(),
		"-append", strings.Join(appendLine, " "),
		"-netdev", "tap,id=n0,ifname=" + cfg.Tap.Name + ",script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=n0,mac=" + cfg.MAC,
		"-serial", "stdio", "-monitor", "none",
	}
	if res.Accel == "kvm" {
		args = append(args, "-accel", "kvm", "-cpu", "host")
	} else {
		args = append(args, "-accel", "tcg", "-cpu", "max")
	}
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	cmd.WaitDelay = 5 * time.Second
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return res, err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return res, fmt.Errorf("qemu-system-x86_64 cannot start (install qemu-system-x86): %w", err)
	}
	var console strings.Builder
	var mu sync.Mutex
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		mu.Lock()
		console.WriteString(line)
		console.WriteByte('\n')
		mu.Unlock()
		if cfg.Console != nil {
			fmt.Fprintln(cfg.Console, line)
		}
		if i := strings.Index(line, MarkPrefix); i >= 0 {
			k, v, _ := strings.Cut(strings.TrimSpace(line[i+len(MarkPrefix):]), " ")
			res.Marks = append(res.Marks, Mark{Key: k, Value: v})
		}
	}
	werr := cmd.Wait()
	res.Elapsed = time.Since(start)
	res.Console = console.String()
	if s := strings.TrimSpace(stderr.String()); s != "" {
		res.Console += "\n[qemu stderr]\n" + s + "\n"
	}
	if ctx.Err() != nil {
		return res, fmt.Errorf("%w: deadline reached after %s (accel %s): %w", ErrGuestIncomplete, res.Elapsed.Round(time.Second), res.Accel, ctx.Err())
	}
	if werr != nil {
		return res, fmt.Errorf("qemu-system-x86_64 failed: %w: %s", werr, strings.TrimSpace(stderr.String()))
	}
	if _, ok := res.Value("done"); !ok {
		return res, fmt.Errorf("%w: no %sdone line on the console", ErrGuestIncomplete, MarkPrefix)
	}
	return res, nil
}

// WriteConsole saves a boot's console next to the test's other files, for
// inspection after a failure.
func WriteConsole(dir, name string, r *Result) string {
	p := filepath.Join(dir, name+".console.log")
	os.WriteFile(p, []byte(r.Console), 0o644)
	return p
}
