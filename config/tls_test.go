package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
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

func TestNBDTLS(t *testing.T) {
	base := "secret_file = \"s\"\ntls_dir = \"/tls\"\n" + diffBase // its last table is [[exports.nbd]] resource = "r"
	c := mustParse(t, base+"tls = \"require\"\ntls_verify_client = true\n")
	e := c.NBD[0]
	if e.TLS != TLSRequire || !e.TLSVerifyClient || e.TLSMode() != TLSRequire {
		t.Fatalf("parsed %+v", e)
	}
	// Marshal keeps it; Diff shows the export changed, which restarts it.
	c2, err := Parse("t.toml", c.Marshal(), "/")
	if err != nil || !reflect.DeepEqual(c2.NBD, c.NBD) {
		t.Fatalf("round trip: %v, %+v", err, c2.NBD[0])
	}
	on := mustParse(t, base+"tls = \"on\"\n")
	if got := Diff(on, c); len(got) != 1 || got[0].String() != "nbd export 0.0.0.0:10809/r modified: tls, tls_verify_client" {
		t.Errorf("Diff(on, require) = %v", got)
	}
	if off := mustParse(t, base+"tls = \"off\"\n"); off.NBD[0].TLS != "" || off.NBD[0].TLSMode() != TLSOff || len(Diff(off, mustParse(t, base))) != 0 {
		t.Errorf("tls = \"off\" is not the default: %+v", off.NBD[0])
	}
	for _, tc := range []struct{ doc, want string }{
		{base + "tls = \"yes\"\n", "tls: is \"yes\"; use \"off\""},
		{base + "tls = true\n", "tls: must be a string"},
		{diffBase + "tls = \"on\"\n", "tls: is \"on\" but there is no tls_dir"},
		{base + "tls = \"on\"\ntls_verify_client = true\n", "tls_verify_client: needs tls = \"require\" (tls is \"on\")"},
		{base + "tls_verify_client = true\n", "tls_verify_client: needs tls = \"require\" (tls is \"off\")"},
	} {
		_, err := Parse("t.toml", []byte(tc.doc), "/")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(...%q) = %v, want %s", tc.doc[len(tc.doc)-30:], err, tc.want)
			continue
		}
		key, _, _ := strings.Cut(tc.want, ":")
		line := 1 + slices.IndexFunc(strings.Split(tc.doc, "\n"), func(l string) bool { return strings.HasPrefix(l, key+" =") })
		if want := fmt.Sprintf("t.toml:%d: ", line); !strings.HasPrefix(err.Error(), want) {
			t.Errorf("error %v does not start with %s", err, want)
		}
	}
}
