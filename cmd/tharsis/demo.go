package main

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"text/template"

	"github.com/tharsis/tharsis/appliance"
	"github.com/tharsis/tharsis/blockdev"
	"github.com/tharsis/tharsis/config"
)

// demoConfig is the embedded default: a primary (alpha) and a secondary
// (beta) on this machine, one resource exported by the primary.
var demoConfig = template.Must(template.New("demo").Parse(`# tharsis demo config, written by ` + "`tharsis demo`" + `
secret_file = "secret"

[nodes.alpha]
replication = "{{.ReplA}}"
state_dir = "alpha"
{{if .ReplB}}
[nodes.beta]
replication = "{{.ReplB}}"
state_dir = "beta"
{{end}}
[resources.demo]
disk = { alpha = "alpha.img"{{if .ReplB}}, beta = "beta.img"{{end}} }
primary = "alpha"

[[exports.nbd]]
resource = "demo"
listen = "{{.Listen}}"
name = "demo"
description = "tharsis demo resource"
{{if .AoEIface}}
[[exports.aoe]]
resource = "demo"
shelf = 1
slot = 1
interfaces = ["{{.AoEIface}}"]
{{end}}`))

const (
	demoVethTarget = "thdemo0" // the target's end of the demo veth pair
	demoVethClient = "thdemo1" // where clients (aoe-stat) look
)

func init() {
	c := &command{name: "demo", summary: "run a demo node on this machine: a sparse 1 GiB resource over NBD (and AoE on a veth pair when root)"}
	c.run = func(args []string) error {
		fs := newFlagSet(c)
		listen := fs.String("listen", "127.0.0.1:10809", "NBD listen address")
		size := fs.String("size", "1GiB", "size of the demo resource")
		dir := fs.String("dir", "", "directory for the demo's files (default: a new temporary directory, removed at exit)")
		noAoE := fs.Bool("no-aoe", false, "do not export over AoE")
		noSecondary := fs.Bool("no-secondary", false, "run the primary alone")
		repl := fs.String("replication", "127.0.0.1:17777,127.0.0.1:17778", "replication addresses of the primary and the secondary")
		level := fs.String("log-level", "info", "log level: debug, info, warn, error")
		if err := parse(fs, args); err != nil {
			return err
		}
		log, err := newLogger(*level)
		if err != nil {
			return err
		}
		sz, err := config.ParseSize(*size)
		if err != nil {
			return usageError{fmt.Sprintf("--size: %v", err)}
		}
		root := *dir
		if root == "" {
			root, err = os.MkdirTemp("", "tharsis-demo-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(root)
			// Traversable, so that a sudo user's shell reaches the scratch
			// file; what is inside keeps its own modes (0600, 0700).
			if err := os.Chmod(root, 0o711); err != nil {
				return err
			}
		} else if err := os.MkdirAll(root, 0o711); err != nil {
			return err
		}
		if root, err = filepath.Abs(root); err != nil {
			return err
		}
		scratch, err := demoScratch(root)
		if err != nil {
			return err
		}
		replA, replB, _ := strings.Cut(*repl, ",")
		nodes := []string{"alpha"}
		if *noSecondary {
			replB = ""
		} else if replB == "" {
			return usageError{"--replication needs two addresses: PRIMARY,SECONDARY"}
		} else {
			nodes = append(nodes, "beta")
		}
		for _, n := range nodes {
			disk, err := blockdev.CreateFile(filepath.Join(root, n+".img"), sz)
			if err != nil {
				return err
			}
			disk.Close()
		}
		secret := make([]byte, 32)
		rand.Read(secret)
		if err := os.WriteFile(filepath.Join(root, "secret"), secret, 0o600); err != nil {
			return err
		}

		aoeIface, why := "", ""
		switch {
		case *noAoE:
			why = "--no-aoe given"
		case os.Geteuid() != 0:
			why = "creating a veth pair and raw sockets need root: run `bash scripts/demo.sh` (it uses sudo) to see AoE too"
		default:
			if err := makeVeth(demoVethTarget, demoVethClient); err != nil {
				why = fmt.Sprintf("could not create the demo veth pair: %v", err)
			} else {
				aoeIface = demoVethTarget
				defer exec.Command("ip", "link", "del", demoVethTarget).Run()
			}
		}

		var buf bytes.Buffer
		demoConfig.Execute(&buf, map[string]any{"Listen": *listen, "ReplA": replA, "ReplB": replB, "AoEIface": aoeIface})
		cfgPath := filepath.Join(root, "tharsis.toml")
		if err := os.WriteFile(cfgPath, buf.Bytes(), 0o600); err != nil {
			return err
		}
		cfg, err := config.Load(cfgPath)
		if err != nil {
			return fmt.Errorf("demo config is invalid (a bug in tharsis): %w", err)
		}
		ctx, stop := signalContext()
		defer stop()
		// Every node runs in this process, the primary first: the
		// secondary starts once the primary serves (else its first sync
		// finds the primary not ready yet and logs a WARN). The demo is
		// ready when all are.
		var all []error
		errs := make(chan error, len(nodes))
		started := 0
		for _, n := range nodes {
			if ctx.Err() != nil {
				break
			}
			d, err := appliance.New(appliance.Options{Config: cfg, Node: n, Logger: log}) // the daemon adds node=
			if err != nil {
				stop()
				all = append(all, err)
				break
			}
			started++
			ready := make(chan struct{})
			go func() {
				var once sync.Once
				err := d.Run(ctx, func(*appliance.Daemon) { once.Do(func() { close(ready) }) })
				once.Do(func() { close(ready) })
				if err != nil {
					stop() // one node failing ends the demo
				}
				errs <- err
			}()
			<-ready
		}
		if ctx.Err() == nil {
			printDemoHelp(os.Stdout, demoBanner{
				listen: *listen, size: config.FormatSize(sz), cfg: cfg, cfgPath: cfgPath, scratch: scratch,
				nodes: nodes, aoeIface: aoeIface, aoeWhy: why, tharsis: selfCommand(),
			})
		}
		for range started {
			all = append(all, <-errs)
		}
		return errors.Join(all...)
	}
	register(c)
}

func makeVeth(a, b string) error {
	exec.Command("ip", "link", "del", a).Run() // a leftover from an earlier demo
	for _, args := range [][]string{
		{"link", "add", a, "type", "veth", "peer", "name", b},
		{"link", "set", a, "up"},
		{"link", "set", b, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
		}
	}
	return nil
}

// demoScratch returns a file in root for the data the banner's commands
// write: owned by the user who ran sudo, if one did, so that those
// commands run as printed from their own shell.
func demoScratch(root string) (string, error) {
	path := filepath.Join(root, "rand")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		return "", err
	}
	uid, errU := strconv.Atoi(os.Getenv("SUDO_UID"))
	gid, errG := strconv.Atoi(os.Getenv("SUDO_GID"))
	if os.Geteuid() == 0 && errU == nil && errG == nil {
		if err := os.Chown(path, uid, gid); err != nil {
			return "", err
		}
	}
	return path, nil
}

// selfCommand is how the banner names this binary: its absolute path, or
// `go run ./cmd/tharsis` when it is go run's temporary build.
func selfCommand() string {
	exe, err := os.Executable()
	if err != nil || strings.Contains(exe, string(filepath.Separator)+"go-build") {
		return "go run ./cmd/tharsis"
	}
	return exe
}

// asRoot prefixes cmd with sudo unless the demo runs as root without sudo:
// the demo's control sockets are the demo user's, and the nbd and aoe
// drivers need root.
func asRoot(cmd string) string {
	if os.Geteuid() == 0 && os.Getenv("SUDO_USER") == "" {
		return cmd
	}
	return "sudo " + cmd
}

// demoBanner is what printDemoHelp tells.
type demoBanner struct {
	listen, size     string
	cfg              *config.Config
	cfgPath, scratch string
	nodes            []string // alpha (the primary), then beta if it runs
	aoeIface, aoeWhy string
	tharsis          string // how to run this binary
}

// printDemoHelp prints what runs and where its files are, then commands
// to try. Every command line is indented by two spaces and runs as
// printed, from any directory (the README test runs them).
func printDemoHelp(w io.Writer, b demoBanner) {
	host, port := b.listen, "10809"
	if i := strings.LastIndex(b.listen, ":"); i >= 0 {
		host, port = b.listen[:i], b.listen[i+1:]
	}
	uri := "nbd://" + host
	if port != "10809" {
		uri += ":" + port
	}
	uri += "/demo"
	ctl := b.tharsis
	if os.Geteuid() == 0 {
		ctl = asRoot(b.tharsis)
	}
	fmt.Fprintf(w, "\ntharsis demo is running: resource \"demo\" (%s, sparse), primary on node alpha, with its transaction log.\n", b.size)
	fmt.Fprintf(w, "config: %s\n", b.cfgPath)
	for i, n := range b.nodes {
		role := "primary"
		if i > 0 {
			role = "secondary"
		}
		fmt.Fprintf(w, "node %s (%s): disk %s; state in %s (transaction log in %s)\n",
			n, role, b.cfg.Resources["demo"].Disks[n], b.cfg.Nodes[n].StateDir, b.cfg.LogDir("demo", n))
	}
	fmt.Fprintf(w, `
Try it over NBD (from another terminal):
  nbdinfo %s
  head -c 64M /dev/urandom > %s && nbdcopy %s %s   # write 64 MiB
  nbdcopy %s - | head -c 64M | sha256sum; sha256sum %s      # read it back
  qemu-img info %s
  %s %s %s -N demo /dev/nbd0    # needs the nbd kernel module
  %s view --config %s --node alpha
`, uri, b.scratch, b.scratch, uri, uri, b.scratch, uri, asRoot("nbd-client"), host, port, ctl, b.cfgPath)
	if len(b.nodes) > 1 {
		fmt.Fprintf(w, `
Node beta is a secondary: it syncs once, then fetches alpha's log and replays it. Write, then watch
the write reach it (LOG END and APPLIED of beta catch up with alpha's):
  %s view --config %s --node beta
  %s pause-replay --config %s --node beta demo     # and resume-replay, disconnect, connect
`, ctl, b.cfgPath, ctl, b.cfgPath)
	}
	if b.aoeIface != "" {
		fmt.Fprintf(w, `
Over AoE: target e1.1 on %s (veth pair; its other end is %s):
  %s aoe-stat -i %s
  %s && %s && aoe-stat   # hosts with the aoe driver, on %s
`, b.aoeIface, demoVethClient, asRoot(b.tharsis), demoVethClient, asRoot("modprobe aoe"), asRoot("aoe-discover"), demoVethClient)
	} else {
		fmt.Fprintf(w, "\nAoE export skipped: %s\n", b.aoeWhy)
	}
	fmt.Fprintln(w, "\nPress Ctrl-C to stop (the demo's files are removed).")
}
