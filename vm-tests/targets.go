package vmtests

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Resource is a sparse file served by the target under test.
type Resource struct {
	Name       string
	Size       int64
	Replicated *bool // tharsis only; nil keeps the default (replicated)
}

// AoEExport is one shelf.slot on the tap device.
type AoEExport struct {
	Resource    string
	Shelf, Slot int
	ReadOnly    bool
	AllowMACs   []string
	WriteCache  bool // tharsis only: acknowledge writes before they are durable, like vblade without -s
}

// NBDExport is one export name on HostIP:Port.
type NBDExport struct {
	Resource string
	Name     string
	Port     int
	ReadOnly bool
	// TLS is the export's tls key ("" for off); VerifyClient its
	// tls_verify_client. Both need Setup.TLSDir.
	TLS          string
	VerifyClient bool
}

// Setup is what a scenario wants served.
type Setup struct {
	Dir       string // scratch directory: resource files, configs, state
	Tap       *Tap
	Resources []Resource
	AoE       []AoEExport
	NBD       []NBDExport
	TLSDir    string // the config's tls_dir, when set (node "host")
}

// ResourcePath is where the file backing resource name lives.
func (s *Setup) ResourcePath(name string) string {
	return filepath.Join(s.Dir, name+".img")
}

// CreateResources creates every resource as a sparse file of its size,
// keeping files that already exist.
func (s *Setup) CreateResources() error {
	for _, r := range s.Resources {
		p := s.ResourcePath(r.Name)
		if _, err := os.Stat(p); err == nil {
			continue
		}
		f, err := os.Create(p)
		if err != nil {
			return err
		}
		if err := f.Truncate(r.Size); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	return nil
}

// Target serves a Setup: tharsis, or the reference peers vblade and
// nbd-server.
type Target interface {
	Kind() string
	// Start launches the servers and returns once each one listens: every
	// NBD port accepts connections and the AoE packet sockets are bound on
	// the tap device.
	Start(ctx context.Context) error
	// Stop terminates the servers gracefully (SIGTERM, then SIGKILL after
	// 15 s) and waits for them to exit.
	Stop() error
	// Output is everything the servers printed so far.
	Output() string
}

// Target kinds.
const (
	KindTharsis   = "tharsis"
	KindReference = "reference" // vblade + nbd-server
)

// TargetKind returns THARSIS_VM_TARGET ("tharsis" by default; "reference"
// or "vblade" selects vblade and nbd-server).
func TargetKind() string {
	switch os.Getenv("THARSIS_VM_TARGET") {
	case "reference", "vblade", "nbd-server":
		return KindReference
	default:
		return KindTharsis
	}
}

// NewTarget returns a Target of kind for s; bin is the tharsis binary.
func NewTarget(kind, bin string, s *Setup) Target {
	if kind == KindReference {
		return &reference{s: s}
	}
	return &tharsis{s: s, bin: bin}
}

// process is a child server with captured output.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
	// oneShot servers (nbd-server -d) may exit cleanly after one client.
	oneShot bool
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func startProcess(name string, out *syncBuffer, prog string, args ...string) (*process, error) {
	p := &process{name: name, out: out, done: make(chan struct{})}
	p.cmd = exec.Command(prog, args...)
	p.cmd.Stdout = out
	p.cmd.Stderr = out
	fmt.Fprintf(out, "[%s] $ %s %s\n", time.Now().Format("15:04:05.000"), prog, strings.Join(args, " "))
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		fmt.Fprintf(out, "[%s] %s exited: %v\n", time.Now().Format("15:04:05.000"), name, p.err)
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *process) stop() error {
	if p.exited() {
		if p.oneShot && p.err == nil {
			return nil
		}
		return fmt.Errorf("%s had already exited: %v", p.name, p.err)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s ignored SIGTERM for 15 s and was killed", p.name)
	}
}

// waitReady polls until the NBD ports listen and at least aoeSockets
// packet sockets are bound on the tap, failing early when a server exits.
func waitReady(ctx context.Context, s *Setup, procs []*process, aoeSockets int) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for delay := 5 * time.Millisecond; ; delay = min(2*delay, 200*time.Millisecond) {
		for _, p := range procs {
			if p.exited() {
				return fmt.Errorf("%s exited during startup: %v", p.name, p.err)
			}
		}
		var missing []string
		for _, e := range s.NBD {
			// Look, don't connect: nbd-server -d dies of SIGPIPE when a probe hangs up.
			if !tcpListening(e.Port) {
				missing = append(missing, fmt.Sprintf("NBD listener on %s:%d", s.Tap.HostIP, e.Port))
			}
		}
		if n := packetSockets(s.Tap.Index); n < aoeSockets {
			missing = append(missing, fmt.Sprintf("%d AoE packet sockets on %s (have %d)", aoeSockets, s.Tap.Name, n))
		}
		if len(missing) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("target not ready (%w): missing %s", ctx.Err(), strings.Join(missing, ", "))
		case <-time.After(delay):
		}
	}
}

// tcpListening reports whether some IPv4 or IPv6 socket listens on port.
func tcpListening(port int) bool {
	want := fmt.Sprintf(":%04X", port)
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			fs := strings.Fields(line)
			if len(fs) > 3 && strings.HasSuffix(fs[1], want) && fs[3] == "0A" {
				return true
			}
		}
	}
	return false
}

// packetSockets counts AF_PACKET sockets bound to interface index ifindex.
func packetSockets(ifindex int) int {
	data, err := os.ReadFile("/proc/net/packet")
	if err != nil {
		return 0
	}
	n := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Scan() // header
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 5 && f[4] == strconv.Itoa(ifindex) {
			n++
		}
	}
	return n
}

// tharsis runs `tharsis run` with a generated config.
type tharsis struct {
	s    *Setup
	bin  string
	out  syncBuffer
	proc *process
	cfg  string
}

func (t *tharsis) Kind() string   { return KindTharsis }
func (t *tharsis) Output() string { return t.out.String() }

// Config renders the tharsis TOML config for s.
func (s *Setup) Config(replicationAddr string) string {
	var b strings.Builder
	if s.TLSDir != "" {
		fmt.Fprintf(&b, "tls_dir = %q\n", s.TLSDir)
	}
	fmt.Fprintf(&b, "[nodes.host]\nreplication = %q\nstate_dir = %q\n", replicationAddr, filepath.Join(s.Dir, "state"))
	for _, r := range s.Resources {
		fmt.Fprintf(&b, "\n[resources.%s]\ndisk = { host = %q }\n", r.Name, s.ResourcePath(r.Name))
		if r.Replicated != nil {
			fmt.Fprintf(&b, "replicated = %v\n", *r.Replicated)
		}
	}
	for _, e := range s.AoE {
		macs := make([]string, len(e.AllowMACs))
		for i, m := range e.AllowMACs {
			macs[i] = strconv.Quote(m)
		}
		fmt.Fprintf(&b, "\n[[exports.aoe]]\nresource = %q\nshelf = %d\nslot = %d\ninterfaces = [%q]\nallow_macs = [%s]\nread_only = %v\nwrite_cache = %v\n",
			e.Resource, e.Shelf, e.Slot, s.Tap.Name, strings.Join(macs, ", "), e.ReadOnly, e.WriteCache)
	}
	for _, e := range s.NBD {
		fmt.Fprintf(&b, "\n[[exports.nbd]]\nresource = %q\nlisten = %q\nname = %q\nread_only = %v\n",
			e.Resource, net.JoinHostPort(s.Tap.HostIP, strconv.Itoa(e.Port)), e.Name, e.ReadOnly)
		if e.TLS != "" {
			fmt.Fprintf(&b, "tls = %q\ntls_verify_client = %v\n", e.TLS, e.VerifyClient)
		}
	}
	return b.String()
}

func (t *tharsis) Start(ctx context.Context) error {
	if t.proc != nil && !t.proc.exited() {
		return errors.New("tharsis is already running")
	}
	if t.cfg == "" {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		addr := l.Addr().String()
		l.Close()
		t.cfg = filepath.Join(t.s.Dir, "tharsis.toml")
		if err := os.MkdirAll(filepath.Join(t.s.Dir, "state"), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(t.cfg, []byte(t.s.Config(addr)), 0o644); err != nil {
			return err
		}
	}
	base := packetSockets(t.s.Tap.Index) // other targets may share the tap
	p, err := startProcess("tharsis run", &t.out, t.bin, "run", "--config", t.cfg, "--node", "host")
	if err != nil {
		return err
	}
	t.proc = p
	aoe := base
	if len(t.s.AoE) > 0 {
		aoe++
	}
	if err := waitReady(ctx, t.s, []*process{p}, aoe); err != nil {
		p.stop()
		return fmt.Errorf("tharsis run --config %s: %w", t.cfg, err)
	}
	return nil
}

func (t *tharsis) Stop() error {
	if t.proc == nil {
		return nil
	}
	err := t.proc.stop()
	t.proc = nil
	return err
}

// reference runs one vblade per AoE export and one nbd-server per NBD port.
type reference struct {
	s     *Setup
	out   syncBuffer
	procs []*process
}

func (r *reference) Kind() string   { return KindReference }
func (r *reference) Output() string { return r.out.String() }

func (r *reference) Start(ctx context.Context) error {
	if len(r.procs) > 0 {
		return errors.New("reference target is already running")
	}
	base := packetSockets(r.s.Tap.Index) // other targets may share the tap
	for _, e := range r.s.AoE {
		var args []string
		if e.ReadOnly {
			args = append(args, "-r")
		}
		if len(e.AllowMACs) > 0 {
			args = append(args, "-m", strings.Join(e.AllowMACs, ","))
		}
		args = append(args, strconv.Itoa(e.Shelf), strconv.Itoa(e.Slot), r.s.Tap.Name, r.s.ResourcePath(e.Resource))
		p, err := startProcess(fmt.Sprintf("vblade e%d.%d", e.Shelf, e.Slot), &r.out, "vblade", args...)
		if err != nil {
			r.Stop()
			return err
		}
		r.procs = append(r.procs, p)
	}
	byPort := map[int][]NBDExport{}
	for _, e := range r.s.NBD {
		byPort[e.Port] = append(byPort[e.Port], e)
	}
	ports := make([]int, 0, len(byPort))
	for p := range byPort {
		ports = append(ports, p)
	}
	sort.Ints(ports)
	for _, port := range ports {
		var b strings.Builder
		fmt.Fprintf(&b, "[generic]\n\tlistenaddr = %s\n\tport = %d\n\tallowlist = true\n", r.s.Tap.HostIP, port)
		for _, e := range byPort[port] {
			fmt.Fprintf(&b, "[%s]\n\texportname = %s\n\treadonly = %v\n\tflush = true\n", e.Name, r.s.ResourcePath(e.Resource), e.ReadOnly)
		}
		cfg := filepath.Join(r.s.Dir, fmt.Sprintf("nbd-server-%d.conf", port))
		if err := os.WriteFile(cfg, []byte(b.String()), 0o644); err != nil {
			r.Stop()
			return err
		}
		// -d keeps nbd-server in the foreground; it then serves one client and exits.
		p, err := startProcess(fmt.Sprintf("nbd-server :%d", port), &r.out, "nbd-server", "-C", cfg, "-d")
		if err != nil {
			r.Stop()
			return err
		}
		p.oneShot = true
		r.procs = append(r.procs, p)
	}
	if err := waitReady(ctx, r.s, r.procs, base+len(r.s.AoE)); err != nil {
		r.Stop()
		return fmt.Errorf("reference peers: %w", err)
	}
	return nil
}

func (r *reference) Stop() error {
	var errs []error
	for _, p := range r.procs {
		if err := p.stop(); err != nil {
			errs = append(errs, err)
		}
	}
	r.procs = nil
	return errors.Join(errs...)
}

// BuildTharsis compiles ./cmd/tharsis of the module holding the working
// directory into dir, unless THARSIS_BIN names a binary to use.
func BuildTharsis(ctx context.Context, dir string) (string, error) {
	if b := os.Getenv("THARSIS_BIN"); b != "" {
		return b, nil
	}
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(root, "cmd", "tharsis")); err != nil {
		return "", fmt.Errorf("no cmd/tharsis in %s yet: %w", root, err)
	}
	bin := filepath.Join(dir, "tharsis")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/tharsis")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/tharsis: %w\n%s", err, out)
	}
	return bin, nil
}

func moduleRoot() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", errors.New("go.mod not found above the working directory")
		}
		d = parent
	}
}

// BuildGuestIO compiles the guest helper ./vm-tests/guestio as a static
// binary into dir and returns its bytes (for BootConfig.Programs).
func BuildGuestIO(ctx context.Context, dir string) ([]byte, error) {
	root, err := moduleRoot()
	if err != nil {
		return nil, err
	}
	bin := filepath.Join(dir, "guestio")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "./vm-tests/guestio")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build ./vm-tests/guestio: %w\n%s", err, out)
	}
	return os.ReadFile(bin)
}
