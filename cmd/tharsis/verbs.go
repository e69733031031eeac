package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/tharsis/tharsis/appliance"
	"github.com/tharsis/tharsis/config"
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
	{"join-resource", "secondary: start joining (fast full sync) a resource this node has a disk for in the config, or join again after leave-resource"},
	{"leave-resource", "secondary: stop holding the resource (no fetch, no replay, retention no longer waits for it); the disk is left as it is"},
	{"detach", "close the data device and leave it alone: a primary serves nothing (it stays the designated primary), a secondary keeps fetching the log and replays it on attach"},
	{"attach", "open the data device again: a primary replays its log and serves, a secondary replays what it fetched meanwhile"},
	{"up", "attach, then connect (a secondary fetches again)"},
	{"down", "disconnect (a secondary stops fetching), then detach"},
}

func init() {
	roleVerb := func(name, args, summary string, withFlags bool) {
		c := &command{name: name, args: args, summary: summary}
		c.run = func(argv []string) error {
			fs := newFlagSet(c)
			var nf nodeFlags
			nf.register(fs)
			var force, ignoreSync *bool
			if withFlags {
				force = fs.Bool("force", false, "take over without the current primary (it is dead or unreachable); writes it acknowledged but did not ship are lost")
				ignoreSync = fs.Bool("ignore-sync", false, "hand over even while a full sync runs to another node (it restarts from the new primary)")
			}
			timeout := fs.Duration("timeout", 60*time.Second, "give up after this long (the old primary then stays primary)")
			if err := parse(fs, argv); err != nil {
				return err
			}
			if fs.NArg() != 1 {
				return usageError{fmt.Sprintf("%s needs one resource name (or all)", c.name)}
			}
			cl, err := nf.client()
			if err != nil {
				return err
			}
			names, err := expandAll(cl, fs.Arg(0), func(r appliance.ResourceStatus) bool { return r.Replicated })
			if err != nil {
				return err
			}
			f, ig := force != nil && *force, ignoreSync != nil && *ignoreSync
			return eachResource(c.name, names, func(name string) (string, error) {
				ctx, cancel := context.WithTimeout(context.Background(), *timeout+time.Minute)
				defer cancel()
				return cl.Role(ctx, name, c.name, f, ig, *timeout, func(p string) {
					fmt.Fprintf(os.Stderr, "%s  %s\n", time.Now().Format("15:04:05"), p)
				})
			})
		}
		register(c)
	}
	roleVerb("primary", "[--force] [--ignore-sync] [--timeout D] RES|all", "make this node the resource's primary: a planned handover (the old primary seals its log, this node replays exactly to it), or with --force a takeover without the old primary", true)
	roleVerb("secondary", "RES|all", "give up the primary role: exports stop, the log is sealed; the resource has no primary until `primary` runs on a node", false)

	resize := &command{name: "resize", args: "RES|all [SIZE]", summary: "grow a replicated resource online (on its primary): to SIZE, or to the smallest disk of all nodes; every node's disk must have room"}
	resize.run = func(argv []string) error {
		fs := newFlagSet(resize)
		var nf nodeFlags
		nf.register(fs)
		if err := parse(fs, argv); err != nil {
			return err
		}
		if fs.NArg() < 1 || fs.NArg() > 2 {
			return usageError{"resize needs a resource name and optionally a size (e.g. 20GiB)"}
		}
		var size int64
		if fs.NArg() == 2 {
			n, err := config.ParseSize(fs.Arg(1))
			if err != nil {
				return usageError{fmt.Sprintf("resize: %v", err)}
			}
			size = n
		}
		cl, err := nf.client()
		if err != nil {
			return err
		}
		names, err := expandAll(cl, fs.Arg(0), func(r appliance.ResourceStatus) bool { return r.Replicated && r.Role == "primary" })
		if err != nil {
			return err
		}
		return eachResource("resize", names, func(name string) (string, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			return cl.Resize(ctx, name, size)
		})
	}
	register(resize)

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

func init() {
	del := &command{name: "delete-resource", args: "[--force] RES", summary: "end a replicated resource on this node for good: its log directory is removed, its disk left as it is; refused on the primary and while other nodes still hold it (leave-resource there first), unless --force"}
	del.run = func(argv []string) error {
		fs := newFlagSet(del)
		var nf nodeFlags
		nf.register(fs)
		force := fs.Bool("force", false, "delete even while other nodes hold the resource or cannot be asked")
		if err := parse(fs, argv); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return usageError{"delete-resource needs one resource name"}
		}
		cl, err := nf.client()
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		out, err := cl.Delete(ctx, fs.Arg(0), *force)
		if err != nil {
			return err
		}
		fmt.Println(out)
		return nil
	}
	register(del)

	create := &command{name: "create-resource", args: "RES", summary: "resources are created in the config, not by a verb: prints how"}
	create.run = func(argv []string) error {
		return usageError{`tharsis creates resources from the config, on every node at once:
  1. add a [resources.NAME] table with a disk for each node that holds it (and its exports) to the config
     of every node (` + "`tharsis config edit`" + ` checks it and reloads the daemon);
  2. ` + "`tharsis reload`" + ` on each node (config edit does it for its node): the resource opens at once;
     the config's primary serves it, the other nodes join it with a fast full sync (` + "`tharsis view`" + `).
To add a node to a resource later, add its disk to the resource the same way (marsadm join-resource).`}
	}
	register(create)
}

// expandAll returns name, or for "all" every resource of the node keep
// accepts (in the daemon's order).
func expandAll(cl *appliance.Client, name string, keep func(appliance.ResourceStatus) bool) ([]string, error) {
	if name != "all" {
		return []string{name}, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := cl.Status(ctx)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, r := range st.Resources {
		if keep(r) {
			names = append(names, r.Name)
		}
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("node %s holds no resource this verb applies to", st.Node)
	}
	return names, nil
}

// eachResource runs fn on each resource, one after the other, printing
// each result ("RES: error" for a failure when there are several); it
// fails if any failed.
func eachResource(verb string, names []string, fn func(name string) (string, error)) error {
	var failed []string
	for _, name := range names {
		out, err := fn(name)
		if err != nil {
			if len(names) == 1 {
				return err
			}
			fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
			failed = append(failed, name)
			continue
		}
		if out != "" {
			fmt.Println(out)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%s failed for %s", verb, strings.Join(failed, ", "))
	}
	return nil
}
