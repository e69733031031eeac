// Command load drives one AoE target with random full-frame READ EXT or
// WRITE EXT requests at a fixed window, using tharsis' aoe.Initiator, and
// prints "requests bytes seconds errors" on one line, for bench/aoe.sh.
//
//	load -i IFACE [-op read|write] [-window 16] [-duration 5s]
package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"time"

	"github.com/tharsis/tharsis/aoe"
)

func main() {
	iface := flag.String("i", "", "interface facing the target")
	op := flag.String("op", "read", "read or write")
	window := flag.Int("window", 16, "requests outstanding")
	dur := flag.Duration("duration", 5*time.Second, "how long to run")
	flag.Parse()
	if err := run(*iface, *op == "write", *window, *dur); err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
}

func run(iface string, write bool, window int, dur time.Duration) error {
	in, err := aoe.NewInitiator(iface)
	if err != nil {
		return err
	}
	defer in.Close()
	var ts []aoe.TargetInfo
	for range 20 { // the target may still be starting: bounded retries
		if ts, err = in.Discover(context.Background(), 250*time.Millisecond); err != nil {
			return err
		}
		if len(ts) > 0 {
			break
		}
	}
	if len(ts) == 0 {
		return fmt.Errorf("no AoE target answered on %s", iface)
	}
	t := ts[0]
	n := t.Payload / aoe.SectorSize
	span := t.Sectors - uint64(n)
	ios := make([]aoe.IO, window)
	free := make([]*aoe.IO, 0, window)
	for i := range ios {
		ios[i].Buf = make([]byte, t.Payload)
		ios[i].Write = write
		if write {
			rand.Read(ios[i].Buf)
		}
		free = append(free, &ios[i])
	}
	var reqs, errs int64
	deadline := time.Now().Add(dur)
	start := time.Now()
	check := 0
	stopped := false
	err = in.Pipe(context.Background(), &t, window, func() *aoe.IO {
		if stopped || len(free) == 0 {
			return nil
		}
		if check++; check%64 == 0 && time.Now().After(deadline) {
			stopped = true
			return nil
		}
		io := free[len(free)-1]
		free = free[:len(free)-1]
		io.LBA = mrand.Uint64N(span)
		return io
	}, func(io *aoe.IO) {
		if io.Err != nil {
			errs++
		} else {
			reqs++
		}
		free = append(free, io)
		if !stopped && time.Now().After(deadline) {
			stopped = true
		}
	})
	secs := time.Since(start).Seconds()
	if err != nil {
		return err
	}
	fmt.Printf("%d %d %.3f %d\n", reqs, reqs*int64(t.Payload), secs, errs)
	return nil
}
