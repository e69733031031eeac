package main

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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
		} else if err := os.MkdirAll(root, 0o700); err != nil {
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
			why = "creating a veth pair and raw sockets need root: run `sudo tharsis demo` to see AoE too"
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
		// Every node runs in this process; the demo is ready when all are.
		var ready sync.WaitGroup
		errs := make(chan error, len(nodes))
		for _, n := range nodes {
			d, err := appliance.New(appliance.Options{Config: cfg, Node: n, Logger: log}) // the daemon adds node=
			if err != nil {
				return err
			}
			ready.Add(1)
			go func() {
				var once sync.Once
				err := d.Run(ctx, func(*appliance.Daemon) { once.Do(ready.Done) })
				once.Do(ready.Done)
				if err != nil {
					stop() // one node failing ends the demo
				}
				errs <- err
			}()
		}
		ready.Wait()
		if ctx.Err() == nil {
			printDemoHelp(os.Stdout, *listen, config.FormatSize(sz), cfgPath, aoeIface, why, len(nodes) > 1)
		}
		var all []error
		for range nodes {
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

func printDemoHelp(w *os.File, listen, size, cfgPath, aoeIface, aoeWhy string, secondary bool) {
	host, port := listen, "10809"
	if i := strings.LastIndex(listen, ":"); i >= 0 {
		host, port = listen[:i], listen[i+1:]
	}
	uri := "nbd://" + host
	if port != "10809" {
		uri += ":" + port
	}
	uri += "/demo"
	fmt.Fprintf(w, `
tharsis demo is running: resource "demo" (%s, sparse), primary on node alpha, with its transaction log.
config: %s   (tharsis below is this binary; from the source tree: go run ./cmd/tharsis)

Try it over NBD (from another terminal):
  nbdinfo %s
  head -c 64M /dev/urandom > /tmp/rand && nbdcopy /tmp/rand %s   # write 64 MiB
  nbdcopy %s - | head -c 64M | sha256sum; sha256sum /tmp/rand      # read it back
  qemu-img info %s
  sudo nbd-client %s %s -N demo /dev/nbd0    # needs the nbd kernel module
  tharsis view --config %s --node alpha
`, size, cfgPath, uri, uri, uri, uri, host, port, cfgPath)
	if secondary {
		fmt.Fprintf(w, `
Node beta is a secondary: it syncs once, then fetches alpha's log and replays it. Write, then watch
the write reach it (LOG END and APPLIED of beta catch up with alpha's):
  tharsis view --config %s --node beta
  tharsis pause-replay --config %s --node beta demo     # and resume-replay, disconnect, connect
`, cfgPath, cfgPath)
	}
	if aoeIface != "" {
		fmt.Fprintf(w, `
Over AoE: target e1.1 on %s (veth pair; its other end is %s):
  tharsis aoe-stat -i %s
  sudo modprobe aoe && aoe-discover && aoe-stat   # hosts with the aoe driver, on %s
`, aoeIface, demoVethClient, demoVethClient, demoVethClient)
	} else {
		fmt.Fprintf(w, "\nAoE export skipped: %s\n", aoeWhy)
	}
	fmt.Fprintln(w, "\nPress Ctrl-C to stop (the demo's files are removed).")
}
