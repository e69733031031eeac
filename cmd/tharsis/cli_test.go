package main

import (
	"context"
	"errors"
	"flag"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestParseFlagsAnywhere: flags before, between and after the arguments;
// "--" ends the flags.
func TestParseFlagsAnywhere(t *testing.T) {
	for _, tc := range []struct {
		args  []string
		force bool
		node  string
		pos   []string
	}{
		{[]string{"--force", "r0"}, true, "", []string{"r0"}},
		{[]string{"r0", "--force"}, true, "", []string{"r0"}},
		{[]string{"r0", "--node", "beta", "r1", "-force"}, true, "beta", []string{"r0", "r1"}},
		{[]string{"demo", "--config", "x.toml", "--node", "alpha"}, false, "alpha", []string{"demo"}},
		{[]string{"r0", "--", "--force"}, false, "", []string{"r0", "--force"}},
	} {
		fs := newFlagSet(&command{name: "primary"})
		force := fs.Bool("force", false, "")
		node := fs.String("node", "", "")
		fs.String("config", "", "")
		if err := parse(fs, tc.args); err != nil {
			t.Errorf("parse %q: %v", tc.args, err)
			continue
		}
		if *force != tc.force || *node != tc.node || !slices.Equal(fs.Args(), tc.pos) {
			t.Errorf("parse %q: force %v node %q args %q; want %v %q %q", tc.args, *force, *node, fs.Args(), tc.force, tc.node, tc.pos)
		}
	}
	fs := newFlagSet(&command{name: "view"})
	err := parse(fs, []string{"r0", "--bogus"})
	var u usageError
	if !errors.As(err, &u) || !strings.Contains(err.Error(), "-bogus") || !strings.Contains(err.Error(), "tharsis view --help") {
		t.Errorf("unknown flag: %v (%T); want a usage error naming it and `tharsis view --help`", err, err)
	}
	if err := parse(newFlagSet(&command{name: "view"}), []string{"r0", "-h"}); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h after an argument: %v, want flag.ErrHelp", err)
	}
}

// TestFlagsAfterResource is the case: flags after the resource
// name reach the command (here it fails on the missing config, not on the
// arguments).
func TestFlagsAfterResource(t *testing.T) {
	cmd := tharsis("log-rotate", "demo", "--config", "/nonexistent/tharsis.toml", "--node", "alpha")
	out, _ := cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != exitFailed || !strings.Contains(string(out), "/nonexistent/tharsis.toml") {
		t.Errorf("exit %d, want %d and an error about the config:\n%s", cmd.ProcessState.ExitCode(), exitFailed, out)
	}
}

// runTharsis runs tharsis with args and returns stdout, stderr and the exit
// code.
func runTharsis(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := tharsis(args...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("tharsis %s: %v", strings.Join(args, " "), err)
	}
	return o.String(), e.String(), cmd.ProcessState.ExitCode()
}

// TestHelpVerb: `tharsis help VERB`, `VERB --help` and `VERB -h` print the
// verb's usage with its flags on stdout and exit 0.
func TestHelpVerb(t *testing.T) {
	for _, verb := range [][]string{{"run"}, {"primary"}, {"config", "check"}, {"demo"}} {
		name := strings.Join(verb, " ")
		want, stderr, code := runTharsis(t, append([]string{"help"}, verb...)...)
		if code != exitOK || stderr != "" || !strings.HasPrefix(want, "usage: tharsis "+name+" ") || !strings.Contains(want, commands[name].summary) {
			t.Errorf("tharsis help %s: exit %d, stderr %q, stdout:\n%s", name, code, stderr, want)
		}
		if !strings.Contains(want, "\nflags (before or after the arguments):\n  -") {
			t.Errorf("tharsis help %s does not list the flags:\n%s", name, want)
		}
		for _, h := range []string{"--help", "-h"} {
			got, stderr, code := runTharsis(t, append(verb, h)...)
			if code != exitOK || stderr != "" || got != want {
				t.Errorf("tharsis %s %s: exit %d, stderr %q, stdout differs from help:\n%s", name, h, code, stderr, got)
			}
		}
	}
	// Every command has a usage, whoever registered it.
	for _, name := range sortedNames() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		cmd := exec.CommandContext(ctx, os.Args[0], append([]string{"help"}, strings.Fields(name)...)...)
		cmd.Env = append(os.Environ(), "THARSIS_TEST_MAIN=1", "EDITOR=false", "VISUAL=false")
		out, err := cmd.Output()
		cancel()
		if err != nil || !strings.HasPrefix(string(out), "usage: tharsis "+name) {
			t.Errorf("tharsis help %s: %v\n%s", name, err, out)
		}
	}
	// The general help: every command, flags anywhere, the exit codes.
	out, _, code := runTharsis(t, "help")
	for _, want := range []string{"usage: tharsis COMMAND", "install-systemd", "config check", "before or after the arguments", "exit codes: 0 done; 1 failed", "2 a mistake on the command line"} {
		if code != exitOK || !strings.Contains(out, want) {
			t.Errorf("tharsis help (exit %d) lacks %q:\n%s", code, want, out)
		}
	}
}

// TestConfigAlone: `tharsis config` lists its commands.
func TestConfigAlone(t *testing.T) {
	out, stderr, code := runTharsis(t, "config")
	if code != exitOK || stderr != "" || !strings.Contains(out, "config check [--node N] FILE") || !strings.Contains(out, "tharsis help config COMMAND") {
		t.Errorf("tharsis config: exit %d, stderr %q, stdout:\n%s", code, stderr, out)
	}
	_, stderr, code = runTharsis(t, "config", "chek")
	if code != exitUsage || !strings.Contains(stderr, `did you mean "config check"`) {
		t.Errorf("tharsis config chek: exit %d, stderr %q", code, stderr)
	}
}

// TestMarsadmVerbsKnown: every marsadm verb that is not registered says
// what it is (the area that builds it, or what tharsis has instead), never
// "unknown command"; registering one makes it a command.
func TestMarsadmVerbsKnown(t *testing.T) {
	var missing []string
	for name := range notBuilt {
		if _, ok := commands[name]; ok {
			continue
		}
		missing = append(missing, name)
		msg, ok := notBuiltMessage(name)
		if !ok || strings.Contains(msg, "%") || !strings.Contains(msg, "`") {
			t.Errorf("%s: message %q", name, msg)
		}
		err := notFound(name)
		var u usageError
		if !errors.As(err, &u) || strings.Contains(err.Error(), "unknown command") {
			t.Errorf("%s: %v", name, err)
		}
	}
	for _, v := range []string{"attach", "detach", "up", "down", "create-resource", "delete-resource"} {
		if msg, _ := notBuiltMessage(v); commands[v] == nil && !strings.Contains(msg, "not built yet: issue 12") {
			t.Errorf("%s says %q, want the area that builds it", v, msg)
		}
	}
	if msg, _ := notBuiltMessage("pause-replay-local"); !strings.Contains(msg, "run `tharsis pause-replay RES` there") {
		t.Errorf("pause-replay-local says %q", msg)
	}
	slices.Sort(missing)
	if len(missing) == 0 {
		t.Skip("every marsadm verb is registered")
	}
	// As the operator sees it: exit 2 with the message, also for help.
	want, _ := notBuiltMessage(missing[0])
	for _, args := range [][]string{{missing[0], "r0"}, {"help", missing[0]}} {
		_, stderr, code := runTharsis(t, args...)
		if code != exitUsage || stderr != "tharsis: "+want+"\n" {
			t.Errorf("tharsis %s: exit %d, stderr %q; want %d, %q", strings.Join(args, " "), code, stderr, exitUsage, want)
		}
	}
}

func TestUnknownCommand(t *testing.T) {
	_, stderr, code := runTharsis(t, "frobnicate")
	if code != exitUsage || !strings.Contains(stderr, `unknown command "frobnicate"`) || !strings.Contains(stderr, "tharsis help") {
		t.Errorf("exit %d, stderr:\n%s", code, stderr)
	}
	_, stderr, _ = runTharsis(t, "primry", "r0")
	if !strings.Contains(stderr, `did you mean "primary"`) {
		t.Errorf("a typo gets no suggestion:\n%s", stderr)
	}
}
