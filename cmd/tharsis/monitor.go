package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/tharsis/tharsis/appliance"
	"github.com/tharsis/tharsis/config"
)

// Exit codes of `tharsis check` (the monitoring-plugins convention).
const (
	checkOK       = 0
	checkWarning  = 1
	checkCritical = 2
	checkUnknown  = 3
)

var checkNames = [...]string{"OK", "WARNING", "CRITICAL", "UNKNOWN"}

// checkLimits are the thresholds of `tharsis check` (0: not checked).
type checkLimits struct {
	warnBytes, critBytes     int64
	warnSeconds, critSeconds float64
}

// osExit ends the process; tests replace it.
var osExit = os.Exit

func init() {
	c := &command{name: "check", args: "[RES]",
		summary: "monitoring plugin (Nagios, Icinga): one status line, exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN"}
	c.run = func(args []string) error {
		fs := newFlagSet(c)
		var nf nodeFlags
		nf.register(fs)
		var lim checkLimits
		warnLag := fs.String("warn-lag", "64MiB", "WARNING when a node's disk is this far behind the primary's log end (0: off)")
		critLag := fs.String("crit-lag", "0", "CRITICAL when a node's disk is this far behind (0: off)")
		fs.Float64Var(&lim.warnSeconds, "warn-lag-seconds", 60, "WARNING when a node's disk lacks writes older than this (0: off)")
		fs.Float64Var(&lim.critSeconds, "crit-lag-seconds", 0, "CRITICAL when a node's disk lacks writes older than this (0: off)")
		stale := fs.Duration("stale", appliance.DefaultStaleAfter, "a peer's status older than this counts as unreachable")
		timeout := fs.Duration("timeout", 10*time.Second, "UNKNOWN when the daemon does not answer within this time")
		fs.SetOutput(io.Discard)
		err := parse(fs, args)
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stdout)
			fs.Usage()
			return err
		}
		if err == nil && fs.NArg() > 1 {
			err = errors.New("check takes at most one resource name")
		}
		if err == nil {
			lim.warnBytes, err = parseSizeFlag("--warn-lag", *warnLag)
		}
		if err == nil {
			lim.critBytes, err = parseSizeFlag("--crit-lag", *critLag)
		}
		if err != nil {
			fmt.Printf("THARSIS UNKNOWN - %v (see `tharsis check --help`)\n", err)
			osExit(checkUnknown)
			return nil
		}
		code, line := runCheck(&nf, fs.Arg(0), lim, *stale, *timeout)
		fmt.Println(line)
		osExit(code)
		return nil
	}
	register(c)
}

func parseSizeFlag(name, v string) (int64, error) {
	if v == "0" {
		return 0, nil
	}
	n, err := config.ParseSize(v)
	if err != nil {
		return 0, fmt.Errorf("bad %s %q: %w", name, v, err)
	}
	return n, nil
}

// runCheck asks the daemon and judges; UNKNOWN when it does not answer.
func runCheck(nf *nodeFlags, res string, lim checkLimits, stale, timeout time.Duration) (int, string) {
	cl, err := nf.client()
	if err != nil {
		return checkUnknown, "THARSIS UNKNOWN - " + err.Error()
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	st, err := fetchStatus(ctx, cl, res)
	if err != nil {
		return checkUnknown, "THARSIS UNKNOWN - " + err.Error()
	}
	return judge(appliance.NewView(st, stale), lim)
}

// judge returns the exit code and the status line (with perfdata) for v.
func judge(v *appliance.View, lim checkLimits) (int, string) {
	code := checkOK
	var problems, oks, perf []string
	report := func(c int, format string, a ...any) {
		code = max(code, c)
		problems = append(problems, fmt.Sprintf(format, a...))
	}
	for _, r := range v.Resources {
		res := r.Name
		if !r.Replicated {
			oks = append(oks, res+": not replicated")
			continue
		}
		if r.Log != nil && r.Log.Error != "" {
			report(checkCritical, "%s: the log on %s failed", res, v.Node)
		}
		if r.ExportError != "" {
			report(checkCritical, "%s: an export failed to start on %s", res, v.Node)
		}
		switch {
		case r.DesignatedPrimary == "":
			report(checkCritical, "%s: no designated primary", res)
		case !r.PrimaryReachable:
			report(checkCritical, "%s: primary %s unreachable", res, r.DesignatedPrimary)
		}
		if r.Emergency {
			report(checkCritical, "%s: EMERGENCY (log filesystem full, writes bypass the log)", res)
		}
		if r.AckFallback {
			report(checkWarning, "%s: ASYNCHRONOUS FALLBACK (fewer than ack_secondaries secondaries acknowledge writes)", res)
		}
		for _, sb := range r.SplitBrains {
			report(checkCritical, "%s: SPLIT BRAIN between %s and %s", res, sb.Nodes[0], sb.Nodes[1])
		}
		worst := int64(0)
		for _, n := range r.Nodes {
			who := res + "/" + n.Node
			switch n.DiskState {
			case appliance.DiskInconsistent:
				report(checkCritical, "%s inconsistent", who)
			case appliance.DiskSyncing:
				pct := 0.0
				if s := n.Sync; s != nil && s.Total > 0 {
					pct = 100 * float64(s.Compared) / float64(s.Total)
				}
				report(checkWarning, "%s syncing (%.0f%%)", who, pct)
			case appliance.DiskUnknown:
				if n.Node != r.DesignatedPrimary { // else: "primary unreachable"
					report(checkWarning, "%s never reported", who)
				}
			}
			if n.Node != r.DesignatedPrimary && n.Role != "unknown" && !n.Reachable {
				report(checkWarning, "%s unreachable for %s", who, appliance.AgeText(n.StatusAgeSeconds))
			} else if n.Stale && n.Role != "unknown" && n.Node != r.DesignatedPrimary {
				report(checkWarning, "%s status %s old", who, appliance.AgeText(n.StatusAgeSeconds))
			}
			var paused []string
			for _, sw := range []struct {
				on   bool
				name string
			}{{n.FetchPaused, "fetch"}, {n.ReplayPaused, "replay"}, {n.SyncPaused, "sync"}} {
				if sw.on {
					paused = append(paused, sw.name)
				}
			}
			if len(paused) > 0 {
				report(checkWarning, "%s %s paused", who, strings.Join(paused, "+"))
			}
			if n.Detached {
				report(checkWarning, "%s detached", who)
			}
			if n.StoppedAtMark != nil {
				report(checkWarning, "%s stopped at an emergency mark", who)
			}
			if n.DiskState == appliance.DiskSplitBrain || n.Role == "unknown" {
				continue
			}
			behind := humanBytes(n.BehindBytes)
			switch {
			case lim.critBytes > 0 && n.BehindBytes > lim.critBytes:
				report(checkCritical, "%s %s behind", who, behind)
			case lim.critSeconds > 0 && n.BehindSeconds > lim.critSeconds:
				report(checkCritical, "%s %s behind", who, appliance.AgeText(n.BehindSeconds))
			case lim.warnBytes > 0 && n.BehindBytes > lim.warnBytes:
				report(checkWarning, "%s %s behind", who, behind)
			case lim.warnSeconds > 0 && n.BehindSeconds > lim.warnSeconds:
				report(checkWarning, "%s %s behind", who, appliance.AgeText(n.BehindSeconds))
			}
			worst = max(worst, n.BehindBytes)
			perf = append(perf, fmt.Sprintf("'%s_behind'=%dB;%s;%s;0;", who, n.BehindBytes, perfLimit(lim.warnBytes), perfLimit(lim.critBytes)),
				fmt.Sprintf("'%s_behind_seconds'=%.1fs;%s;%s;0;", who, n.BehindSeconds, perfLimitF(lim.warnSeconds), perfLimitF(lim.critSeconds)))
		}
		oks = append(oks, fmt.Sprintf("%s: primary %s, %d node%s, at most %s behind", res, r.DesignatedPrimary, len(r.Nodes), plural(len(r.Nodes)), humanBytes(worst)))
	}
	text := strings.Join(oks, "; ")
	switch {
	case len(problems) > 0:
		text = strings.Join(problems, ", ")
	case len(v.Resources) == 0:
		text = "node " + v.Node + " holds no resources"
	}
	line := fmt.Sprintf("THARSIS %s - %s", checkNames[code], text)
	if len(perf) > 0 {
		line += " | " + strings.Join(perf, " ")
	}
	return code, line
}

func perfLimit(n int64) string {
	if n <= 0 {
		return ""
	}
	return fmt.Sprint(n)
}

func perfLimitF(f float64) string {
	if f <= 0 {
		return ""
	}
	return fmt.Sprint(f)
}
