// Command serve exports a file as one AoE target on an interface with
// tharsis' aoe.Server, for bench/aoe.sh (until `tharsis run` serves AoE).
//
//	serve -i IFACE -f FILE [-shelf 1] [-slot 1] [-write-cache] [-ro] [-bufcnt 64]
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/tharsis/tharsis/aoe"
	"github.com/tharsis/tharsis/blockdev"
)

func main() {
	iface := flag.String("i", "", "interface")
	file := flag.String("f", "", "file or block device to export")
	shelf := flag.Uint("shelf", 1, "shelf (major)")
	slot := flag.Uint("slot", 1, "slot (minor)")
	wc := flag.Bool("write-cache", false, "acknowledge writes before flushing (vblade's default)")
	ro := flag.Bool("ro", false, "read-only")
	bufcnt := flag.Int("bufcnt", 64, "buffer count advertised")
	flag.Parse()
	if err := run(*iface, *file, uint16(*shelf), uint8(*slot), *wc, *ro, *bufcnt); err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
}

func run(iface, file string, shelf uint16, slot uint8, wc, ro bool, bufcnt int) error {
	if iface == "" || file == "" {
		return fmt.Errorf("usage: serve -i IFACE -f FILE [-write-cache] [-ro]")
	}
	dev, err := blockdev.OpenFile(file, ro)
	if err != nil {
		return err
	}
	defer dev.Close()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv, err := aoe.NewServer(iface, []aoe.TargetConfig{{Shelf: shelf, Slot: slot, Device: dev,
		WriteCache: wc, ReadOnly: ro, BufCnt: bufcnt}}, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fmt.Printf("pid %d: e%d.%d on %s\n", os.Getpid(), shelf, slot, iface)
	return srv.Serve(ctx)
}
