package main

import (
	"context"
	"fmt"
	"time"
)

// daemonVerbs are admin verbs carried out by the running daemon.
var daemonVerbs = []struct{ name, summary string }{
	{"log-rotate", "seal the current log segment and start a new one"},
	{"log-delete", "remove the oldest log segment that is already applied"},
	{"log-delete-all", "remove every applied log segment but the current one"},
	{"disconnect", "secondary: stop fetching the log (persists across restarts)"},
	{"connect", "secondary: fetch the log again"},
	{"pause-fetch", "same as disconnect"},
	{"resume-fetch", "same as connect"},
	{"pause-replay", "secondary: stop replaying the fetched log onto the disk"},
	{"resume-replay", "secondary: replay again"},
	{"pause-sync", "secondary: hold a fast full sync"},
	{"resume-sync", "secondary: let a fast full sync run"},
	{"fake-sync", "secondary: mark consistent without copying (for disks known identical, e.g. freshly zeroed)"},
	{"invalidate", "secondary: throw away the local state and run a fast full sync"},
	{"join-resource", "secondary: start joining (fast full sync) a resource this node has a disk for in the config"},
}

func init() {
	for _, v := range daemonVerbs {
		c := &command{name: v.name, args: "RES|all", summary: v.summary}
		c.run = func(args []string) error {
			fs := newFlagSet(c)
			var nf nodeFlags
			nf.register(fs)
			if err := parse(fs, args); err != nil {
				return err
			}
			if fs.NArg() != 1 {
				return usageError{fmt.Sprintf("%s needs one resource name (or all)", c.name)}
			}
			cl, err := nf.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			out, err := cl.Verb(ctx, fs.Arg(0), c.name)
			if out != "" && err == nil {
				fmt.Println(out)
			}
			return err
		}
		register(c)
	}
}
