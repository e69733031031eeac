package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/tharsis/tharsis/appliance"
	"github.com/tharsis/tharsis/config"
)

func init() {
	c := &command{name: "view", args: "[RES]", summary: "show this node's resources, roles, exports and log (like mars-status)"}
	c.run = func(args []string) error {
		fs := newFlagSet(c)
		var nf nodeFlags
		nf.register(fs)
		asJSON := fs.Bool("json", false, "print the status as JSON")
		if err := parse(fs, args); err != nil {
			return err
		}
		cl, err := nf.client()
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		st, err := cl.Status(ctx)
		if err != nil {
			return err
		}
		if res := fs.Arg(0); res != "" {
			var keep []appliance.ResourceStatus
			for _, r := range st.Resources {
				if r.Name == res {
					keep = append(keep, r)
				}
			}
			if len(keep) == 0 {
				return fmt.Errorf("node %s holds no resource %q", st.Node, res)
			}
			st.Resources = keep
		}
		if *asJSON {
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(st)
		}
		renderStatus(os.Stdout, st)
		return nil
	}
	register(c)
}

func renderStatus(w io.Writer, st *appliance.Status) {
	fmt.Fprintf(w, "node %s, up %s\n", st.Node, time.Since(st.Started).Round(time.Second))
	if len(st.Resources) == 0 {
		fmt.Fprintln(w, "  holds no resources")
	}
	for _, r := range st.Resources {
		repl := "replicated (transaction log)"
		if !r.Replicated {
			repl = "not replicated: writes go straight to the disk"
		}
		fmt.Fprintf(w, "\nresource %s: %s, %s\n", r.Name, r.Role, config.FormatSize(r.Size))
		fmt.Fprintf(w, "  disk    %s\n  mode    %s\n", r.Disk, repl)
		for _, e := range r.Exports {
			var flags []string
			if e.ReadOnly {
				flags = append(flags, "read-only")
			}
			if e.Kind == "aoe" {
				if e.WriteCache {
					flags = append(flags, "write cache ON: writes acknowledged before they are durable")
				} else {
					flags = append(flags, "writes acknowledged when durable")
				}
			}
			extra := ""
			if len(flags) > 0 {
				extra = " (" + strings.Join(flags, ", ") + ")"
			}
			fmt.Fprintf(w, "  export  %-3s %s on %s%s\n", e.Kind, e.Name, e.Where, extra)
		}
		if l := r.Log; l != nil {
			fmt.Fprintf(w, "  log     writing %s; written %s, applied %s\n", l.Current, l.Written, l.Applied)
			var total int64
			for _, s := range l.Segments {
				total += s.Size
			}
			fmt.Fprintf(w, "          %d segments, %s; a restart would replay %s\n", len(l.Segments), config.FormatSize(total), config.FormatSize(l.PendingReplay))
			if l.Err != "" {
				fmt.Fprintf(w, "  ERROR   %s\n", l.Err)
			}
		}
	}
}
