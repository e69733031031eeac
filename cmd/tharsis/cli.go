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

// Exit codes of every command but `check` (which follows the
// monitoring-plugins convention); `tharsis help` and the README list them.
const (
	exitOK     = 0 // done
	exitFailed = 1 // the command ran and failed (the error says why)
	exitUsage  = 2 // a mistake on the command line, or a verb not built yet
)

func exitCode(err error) int {
	var u usageError
	if errors.As(err, &u) {
		return exitUsage
	}
	return exitFailed
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
	if len(args) == 0 || isHelpArg(args[0]) {
		usage(os.Stdout)
		return nil
	}
	if args[0] == "help" {
		return help(args[1:])
	}
	name, rest := commandName(args)
	c, ok := commands[name]
	if !ok {
		if isGroup(name) && (len(rest) == 0 || isHelpArg(rest[0])) {
			groupUsage(os.Stdout, name)
			return nil
		}
		return notFound(name)
	}
	err := c.run(rest)
	if errors.Is(err, silentError{}) {
		os.Exit(exitFailed)
	}
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return err
}

// help is `tharsis help [COMMAND]`: the general usage, or one command's
// (the same text as `tharsis COMMAND --help`).
func help(args []string) error {
	if len(args) == 0 {
		usage(os.Stdout)
		return nil
	}
	name, rest := commandName(args)
	if len(rest) > 0 {
		return usageError{fmt.Sprintf("help takes one command, not %q", strings.Join(args, " "))}
	}
	if c, ok := commands[name]; ok {
		// A command parses its flags first: --help prints its usage and
		// returns flag.ErrHelp before anything runs.
		err := c.run([]string{"--help"})
		if err == nil || errors.Is(err, flag.ErrHelp) {
			return nil
		}
		// One without flags (create-resource): its summary, and what it
		// says when run.
		var u usageError
		if !errors.As(err, &u) {
			return err
		}
		fmt.Printf("usage: tharsis %s\n\n%s\n\n%s\n", strings.TrimSpace(c.name+" "+c.args), c.summary, u.msg)
		return nil
	}
	if isGroup(name) {
		groupUsage(os.Stdout, name)
		return nil
	}
	return notFound(name)
}

func isHelpArg(a string) bool { return a == "-h" || a == "-help" || a == "--help" }

// commandName splits args into a command's name, one word or two for a
// group such as "config check", and the command's arguments.
func commandName(args []string) (string, []string) {
	if len(args) > 1 && isGroup(args[0]) && !strings.HasPrefix(args[1], "-") {
		return args[0] + " " + args[1], args[2:]
	}
	return args[0], args[1:]
}

// isGroup reports whether name is the first word of two-word commands
// ("config"), registered or not built yet.
func isGroup(name string) bool {
	for n := range commands {
		if strings.HasPrefix(n, name+" ") {
			return true
		}
	}
	for n := range notBuilt {
		if strings.HasPrefix(n, name+" ") {
			return true
		}
	}
	return false
}

// notFound is the error for a name that is not a registered command: what
// tharsis has instead or which area builds it for a marsadm verb, or
// "unknown command" with the nearest command's name.
func notFound(name string) error {
	if msg, ok := notBuiltMessage(name); ok {
		return usageError{msg}
	}
	msg := fmt.Sprintf("unknown command %q", name)
	if s := config.Suggest(name, sortedNames()); s != "" {
		msg += fmt.Sprintf(" (did you mean %q?)", s)
	}
	group, _, two := strings.Cut(name, " ")
	if two && isGroup(group) {
		return usageError{msg + fmt.Sprintf("; run `tharsis %s` for its commands", group)}
	}
	return usageError{msg + "; run `tharsis help` for the list"}
}

func sortedNames() []string {
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "tharsis — replicated block storage exported over AoE and NBD")
	fmt.Fprintln(w, "\nusage: tharsis COMMAND [flags] [args]\n\ncommands:")
	for _, n := range sortedNames() {
		c := commands[n]
		fmt.Fprintf(w, "  %-34s %s\n", strings.TrimSpace(c.name+" "+c.args), c.summary)
	}
	fmt.Fprint(w, `
Flags may come before or after the arguments. `+"`tharsis help COMMAND`"+` (or `+"`tharsis COMMAND --help`"+`)
shows a command's usage and flags. The other marsadm verbs are known: `+"`tharsis VERB`"+` says which area
builds it, or what tharsis does instead.

exit codes: 0 done; 1 failed (the error says why); 2 a mistake on the command line, or a verb not built yet.
`)
	if _, ok := commands["check"]; ok {
		fmt.Fprintln(w, "`tharsis check` follows the monitoring-plugins convention instead: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.")
	}
}

// groupUsage lists the commands of a group such as "config".
func groupUsage(w io.Writer, group string) {
	fmt.Fprintf(w, "usage: tharsis %s COMMAND [flags] [args]\n\ncommands:\n", group)
	for _, n := range sortedNames() {
		if c := commands[n]; strings.HasPrefix(n, group+" ") {
			fmt.Fprintf(w, "  %-34s %s\n", strings.TrimSpace(c.name+" "+c.args), c.summary)
		}
	}
	var later []string
	for n := range notBuilt {
		if _, ok := commands[n]; !ok && strings.HasPrefix(n, group+" ") {
			later = append(later, n)
		}
	}
	sort.Strings(later)
	for _, n := range later {
		msg, _ := notBuiltMessage(n)
		fmt.Fprintf(w, "  %-34s %s\n", n, msg)
	}
	fmt.Fprintf(w, "\nRun `tharsis help %s COMMAND` for a command's usage and flags.\n", group)
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

// newFlagSet returns the flag set of c. Its usage goes to stdout, and only
// on -h/--help (see parse); a parse error is returned, not printed.
func newFlagSet(c *command) *flag.FlagSet {
	fs := flag.NewFlagSet("tharsis "+c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "usage: tharsis %s\n\n%s\n", strings.TrimSpace(c.name+" [flags] "+c.args), c.summary)
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprintln(w, "\nflags (before or after the arguments):")
			fs.PrintDefaults()
		}
	}
	return fs
}

// parse parses flags anywhere on the line (`tharsis primary r0 --force`
// as well as `tharsis primary --force r0`); "--" ends the flags. On -h or
// --help it prints the command's usage to stdout and returns flag.ErrHelp.
func parse(fs *flag.FlagSet, args []string) error {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.SetOutput(os.Stdout)
				fs.Usage()
				return err
			}
			return usageError{fmt.Sprintf("%v; run `%s --help` for its usage", err, fs.Name())}
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

// newLogger logs at level to stderr: logfmt lines, or under systemd (stderr
// is the journal) the same without a time and with a syslog priority.
func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usageError{fmt.Sprintf("bad --log-level %q: use debug, info, warn or error", level)}
	}
	if toJournal(os.Stderr, os.Getenv("JOURNAL_STREAM")) {
		return slog.New(newJournalHandler(os.Stderr, l)), nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}
