package appliance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/tharsis/tharsis/internal/netlimit"
	"github.com/tharsis/tharsis/replicate"
)

// The control API is HTTP over a unix socket (mode 0600, root only):
//
//	GET  /v0/status              the node's Status as JSON
//	POST /v0/resource/RES/VERB   an admin verb on one resource ("all": every resource)
//	POST /v0/delete/RES[?force]  delete-resource (delete.go)
//	POST /v0/reload              re-read the config file and apply it (reload.go)
//	POST /v0/role/RES/CMD        primary or secondary (query: force, ignore_sync,
//	                             timeout): streams "progress: ..." lines, then
//	                             "done: ..." or "error: ..."
//
// Errors come back as HTTP 4xx/5xx with the operator-facing message as the
// body. At most control_max_connections connections are open at once (more
// are closed at once), and a connection idle between requests for
// control_idle_timeout is closed.
type controlServer struct {
	path string
	ln   net.Listener
	srv  *http.Server
}

// verbFunc runs an admin verb on one resource and returns what to print.
type verbFunc func(d *Daemon, r *resource) (string, error)

// verbs are the admin verbs the running daemon answers.
var verbs = map[string]verbFunc{}

func (d *Daemon) startControl() error {
	path := d.node.Control
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	// A leftover socket from a crash is removed; a live one means another
	// daemon runs for this node.
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("control socket %s answers: another tharsis daemon runs for node %s; stop it first", path, d.node.Name)
	}
	os.Remove(path)
	old := syscall.Umask(0o077)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return fmt.Errorf("control socket %s: %w", path, err)
	}
	lim := d.limits()
	ln = netlimit.NewListener(ln, netlimit.NewGate(lim.ControlMaxConnections, d.log, "control socket"), 0)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v0/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(d.Status())
	})
	mux.HandleFunc("POST /v0/resource/{res}/{verb}", d.handleVerb)
	mux.HandleFunc("POST /v0/role/{res}/{cmd}", d.handleRole)
	mux.HandleFunc("POST /v0/resize/{res}", d.handleResize)
	mux.HandleFunc("POST /v0/delete/{res}", d.handleDelete)
	mux.HandleFunc("POST /v0/reload", func(w http.ResponseWriter, r *http.Request) {
		done, err := d.ReloadFile()
		if err != nil {
			http.Error(w, strings.Join(append(done, err.Error()), "\n"), http.StatusConflict)
			return
		}
		fmt.Fprintln(w, strings.Join(done, "\n"))
	})
	c := &controlServer{path: path, ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: lim.ControlIdleTimeout}}
	go c.srv.Serve(ln)
	d.control = c
	return nil
}

func (d *Daemon) handleVerb(w http.ResponseWriter, req *http.Request) {
	name, verb := req.PathValue("res"), req.PathValue("verb")
	fn, ok := verbs[verb]
	if !ok {
		http.Error(w, fmt.Sprintf("unknown verb %q", verb), http.StatusNotFound)
		return
	}
	d.mu.Lock()
	var targets []*resource
	if name == "all" {
		for _, k := range sortedKeys(d.resources) {
			targets = append(targets, d.resources[k])
		}
	} else if r := d.resources[name]; r != nil {
		targets = append(targets, r)
	}
	d.mu.Unlock()
	if len(targets) == 0 {
		http.Error(w, fmt.Sprintf("resource %q is not held by node %s (see `tharsis view`)", name, d.node.Name), http.StatusNotFound)
		return
	}
	var out []string
	var errs []error
	for _, r := range targets {
		msg, err := fn(d, r)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", r.name, err))
			continue
		}
		if msg != "" {
			out = append(out, msg)
		}
	}
	if err := errors.Join(errs...); err != nil {
		http.Error(w, strings.Join(append(out, err.Error()), "\n"), http.StatusConflict)
		return
	}
	fmt.Fprintln(w, strings.Join(out, "\n"))
}

// handleRole runs primary or secondary on one resource, streaming the
// core's progress.
func (d *Daemon) handleRole(w http.ResponseWriter, req *http.Request) {
	name, cmdName := req.PathValue("res"), req.PathValue("cmd")
	cmd := replicate.Command{Force: req.URL.Query().Has("force"), IgnoreSync: req.URL.Query().Has("ignore_sync")}
	switch cmdName {
	case "primary":
		cmd.Kind = replicate.CmdPrimary
	case "secondary":
		cmd.Kind = replicate.CmdSecondary
	default:
		http.Error(w, fmt.Sprintf("unknown role command %q", cmdName), http.StatusNotFound)
		return
	}
	timeout := 60 * time.Second
	if v := req.URL.Query().Get("timeout"); v != "" {
		t, err := time.ParseDuration(v)
		if err != nil || t <= 0 {
			http.Error(w, fmt.Sprintf("bad timeout %q: use a duration such as 90s", v), http.StatusBadRequest)
			return
		}
		timeout = t
	}
	cmd.TimeoutTicks = int(timeout / roleTick)
	r := d.heldResource(w, name)
	if r == nil {
		return
	}
	if r.role == nil {
		http.Error(w, fmt.Sprintf("%s: %v", name, errNotReplicated), http.StatusConflict)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fl, _ := w.(http.Flusher)
	line := func(s string) {
		fmt.Fprintln(w, strings.ReplaceAll(s, "\n", " "))
		if fl != nil {
			fl.Flush()
		}
	}
	// The core enforces the deadline; wait a little longer for its answer.
	ctx, cancel := context.WithTimeout(req.Context(), timeout+30*time.Second)
	defer cancel()
	text, err := d.roleCommand(ctx, r, cmd, func(p string) { line("progress: " + p) })
	if err != nil {
		line("error: " + err.Error())
		return
	}
	line("done: " + text)
}

func (d *Daemon) stopControl() {
	if d.control == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	d.control.srv.Shutdown(ctx)
	os.Remove(d.control.path)
	d.control = nil
}

// heldResource returns the resource name of this node, or answers 404 and
// returns nil.
func (d *Daemon) heldResource(w http.ResponseWriter, name string) *resource {
	d.mu.Lock()
	r := d.resources[name]
	d.mu.Unlock()
	if r == nil {
		http.Error(w, fmt.Sprintf("resource %q is not held by node %s (see `tharsis view`)", name, d.node.Name), http.StatusNotFound)
	}
	return r
}
