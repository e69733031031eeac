// Command serve exports a file as one AoE target on an interface with
// tharsis' aoe.Server, without the daemon: for bench/aoe.sh with
// BENCH_THARSIS=serve, and for profiling the target alone. With -log DIR
// the device is replicate.Primary over the file (the transaction log in
// DIR, as `tharsis run` does with replicated = true); put DIR on the same
// disk-backed filesystem as the file (not tmpfs, where fsync is free).
//
// With -cpuprofile FILE it writes a pprof CPU profile of its whole run
// (for bench/aoe-profile.sh).
//
// With -qdisc-bypass responses skip the interface's queueing discipline
// (aoe.Server.QdiscBypass; tcpdump no longer sees them).
//
//	serve -i IFACE -f FILE [-shelf 1] [-slot 1] [-write-cache] [-ro] [-bufcnt 64] [-log DIR [-sync]] [-qdisc-bypass] [-cpuprofile FILE]
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/tharsis/tharsis/aoe"
	"github.com/tharsis/tharsis/blockdev"
	"github.com/tharsis/tharsis/replicate"
)

// qdiscBypass is -qdisc-bypass.
var qdiscBypass = flag.Bool("qdisc-bypass", false, "send responses past the interface's queueing discipline (tcpdump misses them)")

func main() {
	iface := flag.String("i", "", "interface")
	file := flag.String("f", "", "file or block device to export")
	shelf := flag.Uint("shelf", 1, "shelf (major)")
	slot := flag.Uint("slot", 1, "slot (minor)")
	wc := flag.Bool("write-cache", false, "acknowledge writes before flushing (vblade's default)")
	ro := flag.Bool("ro", false, "read-only")
	bufcnt := flag.Int("bufcnt", 64, "buffer count advertised")
	logDir := flag.String("log", "", "replicate through a transaction log in this directory (replicate.Primary)")
	syncEvery := flag.Bool("sync", false, "with -log: acknowledge a write only after the log's fdatasync (TOML sync = true)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the run to this file")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "serve:", err)
			os.Exit(1)
		}
		defer f.Close()
		defer pprof.StopCPUProfile()
	}
	if err := run(*iface, *file, uint16(*shelf), uint8(*slot), *wc, *ro, *bufcnt, *logDir, *syncEvery); err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

func run(iface, file string, shelf uint16, slot uint8, wc, ro bool, bufcnt int, logDir string, syncEvery bool) error {
	if iface == "" || file == "" {
		return fmt.Errorf("usage: serve -i IFACE -f FILE [-write-cache] [-ro] [-log DIR [-sync]]")
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	disk, err := blockdev.OpenFile(file, ro)
	if err != nil {
		return err
	}
	var dev blockdev.Device = disk
	if logDir != "" {
		// The Primary owns the file and closes it.
		if dev, err = replicate.OpenPrimary(disk, replicate.Options{Dir: logDir, Node: "bench",
			Resource: "bench", Sync: syncEvery, Logger: log}); err != nil {
			disk.Close()
			return err
		}
	}
	defer dev.Close()
	srv, err := aoe.NewServer(iface, []aoe.TargetConfig{{Shelf: shelf, Slot: slot, Device: dev,
		WriteCache: wc, ReadOnly: ro, BufCnt: bufcnt}}, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	srv.QdiscBypass = *qdiscBypass
	fmt.Printf("pid %d: e%d.%d on %s\n", os.Getpid(), shelf, slot, iface)
	return srv.Serve(ctx)
}
