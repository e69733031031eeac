// Command guestio runs inside the vm-tests guest (built static, copied into
// the initramfs as /bin/guestio): it writes and verifies the load of
// package writeload on a mounted filesystem and measures I/O stalls with
// CLOCK_MONOTONIC timestamps around each write+fsync (busybox date has no
// sub-second format).
//
//	guestio now                                  monotonic time in ns
//	guestio write -dir D -tag T                  write until /tmp/T.stop exists; exit 2 on an I/O error
//	guestio last -tag T [-begun]                 last completed (or begun) write number
//	guestio wait -tag T -after NS -n N -timeout D  until N writes completed after NS
//	guestio stats -tag T -from NS -to NS         writeload.Stats of the window
//	guestio verify -dir D -tag T [-skip-after I -skip-upto J]  compare the files with what was written
//	guestio nbd -addr HOST:PORT -name N [-index I -req-timeout D -dead-timeout D]  attach /dev/nbdI and keep it attached (nbd.go)
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/tharsis/tharsis/vm-tests/writeload"
	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: guestio now|write|last|wait|stats|verify|nbd [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	dir := fs.String("dir", "", "the load's directory")
	tag := fs.String("tag", "", "names the log /tmp/TAG.log and the stop file /tmp/TAG.stop")
	from := fs.Int64("from", 0, "window start (guestio now)")
	to := fs.Int64("to", 0, "window end (guestio now)")
	after := fs.Int64("after", 0, "count writes completed after this time (guestio now)")
	n := fs.Int("n", 1, "writes to wait for")
	timeout := fs.Duration("timeout", time.Minute, "give up waiting after this long")
	skipAfter := fs.Int("skip-after", -1, "verify: files last written by a write after this number...")
	skipUpto := fs.Int("skip-upto", -1, "verify: ...and up to this one are not checked (lost or half done in a crash)")
	begun := fs.Bool("begun", false, "last: the last write begun, not completed")
	addr := fs.String("addr", "", "nbd: the server's host:port")
	name := fs.String("name", "", "nbd: the export name")
	index := fs.Int("index", 0, "nbd: attach /dev/nbdINDEX")
	reqTimeout := fs.Duration("req-timeout", 5*time.Second, "nbd: a request unanswered this long is sent again (whole seconds)")
	deadTimeout := fs.Duration("dead-timeout", 120*time.Second, "nbd: how long requests wait for a new connection (whole seconds)")
	fs.Parse(os.Args[2:])
	logPath := "/tmp/" + *tag + ".log"
	var err error
	switch os.Args[1] {
	case "now":
		fmt.Println(now())
	case "write":
		err = write(*dir, logPath, "/tmp/"+*tag+".stop")
	case "last":
		var l *writeload.Log
		if l, err = readLog(logPath); err == nil {
			if *begun {
				fmt.Println(l.LastBegun())
			} else {
				fmt.Println(l.LastDone())
			}
		}
	case "wait":
		err = wait(logPath, *after, *n, *timeout)
	case "stats":
		var l *writeload.Log
		if l, err = readLog(logPath); err == nil {
			fmt.Println(l.Window(*from, *to))
		}
	case "verify":
		err = verify(*dir, logPath, *skipAfter, *skipUpto)
	case "nbd":
		err = nbdAttach(nbdOpts{addr: *addr, name: *name, index: *index, timeout: *reqTimeout, dead: *deadTimeout})
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "guestio:", err)
		os.Exit(1)
	}
}

func now() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

func readLog(p string) (*writeload.Log, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return writeload.Parse(f)
}

// write runs the load until the stop file appears. An error ends it with
// exit status 2 after logging it.
func write(dir, logPath, stop string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	start := 0
	if l, err := readLog(logPath); err == nil {
		start = l.LastBegun() + 1
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	for i := start; ; i++ {
		if _, err := os.Stat(stop); err == nil {
			return nil
		}
		t0 := now()
		fmt.Fprintf(lf, "b %d %d\n", i, t0)
		if err := writeOne(filepath.Join(dir, writeload.Name(i)), writeload.Content(i), d); err != nil {
			fmt.Fprintf(lf, "e %d %d %v\n", i, now(), err)
			fmt.Fprintf(os.Stderr, "guestio: write %d: %v\n", i, err)
			os.Exit(2)
		}
		fmt.Fprintf(lf, "d %d %d %d\n", i, t0, now())
	}
}

func writeOne(path string, data []byte, dir *os.File) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fsync: %w", err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := dir.Sync(); err != nil {
		return fmt.Errorf("fsync of the directory: %w", err)
	}
	return nil
}

func wait(logPath string, after int64, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		l, err := readLog(logPath)
		if errors.Is(err, os.ErrNotExist) { // the writer has not started yet
			l, err = &writeload.Log{}, nil
		}
		if err != nil {
			return err
		}
		if len(l.Errors) > 0 {
			return fmt.Errorf("the writer failed: %s", l.Errors[0])
		}
		got := l.DoneAfter(after)
		if got >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d writes completed within %s (last completed %d, last begun %d)", got, n, timeout, l.LastDone(), l.LastBegun())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// verify reads every file the log says must be there and compares it with
// what was written; it prints a summary and fails on any difference.
func verify(dir, logPath string, skipAfter, skipUpto int) error {
	l, err := readLog(logPath)
	if err != nil {
		return err
	}
	if l.LastBegun() != l.LastDone() {
		return fmt.Errorf("write %d has not completed: stop the load first", l.LastBegun())
	}
	want := writeload.Expect(l.LastDone(), skipAfter, skipUpto)
	names := make([]string, 0, len(want))
	for name := range want {
		names = append(names, name)
	}
	sort.Strings(names)
	var bad []string
	for _, name := range names {
		i := want[name]
		got, err := os.ReadFile(filepath.Join(dir, name))
		switch {
		case err != nil:
			bad = append(bad, fmt.Sprintf("%s (write %d): %v", name, i, err))
		case !bytes.Equal(got, writeload.Content(i)):
			bad = append(bad, fmt.Sprintf("%s (write %d): %d bytes differ from the %d written", name, i, len(got), writeload.Size(i)))
		}
	}
	fmt.Printf("checked=%d bad=%d last=%d skipped=(%d,%d]\n", len(names), len(bad), l.LastDone(), skipAfter, skipUpto)
	for _, b := range bad {
		fmt.Println("bad", b)
	}
	if len(bad) > 0 {
		return errors.New("files differ from what was written")
	}
	return nil
}
