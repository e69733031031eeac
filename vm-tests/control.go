package vmtests

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// StepFunc is a host action a guest script requests with `hoststep NAME`.
type StepFunc func(ctx context.Context) error

// Control serves host steps to the guest over HTTP on the tap's host
// address. Register steps with Handle before booting.
type Control struct {
	Addr string // host:port the guest fetches from

	mu    sync.Mutex
	steps map[string]StepFunc
	log   []string
	srv   *http.Server
	ln    net.Listener
	ctx   context.Context
}

// NewControl listens on hostIP (a free port) and serves steps until Close.
func NewControl(ctx context.Context, hostIP string) (*Control, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(hostIP, "0"))
	if err != nil {
		return nil, fmt.Errorf("control listener on the tap address: %w", err)
	}
	c := &Control{Addr: ln.Addr().String(), steps: map[string]StepFunc{}, ln: ln, ctx: ctx}
	mux := http.NewServeMux()
	mux.HandleFunc("/step/", c.serveStep)
	c.srv = &http.Server{Handler: mux, BaseContext: func(net.Listener) context.Context { return ctx }}
	go c.srv.Serve(ln)
	return c, nil
}

// Handle registers a step.
func (c *Control) Handle(name string, fn StepFunc) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.steps[name] = fn
}

// Log returns what the guest asked for and how each step ended.
func (c *Control) Log() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.log...)
}

func (c *Control) record(s string) {
	c.mu.Lock()
	c.log = append(c.log, s)
	c.mu.Unlock()
}

func (c *Control) serveStep(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(r.URL.Path, "/step/")
	c.mu.Lock()
	fn := c.steps[name]
	c.mu.Unlock()
	if fn == nil {
		c.record(name + ": unknown step")
		http.Error(w, "unknown step "+name, http.StatusNotFound)
		return
	}
	// Not r.Context(): busybox nc half-closes after sending the request,
	// which cancels it. Steps get the server's context and two minutes.
	ctx, cancel := context.WithTimeout(c.ctx, 2*time.Minute)
	defer cancel()
	if err := fn(ctx); err != nil {
		c.record(name + ": " + err.Error())
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	c.record(name + ": ok")
	fmt.Fprintln(w, "ok")
}

// Close stops serving.
func (c *Control) Close() error { return c.srv.Close() }
