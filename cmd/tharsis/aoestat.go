package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/tharsis/tharsis/aoe"
)

func init() {
	c := &command{name: "aoe-stat", summary: "discover AoE targets on the network and list them like aoetools' aoe-stat (needs root)"}
	c.run = func(args []string) error {
		fs := newFlagSet(c)
		ifaces := fs.String("i", "", "comma-separated interfaces to probe (default: every up interface but loopback)")
		wait := fs.Duration("wait", 2*time.Second, "how long to wait for answers")
		if err := parse(fs, args); err != nil {
			return err
		}
		var list []string
		if *ifaces != "" {
			list = strings.Split(*ifaces, ",")
		}
		ctx, cancel := context.WithTimeout(context.Background(), *wait+30*time.Second)
		defer cancel()
		targets, err := aoe.Stat(ctx, list, *wait)
		if err != nil {
			return err
		}
		for _, t := range targets {
			fmt.Println(t.StatLine())
		}
		if len(targets) == 0 {
			return fmt.Errorf("no AoE target answered within %s", *wait)
		}
		return nil
	}
	register(c)
}
