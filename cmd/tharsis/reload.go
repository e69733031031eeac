package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/tharsis/tharsis/appliance"
	"github.com/tharsis/tharsis/config"
)

func init() {
	c := &command{name: "reload", summary: "make the running daemon re-read its config file and apply what changed, live (a change it cannot apply live refuses the whole reload; nothing changes then); SIGHUP does the same"}
	c.run = func(args []string) error {
		fs := newFlagSet(c)
		var nf nodeFlags
		nf.register(fs)
		if err := parse(fs, args); err != nil {
			return err
		}
		if fs.NArg() != 0 {
			return usageError{"reload takes no arguments (it re-reads the file the daemon was started with)"}
		}
		// Check the file here first: the errors come with file:line
		// either way, but a broken file needs no daemon to say so.
		if _, err := config.Load(nf.config); err != nil {
			fmt.Fprintln(os.Stderr, err)
			fmt.Fprintln(os.Stderr, "the daemon keeps the config it runs with")
			return silentError{}
		}
		cl, err := nf.client()
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		out, err := cl.Reload(ctx)
		if err != nil {
			return err
		}
		fmt.Println(out)
		return nil
	}
	register(c)
}

// reloadOnHUP reloads d's config on every SIGHUP until ctx is done; the
// outcome is logged.
func reloadOnHUP(ctx context.Context, d *appliance.Daemon, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			if _, err := d.ReloadFile(); err != nil {
				log.Error("SIGHUP: config not reloaded; the daemon keeps the config it runs with", "err", err)
			}
		}
	}
}
