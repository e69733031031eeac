package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/tharsis/tharsis/appliance"
	"github.com/tharsis/tharsis/config"
)

// errorMark starts each comment line `config edit` puts below a config
// with errors; those lines are dropped before the next check.
const errorMark = "# tharsis config edit: "

func init() {
	c := &command{name: "config edit", args: "[--node N] [FILE]", summary: "edit the config safely (as visudo): $VISUAL/$EDITOR on a copy, checked on save (reopened with the errors as comments until it is valid or left unchanged), the changes shown, the file replaced atomically, and the running daemon reloaded"}
	c.run = func(args []string) error {
		fs := newFlagSet(c)
		nodeName := fs.String("node", "", "the node whose daemon is reloaded afterwards (default: the host name, or the only node)")
		socket := fs.String("socket", "", "control socket of that daemon (default: from the config)")
		if err := parse(fs, args); err != nil {
			return err
		}
		if fs.NArg() > 1 {
			return usageError{"config edit takes at most one FILE"}
		}
		file := defaultConfig
		if fs.NArg() == 1 {
			file = fs.Arg(0)
		}
		return editConfig(file, *nodeName, *socket, os.Stdout, os.Stderr)
	}
	register(c)
}

// editConfig runs the edit loop on file, then writes it and reloads the
// daemon of node (if one answers).
func editConfig(file, node, socket string, stdout, stderr io.Writer) error {
	orig, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("config edit: %w", err)
	}
	st, err := os.Stat(file)
	if err != nil {
		return err
	}
	dir := filepath.Dir(file)
	oldCfg, oldErr := config.Parse(file, orig, dir)
	// The copy lives next to the file (same filesystem, so the final
	// rename is atomic); it is removed whatever happens.
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(file)+".edit-*.toml")
	if err != nil {
		return fmt.Errorf("config edit: a working copy next to %s: %w", file, err)
	}
	tmpName := tmp.Name()
	tmp.Close()
	defer os.Remove(tmpName)

	text := orig
	var last []byte // what the editor left last time, when it had errors
	for {
		if err := os.WriteFile(tmpName, text, 0o600); err != nil {
			return fmt.Errorf("config edit: %w", err)
		}
		if err := runEditor(tmpName); err != nil {
			fmt.Fprintf(stderr, "%v; %s is left as it was\n", err, file)
			return silentError{}
		}
		edited, err := os.ReadFile(tmpName)
		if err != nil {
			return fmt.Errorf("config edit: %w", err)
		}
		edited = stripErrorComments(edited)
		switch {
		case len(bytes.TrimSpace(edited)) == 0:
			fmt.Fprintf(stderr, "the copy was emptied: nothing changed; %s is left as it was\n", file)
			return silentError{}
		case bytes.Equal(edited, orig):
			fmt.Fprintf(stdout, "no changes to %s\n", file)
			return nil
		case last != nil && bytes.Equal(edited, last):
			fmt.Fprintf(stderr, "the errors are still there and nothing was changed since: %s is left as it was\n", file)
			return silentError{}
		}
		newCfg, err := config.Parse(file, edited, dir)
		if err != nil {
			fmt.Fprintf(stderr, "%v\nreopening the editor with the errors as comments\n", err)
			last = edited
			// At the end, so that the line numbers stay right.
			text = append(bytes.TrimRight(edited, "\n"), '\n')
			text = append(text, errorComments(err)...)
			continue
		}
		fmt.Fprintf(stdout, "changes to %s:\n", file)
		if oldErr != nil {
			fmt.Fprintln(stdout, "  (the file had errors before; all of it is new)")
			oldCfg = nil
		}
		changes := config.Diff(oldCfg, newCfg)
		if len(changes) == 0 {
			fmt.Fprintln(stdout, "  none that change the configuration (comments or layout only)")
		}
		for _, ch := range changes {
			fmt.Fprintf(stdout, "  %s\n", ch)
		}
		if err := writeAtomic(file, edited, st.Mode().Perm()); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s written\n", file)
		if len(changes) == 0 {
			return nil
		}
		// The daemon runs with the old config: find it there.
		running := oldCfg
		if running == nil {
			running = newCfg
		}
		return reloadAfterEdit(running, node, socket, stdout, stderr)
	}
}

// runEditor opens path in $VISUAL, else $EDITOR, else vi; the variable may
// hold arguments too ("code --wait").
func runEditor(path string) error {
	editor := os.Getenv("VISUAL")
	if editor == "" {
		editor = os.Getenv("EDITOR")
	}
	if editor == "" {
		editor = "vi"
	}
	cmd := exec.Command("/bin/sh", "-c", editor+` "$1"`, "sh", path)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("the editor (%s) failed: %w", editor, err)
	}
	return nil
}

// errorComments renders a Parse error as comment lines for the end of
// the copy.
func errorComments(err error) []byte {
	var b bytes.Buffer
	b.WriteString(errorMark + "the config has errors; fix them and save (leave it unchanged to give up):\n")
	for _, line := range strings.Split(strings.TrimSpace(err.Error()), "\n") {
		b.WriteString(errorMark + line + "\n")
	}
	return b.Bytes()
}

// stripErrorComments drops the lines errorComments added.
func stripErrorComments(b []byte) []byte {
	var out []byte
	for _, line := range bytes.SplitAfter(b, []byte("\n")) {
		if !bytes.HasPrefix(line, []byte(errorMark)) {
			out = append(out, line...)
		}
	}
	return out
}

// writeAtomic replaces file with data: a temporary file in the same
// directory, fsync'd, renamed over it, the directory fsync'd.
func writeAtomic(file string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(file)
	f, err := os.CreateTemp(dir, "."+filepath.Base(file)+".new-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), file)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// reloadAfterEdit reloads the daemon of node (found by cfg, the config it
// runs with) when one answers.
func reloadAfterEdit(cfg *config.Config, node, socket string, stdout, stderr io.Writer) error {
	if socket == "" {
		nf := nodeFlags{config: cfg.File, node: node}
		_, name, err := nf.load()
		if err != nil {
			fmt.Fprintf(stdout, "no daemon reloaded: %v\n", err)
			return nil
		}
		socket = cfg.Nodes[name].Control
	}
	cl := &appliance.Client{Socket: socket}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := cl.Status(ctx); err != nil {
		fmt.Fprintf(stdout, "no daemon answers on %s: the new config applies when it starts\n", socket)
		return nil
	}
	out, err := cl.Reload(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "the file is written, but the running daemon did not apply it: %v\n", err)
		if errors.Is(err, appliance.ErrReloadRefused) || strings.Contains(err.Error(), "cannot be applied while the daemon runs") {
			fmt.Fprintln(stderr, "it keeps the config it runs with; restart it to apply the new one")
		}
		return silentError{}
	}
	fmt.Fprintf(stdout, "daemon reloaded:\n%s\n", indent(out))
	return nil
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(strings.TrimSpace(s), "\n", "\n  ")
}
