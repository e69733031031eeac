package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
)

// startPprof serves Go's profiling endpoints (/debug/pprof/) on the address
// in THARSIS_PPROF (e.g. 127.0.0.1:6060), for benchmarks and performance
// work; off when it is unset. They expose internals: bind to loopback.
func startPprof(log *slog.Logger) error {
	addr := os.Getenv("THARSIS_PPROF")
	if addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("THARSIS_PPROF=%s: cannot serve the profiler there (%w); unset it or pick a free address", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	log.Warn("profiler listening (THARSIS_PPROF)", "addr", ln.Addr().String())
	go http.Serve(ln, mux)
	return nil
}
