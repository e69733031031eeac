package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"

	"github.com/tharsis/tharsis/dist/systemd"
)

// sdNotify tells the service manager about the daemon's state when tharsis
// runs under systemd with Type=notify (NOTIFY_SOCKET set); otherwise it does
// nothing. A failure is logged, never fatal: the daemon serves either way.
func sdNotify(log *slog.Logger, state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		log.Warn("could not notify systemd (is NOTIFY_SOCKET right?)", "state", strings.ReplaceAll(state, "\n", " "), "err", err)
	}
}

// toJournal reports whether stderr is connected to the systemd journal:
// JOURNAL_STREAM names the device and inode of that stream, and stderr is
// still it (not redirected by a shell in between).
func toJournal(stderr *os.File, journalStream string) bool {
	dev, ino, ok := strings.Cut(journalStream, ":")
	if !ok {
		return false
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(stderr.Fd()), &st); err != nil {
		return false
	}
	return dev == fmt.Sprint(st.Dev) && ino == fmt.Sprint(st.Ino)
}

// journalHandler writes logfmt lines (slog's TextHandler) without a time,
// which the journal adds, each prefixed with its syslog priority as "<N>"
// so that journald files it under the right level (SyslogLevelPrefix=yes,
// systemd's default for stream logging).
type journalHandler struct {
	text slog.Handler
	mu   *sync.Mutex
	buf  *bytes.Buffer // where text writes, under mu
	out  io.Writer
}

func newJournalHandler(out io.Writer, level slog.Leveler) *journalHandler {
	buf := new(bytes.Buffer)
	return &journalHandler{
		text: slog.NewTextHandler(buf, &slog.HandlerOptions{Level: level, ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}}),
		mu: new(sync.Mutex), buf: buf, out: out,
	}
}

// Enabled implements slog.Handler.
func (h *journalHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.text.Enabled(ctx, l)
}

// Handle implements slog.Handler: one "<N>key=value ..." line per record.
func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.buf.Reset()
	fmt.Fprintf(h.buf, "<%d>", syslogPriority(r.Level))
	if err := h.text.Handle(ctx, r); err != nil {
		return err
	}
	_, err := h.out.Write(h.buf.Bytes())
	return err
}

// WithAttrs implements slog.Handler.
func (h *journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &journalHandler{text: h.text.WithAttrs(as), mu: h.mu, buf: h.buf, out: h.out}
}

// WithGroup implements slog.Handler.
func (h *journalHandler) WithGroup(name string) slog.Handler {
	return &journalHandler{text: h.text.WithGroup(name), mu: h.mu, buf: h.buf, out: h.out}
}

// syslogPriority maps a slog level to sd-daemon(3)'s prefixes: err, warning,
// info, debug.
func syslogPriority(l slog.Level) int {
	switch {
	case l >= slog.LevelError:
		return 3
	case l >= slog.LevelWarn:
		return 4
	case l >= slog.LevelInfo:
		return 6
	default:
		return 7
	}
}

func init() {
	c := &command{name: "install-systemd", args: "", summary: "install this binary and the unit template tharsis@.service (tharsis@NODE runs `tharsis run --node NODE`), then reload systemd"}
	c.run = func(args []string) error {
		fs := newFlagSet(c)
		bin := fs.String("bin", systemd.DefaultBinary, "where to install the tharsis binary (the unit's ExecStart)")
		unitDir := fs.String("unit-dir", "/etc/systemd/system", "where to install the unit file")
		noReload := fs.Bool("no-reload", false, "do not run `systemctl daemon-reload`")
		if err := parse(fs, args); err != nil {
			return err
		}
		if fs.NArg() != 0 {
			return usageError{"install-systemd takes no arguments, only flags"}
		}
		if !filepath.IsAbs(*bin) {
			return usageError{fmt.Sprintf("--bin %s: give an absolute path (it becomes the unit's ExecStart)", *bin)}
		}
		unitPath, err := installSystemd(*bin, *unitDir)
		if err != nil {
			return err
		}
		fmt.Printf("installed %s and %s\n", *bin, unitPath)
		switch _, err := os.Stat("/run/systemd/system"); {
		case *noReload:
		case err != nil:
			fmt.Println("systemd is not running here: not reloaded")
		default:
			if out, err := exec.Command("systemctl", "daemon-reload").CombinedOutput(); err != nil {
				return fmt.Errorf("systemctl daemon-reload: %w: %s", err, bytes.TrimSpace(out))
			}
			fmt.Println("ran systemctl daemon-reload")
		}
		fmt.Print(`
next, on each node (NODE is its name in the config):
  ` + *bin + ` config check /etc/tharsis/tharsis.toml     # the cluster config (another path: THARSIS_CONFIG in /etc/default/tharsis)
  systemctl enable --now tharsis@NODE
  systemctl status tharsis@NODE; journalctl -u tharsis@NODE -f
`)
		return nil
	}
	register(c)
}

// installSystemd copies the running binary to bin (unless it is bin) and
// writes the unit template into unitDir with bin as its ExecStart. Both are
// replaced atomically, so a running daemon keeps its binary. It returns the
// unit file's path.
func installSystemd(bin, unitDir string) (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find this binary to install it: %w", err)
	}
	si, err := os.Stat(self)
	if err != nil {
		return "", fmt.Errorf("find this binary to install it: %w", err)
	}
	if bi, err := os.Stat(bin); err != nil || !os.SameFile(si, bi) {
		exe, err := os.ReadFile(self)
		if err != nil {
			return "", fmt.Errorf("read this binary to install it: %w", err)
		}
		if err := installFile(bin, exe, 0o755); err != nil {
			return "", err
		}
	}
	unit := systemd.Unit
	if bin != systemd.DefaultBinary {
		unit = strings.ReplaceAll(unit, "ExecStart="+systemd.DefaultBinary+" ", "ExecStart="+bin+" ")
	}
	path := filepath.Join(unitDir, systemd.UnitName)
	return path, installFile(path, []byte(unit), 0o644)
}

// installFile replaces path by data with mode perm: a temporary file in
// the same directory, synced, then renamed over path.
func installFile(path string, data []byte, perm os.FileMode) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("install %s: %w", path, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("install %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			os.Remove(f.Name())
			err = fmt.Errorf("install %s: %w", path, err)
		}
	}()
	_, err = f.Write(data)
	err = errors.Join(err, f.Chmod(perm), f.Sync())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
