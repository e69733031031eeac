package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestTLSDir(t *testing.T) {
	dir := t.TempDir()
	doc := "secret_file = \"s\"\n# TLS\ntls_dir = \"tls\"\n" + diffBase
	p := filepath.Join(dir, "c.toml")
	if err := os.WriteFile(p, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	// Missing: a file:line error saying how to make it.
	_, err := Load(p)
	var errs Errors
	want := p + ":3: tls_dir: " + filepath.Join(dir, "tls") + " does not exist; make the cluster CA there with `tharsis cert create-ca"
	if !errors.As(err, &errs) || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("Load with a missing tls_dir = %v\nwant prefix %s", err, want)
	}
	// A file, not a directory.
	if err := os.WriteFile(filepath.Join(dir, "tls"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), ":3: tls_dir: ") || !strings.Contains(err.Error(), "is not a directory") {
		t.Fatalf("Load with tls_dir a file = %v", err)
	}
	os.Remove(filepath.Join(dir, "tls"))
	if err := os.Mkdir(filepath.Join(dir, "tls"), 0o700); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.TLSDir != filepath.Join(dir, "tls") {
		t.Errorf("TLSDir = %q", c.TLSDir)
	}
	// Marshal keeps it; Diff shows a change of it.
	c2, err := Parse("t.toml", c.Marshal(), dir)
	if err != nil || !reflect.DeepEqual(c2.TLSDir, c.TLSDir) {
		t.Fatalf("round trip: %v, %q", err, c2.TLSDir)
	}
	plain := mustParse(t, diffBase)
	if got := Diff(plain, c); len(got) != 2 || got[1].String() != "tls_dir modified" {
		t.Errorf("Diff(plain, tls) = %v, want secret_file and tls_dir modified", got)
	}
	// Empty and mistyped values are errors with their line.
	for _, tc := range []struct{ doc, want string }{
		{"tls_dir = \"\"\n" + diffBase, "t.toml:1: tls_dir: is empty"},
		{"tls_dir = 1\n" + diffBase, "t.toml:1: tls_dir: must be a string, not an integer; for example: tls_dir = \"/etc/tharsis/tls\""},
		{"tls_dri = \"x\"\n" + diffBase, "t.toml:1: tls_dri: unknown key in the top level; did you mean \"tls_dir\"?"},
	} {
		if _, err := Parse("t.toml", []byte(tc.doc), "/"); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want prefix %s", tc.doc[:14], err, tc.want)
		}
	}
}
