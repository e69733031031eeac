package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tharsis/tharsis/internal/testutil"
)

// TestRunNBDTLS: a node serves an export with tls = "require" and
// tls_verify_client with its certificate from tls_dir: nbdinfo over TLS
// with a client certificate from `cert create-client` reads it, plain
// nbdinfo and nbdinfo without a client certificate are refused.
func TestRunNBDTLS(t *testing.T) {
	nbdinfo := testutil.NeedTool(t, "nbdinfo")
	addr := testutil.FreePort(t)
	dir, cfg := writeConfig(t, addr, "replicated = false\n")
	b, _ := os.ReadFile(cfg)
	b = append([]byte("tls_dir = \"tls\"\n"), b...)
	b = append(b, "tls = \"require\"\ntls_verify_client = true\n"...)
	if err := os.WriteFile(cfg, b, 0o600); err != nil {
		t.Fatal(err)
	}
	tlsDir := filepath.Join(dir, "tls")
	for _, args := range [][]string{
		{"cert", "create-ca", "--dir", tlsDir},
		{"cert", "create-node", "--config", cfg, "alpha"}, // the listen host 127.0.0.1 comes from the export
		{"cert", "create-client", "--config", cfg, "--out", filepath.Join(dir, "client"), "backup"},
		{"cert", "create-client", "--dir", tlsDir, "--out", filepath.Join(dir, "anon"), "anon"},
	} {
		if out, code := run2(t, args...); code != 0 {
			t.Fatalf("%s: exit %d: %s", strings.Join(args, " "), code, out)
		}
	}
	os.Remove(filepath.Join(dir, "anon", "client-cert.pem")) // the CA only
	os.Remove(filepath.Join(dir, "anon", "client-key.pem"))
	startNode(t, cfg, addr)

	nbds := func(certs string) (string, error) {
		out, err := exec.Command(nbdinfo, "nbds://"+addr+"/r0?tls-certificates="+certs).CombinedOutput()
		return string(out), err
	}
	if out, err := nbds(filepath.Join(dir, "client")); err != nil || !strings.Contains(out, "with TLS") || !strings.Contains(out, "67108864") {
		t.Fatalf("nbdinfo over TLS with a client certificate: %v\n%s", err, out)
	}
	if out, err := nbds(filepath.Join(dir, "anon")); err == nil {
		t.Errorf("nbdinfo without a client certificate was served:\n%s", out)
	}
	if out, err := nbdInfo(t, addr); err == nil {
		t.Errorf("plain nbdinfo was served:\n%s", out)
	}
}
