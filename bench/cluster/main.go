// Command cluster is the Go side of bench/cluster.sh: it makes the disk
// images of the full-sync run and watches the nodes' control sockets (the
// JSON `tharsis view --json --raw` prints) to time catch-up, sample lag and wait
// for a sync. It prints key=value lines for the script.
//
//	cluster disks -size 1GiB -chunk 1MiB -percent 1 -a alpha.img -b beta.img
//	cluster caught-up -primary A.sock -secondary B.sock -timeout 10m
//	cluster lag -secondary B.sock -duration 30s
//	cluster consistent -secondary B.sock -timeout 10m
//	cluster wan -a v-alpha -b v-beta -delay 25ms -rate-mbit 1000   (netem stand-in)
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"slices"
	"time"

	"github.com/tharsis/tharsis/config"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: cluster disks|caught-up|lag|consistent|wan [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "disks":
		err = disks(os.Args[2:])
	case "caught-up":
		err = caughtUp(os.Args[2:])
	case "lag":
		err = lag(os.Args[2:])
	case "consistent":
		err = consistent(os.Args[2:])
	case "wan":
		err = wan(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/cluster:", err)
		os.Exit(1)
	}
}

// disks writes image a (random bytes) and image b, a copy of a where
// percent % of the chunks (evenly spread) differ by one byte.
func disks(args []string) error {
	fs := flag.NewFlagSet("disks", flag.ExitOnError)
	sizeS := fs.String("size", "1GiB", "image size")
	chunkS := fs.String("chunk", "1MiB", "chunk size of the full sync")
	percent := fs.Float64("percent", 1, "percentage of chunks that differ in b")
	a := fs.String("a", "", "image of the sync source (random)")
	b := fs.String("b", "", "image of the joining node (a copy of a with differing chunks)")
	fs.Parse(args)
	size, err := config.ParseSize(*sizeS)
	if err != nil {
		return err
	}
	chunk, err := config.ParseSize(*chunkS)
	if err != nil {
		return err
	}
	fa, err := os.Create(*a)
	if err != nil {
		return err
	}
	defer fa.Close()
	fb, err := os.Create(*b)
	if err != nil {
		return err
	}
	defer fb.Close()
	nchunks := size / chunk
	ndiff := int64(float64(nchunks)*(*percent)/100 + 0.5)
	every := nchunks
	if ndiff > 0 {
		every = nchunks / ndiff
	}
	rng := rand.NewChaCha8([32]byte{1})
	buf := make([]byte, chunk)
	var differ int64
	for i := range nchunks {
		rng.Read(buf)
		if _, err := fa.Write(buf); err != nil {
			return err
		}
		if ndiff > 0 && i%every == every/2 && differ < ndiff {
			buf[len(buf)/2] ^= 0xff
			differ++
		}
		if _, err := fb.Write(buf); err != nil {
			return err
		}
	}
	fmt.Printf("chunks=%d differing_chunks=%d differing_bytes=%d\n", nchunks, differ, differ*chunk)
	return nil
}

// replStatus is the replication status of a resource (replicate.ResourceStatus).
type replStatus struct {
	Role       string   `json:"role"`
	End        position `json:"end"`
	Applied    position `json:"applied"`
	Consistent bool     `json:"consistent"`
	Source     string   `json:"source"`
	LagBytes   int64    `json:"lag_bytes"`
	LagSeconds float64  `json:"lag_seconds"`
	Sync       *struct {
		State       string `json:"state"`
		Total       int64  `json:"total_bytes"`
		Transferred int64  `json:"transferred_bytes"`
	} `json:"sync"`
	Err string `json:"error"`
}

type position struct {
	Seq uint64 `json:"seq"`
}

// status reads the replication status of the node's first resource from its
// control socket. It finds it by shape (the object with lag_bytes, at the
// resource's level or one below) and falls back to the log's written
// position for a primary without one.
func status(sock string) (*replStatus, error) {
	// No keep-alive: each call has its own transport, and an idle
	// connection left behind would hold one of the daemon's control
	// connections (control_max_connections) until its idle timeout.
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	resp, err := hc.Get("http://tharsis/v0/status")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	var st struct {
		Resources []map[string]json.RawMessage `json:"resources"`
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, err
	}
	if len(st.Resources) == 0 {
		return nil, errors.New(sock + ": the node holds no resource")
	}
	res := st.Resources[0]
	var r replStatus
	if _, ok := res["lag_bytes"]; ok {
		b, _ := json.Marshal(res)
		return &r, json.Unmarshal(b, &r)
	}
	for _, v := range res {
		var sub map[string]json.RawMessage
		if json.Unmarshal(v, &sub) == nil && sub["lag_bytes"] != nil {
			return &r, json.Unmarshal(v, &r)
		}
	}
	if l := res["log"]; l != nil {
		var lg struct {
			Written position `json:"written"`
		}
		if err := json.Unmarshal(l, &lg); err == nil {
			r.End, r.Applied, r.Role, r.Consistent = lg.Written, lg.Written, "primary", true
			return &r, nil
		}
	}
	return nil, fmt.Errorf("%s: %w", sock, errNoRepl)
}

// errNoRepl: the daemon reports no replication state at all.
var errNoRepl = errors.New("the status has no replication state: this tharsis does not run replication")

// giveUp reports whether err is worth waiting out: the daemon not
// answering yet is, a daemon without replication for 15 s is not.
func giveUp(err error, start time.Time) bool {
	return errors.Is(err, errNoRepl) && time.Since(start) > 15*time.Second
}

// caughtUp waits until the secondary replayed the primary's whole log and
// prints how long that took.
func caughtUp(args []string) error {
	fs := flag.NewFlagSet("caught-up", flag.ExitOnError)
	p := fs.String("primary", "", "primary's control socket")
	s := fs.String("secondary", "", "secondary's control socket")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after")
	fs.Parse(args)
	start := time.Now()
	var last string
	for time.Since(start) < *timeout {
		pr, err1 := status(*p)
		sr, err2 := status(*s)
		switch {
		case giveUp(err1, start):
			return err1
		case giveUp(err2, start):
			return err2
		case err1 != nil:
			last = err1.Error()
		case err2 != nil:
			last = err2.Error()
		case sr.Consistent && sr.Applied.Seq >= pr.End.Seq && sr.LagBytes == 0:
			fmt.Printf("caught_up_seconds=%.3f seq=%d\n", time.Since(start).Seconds(), sr.Applied.Seq)
			return nil
		default:
			last = fmt.Sprintf("secondary at %d, primary at %d, lag %d bytes, source %q, error %q", sr.Applied.Seq, pr.End.Seq, sr.LagBytes, sr.Source, sr.Err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("not caught up after %s: %s", *timeout, last)
}

// lag samples the secondary's lag every interval for duration and prints the
// maximum and percentiles.
func lag(args []string) error {
	fs := flag.NewFlagSet("lag", flag.ExitOnError)
	s := fs.String("secondary", "", "secondary's control socket")
	duration := fs.Duration("duration", 30*time.Second, "how long to sample")
	interval := fs.Duration("interval", 100*time.Millisecond, "sampling interval")
	fs.Parse(args)
	var secs []float64
	var maxBytes int64
	end := time.Now().Add(*duration)
	for time.Now().Before(end) {
		r, err := status(*s)
		if err != nil {
			return err
		}
		secs = append(secs, r.LagSeconds)
		maxBytes = max(maxBytes, r.LagBytes)
		time.Sleep(*interval)
	}
	slices.Sort(secs)
	pct := func(p float64) float64 { return secs[min(len(secs)-1, int(p*float64(len(secs))))] }
	fmt.Printf("samples=%d lag_p50_s=%.3f lag_p99_s=%.3f lag_max_s=%.3f lag_max_bytes=%d\n", len(secs), pct(0.5), pct(0.99), secs[len(secs)-1], maxBytes)
	return nil
}

// consistent waits until the secondary's sync is done and it is consistent,
// and prints the time and the largest transferred count view showed.
func consistent(args []string) error {
	fs := flag.NewFlagSet("consistent", flag.ExitOnError)
	s := fs.String("secondary", "", "secondary's control socket")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after")
	fs.Parse(args)
	start := time.Now()
	var transferred int64 = -1
	var last string
	for time.Since(start) < *timeout {
		r, err := status(*s)
		if giveUp(err, start) {
			return err
		}
		if err != nil {
			last = err.Error()
		} else {
			if r.Sync != nil {
				transferred = max(transferred, r.Sync.Transferred)
			}
			if r.Consistent {
				fmt.Printf("sync_seconds=%.3f transferred_bytes=%d\n", time.Since(start).Seconds(), transferred)
				return nil
			}
			last = fmt.Sprintf("sync %+v, error %q", r.Sync, r.Err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("not consistent after %s: %s", *timeout, last)
}
