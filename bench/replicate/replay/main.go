// Command replay measures how long recovery takes to replay a transaction
// log: it writes -log bytes through a replicate.Primary onto a file device,
// closes it, forgets the persisted applied position (as if the daemon had
// died before any checkpoint), and times replicate.OpenPrimary.
//
//	go run ./bench/replicate/replay -dir /var/tmp -log 1GiB
package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/tharsis/tharsis/blockdev"
	"github.com/tharsis/tharsis/replicate"
)

func main() {
	dir := flag.String("dir", os.TempDir(), "directory for the data file and the log (a real disk for real figures)")
	logMiB := flag.Int64("log-mib", 1024, "MiB of log to replay")
	devMiB := flag.Int64("dev-mib", 256, "MiB of the data device")
	bs := flag.Int("bs", 64<<10, "bytes per write record")
	flag.Parse()
	if err := run(*dir, *logMiB<<20, *devMiB<<20, *bs); err != nil {
		fmt.Fprintln(os.Stderr, "replay:", err)
		os.Exit(1)
	}
}

func run(base string, logBytes, devSize int64, bs int) error {
	work, err := os.MkdirTemp(base, "tharsis-replay-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	img := filepath.Join(work, "data.img")
	logDir := filepath.Join(work, "log")
	data, err := blockdev.CreateFile(img, devSize)
	if err != nil {
		return err
	}
	opts := replicate.Options{Dir: logDir, Node: "bench", Resource: "bench", CheckpointInterval: time.Hour}
	p, err := replicate.OpenPrimary(data, opts)
	if err != nil {
		return err
	}
	buf := make([]byte, bs)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range buf {
		buf[i] = byte(r.Uint32())
	}
	start := time.Now()
	var written int64
	for written < logBytes {
		off := r.Int64N(devSize/int64(bs)) * int64(bs)
		if _, err := p.WriteAt(buf, off); err != nil {
			return err
		}
		written += int64(bs)
	}
	wrote := time.Since(start)
	if err := p.Close(); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(logDir, "applied")); err != nil {
		return err
	}
	// Drop the page cache of the log when we may, so the log is read from disk.
	os.WriteFile("/proc/sys/vm/drop_caches", []byte("1\n"), 0)

	data, err = blockdev.OpenFile(img, false)
	if err != nil {
		return err
	}
	start = time.Now()
	p, err = replicate.OpenPrimary(data, opts)
	if err != nil {
		return err
	}
	took := time.Since(start)
	n := p.Replayed()
	if err := p.Close(); err != nil {
		return err
	}
	fmt.Printf("wrote %d MiB of log in %d-byte records in %v (%.0f MiB/s, one writer)\n",
		written>>20, bs, wrote.Round(time.Millisecond), float64(written)/(1<<20)/wrote.Seconds())
	fmt.Printf("replay_records=%d replay_mib=%d replay_seconds=%.2f replay_mib_per_s=%.0f\n",
		n, written>>20, took.Seconds(), float64(written)/(1<<20)/took.Seconds())
	return nil
}
