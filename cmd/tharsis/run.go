package main

import (
	"fmt"
	"os"

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
		d, err := appliance.New(appliance.Options{Config: cfg, Node: node, Logger: log})
		if err != nil {
			return err
		}
		ctx, stop := signalContext()
		defer stop()
		return d.Run(ctx, nil)
	}
	register(c)

	check := &command{name: "config check", args: "FILE", summary: "validate a config file and print a summary (exit 1 on errors)"}
	check.run = func(args []string) error {
		fs := newFlagSet(check)
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
		return nil
	}
	register(check)
}
