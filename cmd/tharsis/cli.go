package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/tharsis/tharsis/appliance"
	"github.com/tharsis/tharsis/config"
)

// defaultConfig is where the daemon and the CLI look for the cluster config.
const defaultConfig = "/etc/tharsis/tharsis.toml"

// usageError is a mistake on the command line: exit code 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// silentError has already been printed: exit 1 without more text.
type silentError struct{}

func (silentError) Error() string { return "" }

func exitCode(err error) int {
	var u usageError
	if errors.As(err, &u) {
		return 2
	}
	return 1
}

type command struct {
	name    string
	args    string
	summary string
	run     func(args []string) error
}

// commands is filled by init functions of the files that implement them.
var commands = map[string]*command{}

func register(c *command) { commands[c.name] = c }

func run(args []string) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(os.Stdout)
		return nil
	}
	name := args[0]
	// Two-word commands: "config check".
	if name == "config" && len(args) > 1 {
		name, args = "config "+args[1], args[1:]
	}
	c, ok := commands[name]
	if !ok {
		usage(os.Stderr)
		return usageError{fmt.Sprintf("unknown command %q", args[0])}
	}
	err := c.run(args[1:])
	if errors.Is(err, silentError{}) {
		os.Exit(1)
	}
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return err
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "tharsis — replicated block storage exported over AoE and NBD")
	fmt.Fprintln(w, "\nusage: tharsis COMMAND [flags] [args]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		c := commands[n]
		fmt.Fprintf(w, "  %-34s %s\n", strings.TrimSpace(c.name+" "+c.args), c.summary)
	}
	fmt.Fprintln(w, "\nRun `tharsis COMMAND -h` for a command's flags.")
}

// nodeFlags are the flags every node-facing command shares.
type nodeFlags struct {
	config string
	node   string
	socket string
}

func (n *nodeFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&n.config, "config", defaultConfig, "cluster config file")
	fs.StringVar(&n.node, "node", "", "which node of the config this is (default: the host name)")
	fs.StringVar(&n.socket, "socket", "", "control socket of the daemon (default: from the config)")
}

// load reads the config and works out which node we are.
func (n *nodeFlags) load() (*config.Config, string, error) {
	cfg, err := config.Load(n.config)
	if err != nil {
		return nil, "", err
	}
	node := n.node
	if node == "" {
		h, _ := os.Hostname()
		node = strings.SplitN(h, ".", 2)[0]
		if _, ok := cfg.Nodes[node]; !ok && len(cfg.Nodes) == 1 {
			node = cfg.NodeNames()[0]
		}
	}
	if _, ok := cfg.Nodes[node]; !ok {
		return nil, "", usageError{fmt.Sprintf("node %q is not in %s (it has %s): pass --node NAME", node, n.config, strings.Join(cfg.NodeNames(), ", "))}
	}
	return cfg, node, nil
}

// client returns a control-socket client for the node.
func (n *nodeFlags) client() (*appliance.Client, error) {
	if n.socket != "" {
		return &appliance.Client{Socket: n.socket}, nil
	}
	cfg, node, err := n.load()
	if err != nil {
		return nil, err
	}
	return &appliance.Client{Socket: cfg.Nodes[node].Control}, nil
}

func newFlagSet(c *command) *flag.FlagSet {
	fs := flag.NewFlagSet("tharsis "+c.name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: tharsis %s [flags] %s\n\n%s\n\nflags:\n", c.name, c.args, c.summary)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses flags anywhere on the line (`tharsis primary r0 --force`
// as well as `tharsis primary --force r0`); "--" ends the flags.
func parse(fs *flag.FlagSet, args []string) error {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return err
			}
			return usageError{err.Error()}
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	return fs.Parse(append([]string{"--"}, pos...))
}

// signalContext is cancelled on SIGINT or SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usageError{fmt.Sprintf("bad --log-level %q: use debug, info, warn or error", level)}
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}
