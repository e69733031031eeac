package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tharsis/tharsis/internal/testutil"
)

// editor writes a shell script usable as $EDITOR: round N of the editing
// runs the Nth of steps (shell commands on "$1"); it keeps a copy of
// what it was given in round N as seenN.
func editor(t *testing.T, steps ...string) (script, dir string) {
	t.Helper()
	dir = t.TempDir()
	var b strings.Builder
	b.WriteString("#!/bin/sh\nset -e\nd=" + dir + "\nn=$(cat $d/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > $d/n\ncp \"$1\" $d/seen$n\ncase $n in\n")
	for i, s := range steps {
		b.WriteString(string(rune('1'+i)) + ") " + s + " ;;\n")
	}
	b.WriteString("*) exit 3 ;;\nesac\n")
	script = filepath.Join(dir, "editor.sh")
	if err := os.WriteFile(script, []byte(b.String()), 0o700); err != nil {
		t.Fatal(err)
	}
	return script, dir
}

func runEdit(t *testing.T, script, cfg string, extra ...string) (string, error) {
	t.Helper()
	cmd := tharsis(append([]string{"config", "edit", "--node", "alpha", cfg}, extra...)...)
	cmd.Env = append(cmd.Env, "EDITOR="+script, "VISUAL=")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestConfigEdit(t *testing.T) {
	_, cfg := writeConfig(t, "127.0.0.1:1", "")
	orig, _ := os.ReadFile(cfg)

	t.Run("editor fails", func(t *testing.T) {
		script, _ := editor(t, `echo garbage >> "$1"; exit 1`)
		out, err := runEdit(t, script, cfg)
		if err == nil || !strings.Contains(out, "left as it was") {
			t.Errorf("an editor exiting 1: %v %s", err, out)
		}
		if now, _ := os.ReadFile(cfg); string(now) != string(orig) {
			t.Error("the file changed although the editor failed")
		}
	})
	t.Run("no changes", func(t *testing.T) {
		script, _ := editor(t, `true`)
		out, err := runEdit(t, script, cfg)
		if err != nil || !strings.Contains(out, "no changes") {
			t.Errorf("an unchanged copy: %v %s", err, out)
		}
	})
	t.Run("errors reopen, then a fix is written", func(t *testing.T) {
		script, dir := editor(t,
			`printf '\n[[exports.nbd]]\nresource = "r9"\nlisten = "127.0.0.1:2"\nname = "x"\n' >> "$1"`,
			`sed -i 's/"r9"/"r0"/' "$1"`)
		out, err := runEdit(t, script, cfg)
		if err != nil {
			t.Fatalf("config edit: %v\n%s", err, out)
		}
		seen2, _ := os.ReadFile(filepath.Join(dir, "seen2"))
		if !strings.Contains(string(seen2), errorMark) || !strings.Contains(string(seen2), cfg+":") || !strings.Contains(string(seen2), "r9") {
			t.Errorf("the editor's second round got no error comment with file:line:\n%s", seen2)
		}
		now, _ := os.ReadFile(cfg)
		if strings.Contains(string(now), errorMark) || !strings.Contains(string(now), `name = "x"`) {
			t.Errorf("the written file:\n%s", now)
		}
		if !strings.Contains(out, "nbd export 127.0.0.1:2/x added") || !strings.Contains(out, "no daemon answers") {
			t.Errorf("config edit said:\n%s", out)
		}
		os.WriteFile(cfg, orig, 0o600)
	})
	t.Run("errors left unchanged give up", func(t *testing.T) {
		script, _ := editor(t, `echo 'bogus_key = 1' >> "$1"`, `true`)
		out, err := runEdit(t, script, cfg)
		if err == nil || !strings.Contains(out, "left as it was") {
			t.Errorf("errors left as they were: %v %s", err, out)
		}
		if now, _ := os.ReadFile(cfg); string(now) != string(orig) {
			t.Error("an invalid config was written")
		}
	})
}

// TestConfigEditReloads: with a daemon running, config edit adds an NBD
// export and the daemon serves it at once; a change it cannot apply live
// is written but reported as not applied.
func TestConfigEditReloads(t *testing.T) {
	addr, addr2 := testutil.FreePort(t), testutil.FreePort(t)
	_, cfg := writeConfig(t, addr, "")
	startNode(t, cfg, addr)

	script, _ := editor(t, `printf '\n[[exports.nbd]]\nresource = "r0"\nlisten = "`+addr2+`"\nname = "two"\n' >> "$1"`)
	out, err := runEdit(t, script, cfg)
	if err != nil || !strings.Contains(out, "daemon reloaded") || !strings.Contains(out, "nbd export two on "+addr2+" serving") {
		t.Fatalf("config edit with a daemon: %v\n%s", err, out)
	}
	testutil.WaitListening(t, addr2, 10*time.Second)

	script, _ = editor(t, `sed -i 's/^state_dir = .*/state_dir = "elsewhere"/' "$1"`)
	out, err = runEdit(t, script, cfg)
	if err == nil || !strings.Contains(out, "state_dir") || !strings.Contains(out, "restart") {
		t.Errorf("a change the daemon cannot apply: %v\n%s", err, out)
	}
}

// TestSIGHUPReloads: SIGHUP makes the daemon apply its edited config file.
func TestSIGHUPReloads(t *testing.T) {
	addr, addr2 := testutil.FreePort(t), testutil.FreePort(t)
	_, cfg := writeConfig(t, addr, "")
	cmd, _ := startNode(t, cfg, addr)
	f, err := os.OpenFile(cfg, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("\n[[exports.nbd]]\nresource = \"r0\"\nlisten = \"" + addr2 + "\"\nname = \"two\"\n")
	f.Close()
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testutil.WaitListening(t, addr2, 10*time.Second)
}
