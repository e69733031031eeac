// Command serve exports one device over NBD with package nbd, for the
// side-by-side benchmark (bench/nbd.sh) and for trying clients by hand.
//
//	go run ./bench/nbd/serve -mem 256MiB -listen 127.0.0.1:10809 -name bench
//	go run ./bench/nbd/serve -file /dev/shm/disk.img -listen 127.0.0.1:10810
//	go run ./bench/nbd/serve -mem 256MiB -tls-cert N.crt -tls-key N.key   # tls = "on"
//	go run ./bench/nbd/serve -mem 256MiB -cpuprofile cpu.pprof            # profile until stopped
//
// It prints "ready" on stdout once it listens and stops on SIGINT/SIGTERM.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tharsis/tharsis/blockdev"
	"github.com/tharsis/tharsis/nbd"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
}

func run() error {
	mem := flag.String("mem", "", "serve an in-memory device of this size (e.g. 256MiB)")
	file := flag.String("file", "", "serve this existing file or block device")
	listen := flag.String("listen", "127.0.0.1:10809", "TCP address to listen on")
	name := flag.String("name", "", "export name (the empty name is the default export)")
	readOnly := flag.Bool("ro", false, "export read-only")
	verbose := flag.Bool("v", false, "log connections (and each TLS connection's version and cipher)")
	tlsCert := flag.String("tls-cert", "", "serve the export with tls = \"on\" (plain and TLS clients) with this certificate (PEM)")
	tlsKey := flag.String("tls-key", "", "the key of -tls-cert (PEM)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile (go tool pprof) to this file until the server stops")
	flag.Parse()

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fmt.Errorf("-cpuprofile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("-cpuprofile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}

	var dev blockdev.Device
	switch {
	case *mem != "" && *file == "":
		size, err := parseSize(*mem)
		if err != nil {
			return err
		}
		dev = blockdev.NewMemory(size)
	case *file != "" && *mem == "":
		f, err := blockdev.OpenFile(*file, *readOnly)
		if err != nil {
			return err
		}
		defer f.Close()
		dev = f
	default:
		return errors.New("give exactly one of -mem SIZE or -file PATH")
	}

	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelDebug
	}
	srv := &nbd.Server{Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))}
	e := nbd.Export{Name: *name, Description: "tharsis benchmark export", Device: dev, ReadOnly: *readOnly}
	if *tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(*tlsCert, *tlsKey)
		if err != nil {
			return fmt.Errorf("-tls-cert/-tls-key: %w", err)
		}
		srv.SetTLSConfig(nbd.ServerTLSConfig(cert, nil))
		e.TLS = nbd.TLSOn
	}
	srv.SetExports([]nbd.Export{e})

	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Println("ready", l.Addr())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return err
	}
	return dev.Flush()
}

// parseSize parses a byte count with an optional binary unit (KiB, MiB,
// GiB, also K, M, G).
func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("bad size %q: want a positive number with an optional unit such as 256MiB", s)
	}
	return n * mult, nil
}
