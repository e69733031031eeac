package main

import (
	"context"
	"fmt"
	"os"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/tharsis/tharsis/appliance"
	"github.com/tharsis/tharsis/config"
)

func init() {
	c := &command{name: "run", summary: "run the node daemon: open this node's resources and serve their exports"}
	c.run = func(args []string) error {
		fs := newFlagSet(c)
		var nf nodeFlags
		nf.register(fs)
		level := fs.String("log-level", "info", "log level: debug, info, warn, error")
		if err := parse(fs, args); err != nil {
			return err
		}
		log, err := newLogger(*level)
		if err != nil {
			return err
		}
		cfg, node, err := nf.load()
		if err != nil {
			return err
		}
		if err := startPprof(log); err != nil {
			return err
		}
		d, err := appliance.New(appliance.Options{Config: cfg, Node: node, Logger: log})
		if err != nil {
			return err
		}
		ctx, stop := signalContext()
		defer stop()
		go reloadOnHUP(ctx, d, log)
		// Under systemd (Type=notify): READY=1 once serving, STOPPING=1
		// as soon as a signal starts the shutdown (sent before exit).
		stopping := make(chan struct{})
		context.AfterFunc(ctx, func() {
			defer close(stopping)
			sdNotify(log, daemon.SdNotifyStopping+"\nSTATUS=shutting down: draining in-flight requests")
		})
		err = d.Run(ctx, func(*appliance.Daemon) {
			sdNotify(log, daemon.SdNotifyReady+fmt.Sprintf("\nSTATUS=node %s serving; `tharsis view --node %s` shows its resources", node, node))
		})
		stop()
		<-stopping
		return err
	}
	register(c)

	check := &command{name: "config check", args: "[--node N] FILE", summary: "validate a config file and print a summary, then check what it asks of this host (disks, log and state dirs, AoE interfaces); exit 1 on errors"}
	check.run = func(args []string) error {
		fs := newFlagSet(check)
		nodeName := fs.String("node", "", "check this host as node N (default: the host name, or the only node)")
		if err := parse(fs, args); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return usageError{"config check needs exactly one FILE"}
		}
		cfg, err := config.Load(fs.Arg(0))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return silentError{}
		}
		fmt.Print(cfg.Summary())
		nf := nodeFlags{config: fs.Arg(0), node: *nodeName}
		_, node, err := nf.load()
		if err != nil {
			fmt.Printf("\nnot checked on this host: %v\n", err)
			return nil
		}
		fmt.Printf("\nchecked on this host as node %s:\n", node)
		if n := localCheck(os.Stdout, cfg, node); n > 0 {
			fmt.Fprintf(os.Stderr, "%d check(s) failed on this host (node %s)\n", n, node)
			return silentError{}
		}
		return nil
	}
	register(check)
}
