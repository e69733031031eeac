package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/tharsis/tharsis/appliance"
	"github.com/tharsis/tharsis/replicate"
)

func init() {
	c := &command{name: "verify", args: "[--repair] [--stop] [--no-wait] RES|all",
		summary: "secondary: compare this node's disk with its source's while both run (online verify) and list the chunks that differ; --repair rewrites them"}
	c.run = func(args []string) error {
		fs := newFlagSet(c)
		var nf nodeFlags
		nf.register(fs)
		repair := fs.Bool("repair", false, "rewrite the chunks that differ with the source's (the disk stays consistent throughout)")
		stop := fs.Bool("stop", false, "stop the verify that runs (also a scheduled one)")
		noWait := fs.Bool("no-wait", false, "start the verify and return (tharsis view shows its progress and findings)")
		if err := parse(fs, args); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return usageError{"verify needs one resource name"}
		}
		cl, err := nf.client()
		if err != nil {
			return err
		}
		names, err := expandAll(cl, fs.Arg(0), func(r appliance.ResourceStatus) bool { return r.Replicated && r.Role == "secondary" })
		if err != nil {
			return err
		}
		return eachResource("verify", names, func(res string) (string, error) {
			return "", verifyOne(cl, res, *repair, *stop, *noWait)
		})
	}
	register(c)
}

// verifyOne runs verify on res and, unless noWait, follows it to the end.
func verifyOne(cl *appliance.Client, res string, repair, stop, noWait bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if stop {
		out, err := cl.Verb(ctx, res, "verify-stop")
		if err == nil {
			fmt.Println(out)
		}
		return err
	}
	before, err := verifyOf(ctx, cl, res)
	if err != nil {
		return err
	}
	verb := "verify"
	if repair {
		verb = "verify-repair"
	}
	out, err := cl.Verb(ctx, res, verb)
	if err != nil {
		return err
	}
	if noWait {
		fmt.Println(out)
		return nil
	}
	progressLine(out)
	var prev uint64
	if before != nil {
		prev = before.ID
	}
	r, err := followVerify(cl, res, prev)
	if err != nil {
		return err
	}
	fmt.Printf("%s: %s\n", res, verifySummary(r))
	switch {
	case r.State != replicate.VerifyDone:
		return silentError{}
	case r.DifferCount > r.Repaired:
		fmt.Printf("  run `tharsis verify --repair %s` to rewrite them with %s's\n", res, r.Source)
		return silentError{}
	}
	return nil
}

func progressLine(s string) {
	fmt.Fprintf(os.Stderr, "%s  %s\n", time.Now().Format("15:04:05"), s)
}

// verifyOf returns the resource's running or last verify on the node, or
// nil.
func verifyOf(ctx context.Context, cl *appliance.Client, res string) (*replicate.VerifyReport, error) {
	st, err := cl.Status(ctx)
	if err != nil {
		return nil, err
	}
	for _, r := range st.Resources {
		if r.Name != res {
			continue
		}
		if r.Replication == nil {
			return nil, nil
		}
		return r.Replication.Verify, nil
	}
	return nil, fmt.Errorf("node %s holds no resource %q", st.Node, res)
}

// followVerify polls the node's status until the verify after prev has
// ended, printing its progress; Ctrl-C stops the verify (and the command
// waits for its report).
func followVerify(cl *appliance.Client, res string, prev uint64) (*replicate.VerifyReport, error) {
	sig, stopSig := signalContext()
	defer stopSig()
	interrupted := sig.Done()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	var last string
	var lastAt time.Time
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		r, err := verifyOf(ctx, cl, res)
		cancel()
		if err != nil {
			return nil, err
		}
		if r != nil && r.ID > prev {
			if r.State != replicate.VerifyRunning {
				return r, nil
			}
			if line := verifySummary(r); line != last && time.Since(lastAt) >= 2*time.Second {
				progressLine(line)
				last, lastAt = line, time.Now()
			}
		}
		select {
		case <-tick.C:
		case <-interrupted:
			interrupted = nil
			stopSig() // a second Ctrl-C ends the command at once
			progressLine("interrupted: stopping the verify")
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			if _, err := cl.Verb(ctx, res, "verify-stop"); err != nil {
				progressLine(err.Error())
			}
			cancel()
		}
	}
}

// verifySummary describes a verify in one line (its findings included).
func verifySummary(r *replicate.VerifyReport) string {
	what := fmt.Sprintf("verify %d", r.ID)
	if r.Repair {
		what += " --repair"
	}
	if r.Scheduled {
		what += " (scheduled)"
	}
	if r.Source != "" {
		what += " against " + r.Source
	}
	chunks := fmt.Sprintf("%d chunk%s of %s", r.DifferCount, plural(r.DifferCount), humanBytes(r.ChunkSize))
	switch r.State {
	case replicate.VerifyRunning:
		s := fmt.Sprintf("%s: %s", what, bar(r.Compared, r.Total))
		if r.DifferCount > 0 {
			s += fmt.Sprintf(", %s differ so far", chunks)
		}
		if r.ETASeconds > 0 {
			s += fmt.Sprintf(", ETA %s", (time.Duration(r.ETASeconds) * time.Second).String())
		}
		return s
	case replicate.VerifyDone:
		s := fmt.Sprintf("%s done %s: compared %s in %s", what, r.Finished.Local().Format(time.DateTime), humanBytes(r.Compared),
			r.Finished.Sub(r.Started).Round(100*time.Millisecond))
		switch {
		case r.DifferCount == 0:
			return s + ", no chunk differs"
		case r.Repaired == r.DifferCount:
			return s + fmt.Sprintf(", %s differed and %s repaired: %s", chunks, pick(r.DifferCount == 1, "was", "were"), chunkList(r))
		case r.Repaired > 0:
			return s + fmt.Sprintf(", %s DIFFER (%d repaired): %s", chunks, r.Repaired, chunkList(r))
		}
		return s + fmt.Sprintf(", %s %s: %s", chunks, pick(r.DifferCount == 1, "DIFFERS", "DIFFER"), chunkList(r))
	}
	state := r.State.String()
	if r.State == replicate.VerifyFailed {
		state = "FAILED"
	}
	s := fmt.Sprintf("%s %s %s", what, state, r.Finished.Local().Format(time.DateTime))
	s += fmt.Sprintf(" after %s of %s", humanBytes(r.Compared), humanBytes(r.Total))
	if r.DifferCount > 0 {
		s += fmt.Sprintf(" (%s found different before: %s)", chunks, chunkList(r))
	}
	if r.Err != "" {
		s += ": " + r.Err
	}
	return s
}

// chunkList names the differing chunks with the byte offset of each.
func chunkList(r *replicate.VerifyReport) string {
	const show = 16
	var parts []string
	for i, c := range r.Differ {
		if i == show {
			break
		}
		parts = append(parts, fmt.Sprintf("%d (byte %d)", c, int64(c)*r.ChunkSize))
	}
	if more := r.DifferCount - len(parts); more > 0 {
		parts = append(parts, fmt.Sprintf("and %d more (`tharsis view --json`)", more))
	}
	return strings.Join(parts, ", ")
}

func plural(n int) string { return pick(n == 1, "", "s") }

func pick(cond bool, yes, no string) string {
	if cond {
		return yes
	}
	return no
}
