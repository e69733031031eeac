package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tharsis/tharsis/replicate"
)

// run2 runs tharsis with args and returns its combined output and exit code.
func run2(t *testing.T, args ...string) (string, int) {
	t.Helper()
	out, err := tharsis(args...).CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := replicate.ParseCertPEM(b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCertCommands(t *testing.T) {
	dir := t.TempDir()
	tlsDir := filepath.Join(dir, "tls")
	cfgPath := filepath.Join(dir, "tharsis.toml")
	cfg := "tls_dir = \"tls\"\n[nodes.alpha]\nreplication = \"10.9.0.1:7777\"\n[nodes.beta]\nreplication = \"beta.example:7777\"\n" +
		"[resources.r0]\ndisk = { alpha = \"a.img\", beta = \"b.img\" }\n"
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	// create-ca writes the CA, key 0600, and refuses to overwrite it.
	out, code := run2(t, "cert", "create-ca", "--dir", tlsDir)
	if code != 0 || !strings.Contains(out, "ca.crt") {
		t.Fatalf("create-ca: exit %d: %s", code, out)
	}
	ca := readCert(t, filepath.Join(tlsDir, "ca.crt"))
	if !ca.IsCA || ca.NotAfter.Sub(time.Now()) < 9*365*24*time.Hour {
		t.Errorf("CA: IsCA %v, valid until %v", ca.IsCA, ca.NotAfter)
	}
	if m := mode(t, filepath.Join(tlsDir, "ca.key")); m != 0o600 {
		t.Errorf("ca.key mode %04o, want 0600", m)
	}
	before, _ := os.ReadFile(filepath.Join(tlsDir, "ca.key"))
	out, code = run2(t, "cert", "create-ca", "--dir", tlsDir)
	if code != 1 || !strings.Contains(out, "already exist") || !strings.Contains(out, "--force") {
		t.Errorf("create-ca again: exit %d: %s", code, out)
	}
	if after, _ := os.ReadFile(filepath.Join(tlsDir, "ca.key")); !bytes.Equal(before, after) {
		t.Error("create-ca without --force changed ca.key")
	}

	// create-node: the node name, its replication host (from the config)
	// and every --host are in the certificate, which the CA signed.
	out, code = run2(t, "cert", "create-node", "--config", cfgPath, "alpha", "--host", "alpha.example,10.9.0.11", "--host", "localhost")
	if code != 0 {
		t.Fatalf("create-node: exit %d: %s", code, out)
	}
	t.Logf("%s", out)
	c := readCert(t, filepath.Join(tlsDir, "alpha.crt"))
	if replicate.CertNode(c) != "alpha" || c.Subject.CommonName != "alpha" {
		t.Errorf("certificate names %q (CN %q), want alpha", replicate.CertNode(c), c.Subject.CommonName)
	}
	var ips []string
	for _, ip := range c.IPAddresses {
		ips = append(ips, ip.String())
	}
	if !slices.Equal(ips, []string{"10.9.0.1", "10.9.0.11"}) || !slices.Equal(c.DNSNames, []string{"alpha.example", "localhost"}) {
		t.Errorf("IPs %v, DNS names %v", ips, c.DNSNames)
	}
	if d := c.NotAfter.Sub(time.Now()); d < 700*24*time.Hour || d > 740*24*time.Hour {
		t.Errorf("node certificate valid for %v, want about two years", d)
	}
	if m := mode(t, filepath.Join(tlsDir, "alpha.key")); m != 0o600 {
		t.Errorf("alpha.key mode %04o, want 0600", m)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	if _, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("the node certificate does not verify against the CA: %v", err)
	}
	// The daemon's loader accepts it.
	if _, err := replicate.LoadTLS(tlsDir, "alpha", func(n string) bool { return n == "alpha" || n == "beta" }); err != nil {
		t.Errorf("LoadTLS: %v", err)
	}
	// A host name from the config becomes a DNS name.
	if out, code = run2(t, "cert", "create-node", "--config", cfgPath, "beta"); code != 0 {
		t.Fatalf("create-node beta: exit %d: %s", code, out)
	}
	if c := readCert(t, filepath.Join(tlsDir, "beta.crt")); !slices.Equal(c.DNSNames, []string{"beta.example"}) {
		t.Errorf("beta's DNS names %v", c.DNSNames)
	}

	// Refusals: overwrite, a node not in the config, no host at all.
	before, _ = os.ReadFile(filepath.Join(tlsDir, "alpha.key"))
	out, code = run2(t, "cert", "create-node", "--config", cfgPath, "alpha")
	if code != 1 || !strings.Contains(out, "alpha.crt and ") || !strings.Contains(out, "already exist") {
		t.Errorf("create-node again: exit %d: %s", code, out)
	}
	if after, _ := os.ReadFile(filepath.Join(tlsDir, "alpha.key")); !bytes.Equal(before, after) {
		t.Error("create-node without --force changed alpha.key")
	}
	if out, code = run2(t, "cert", "create-node", "--config", cfgPath, "--force", "alpha"); code != 0 {
		t.Errorf("create-node --force: exit %d: %s", code, out)
	}
	if after, _ := os.ReadFile(filepath.Join(tlsDir, "alpha.key")); bytes.Equal(before, after) {
		t.Error("create-node --force kept the old key")
	}
	if out, code = run2(t, "cert", "create-node", "--config", cfgPath, "gamma"); code != 1 || !strings.Contains(out, `node "gamma" is not in`) {
		t.Errorf("create-node of an unknown node: exit %d: %s", code, out)
	}
	if out, code = run2(t, "cert", "create-node", "--dir", tlsDir, "gamma"); code != 2 || !strings.Contains(out, "--host") {
		t.Errorf("create-node without a host: exit %d: %s", code, out)
	}
	if out, code = run2(t, "cert", "create-nod"); code != 2 || !strings.Contains(out, `did you mean "cert create-node"`) {
		t.Errorf("unknown subcommand: exit %d: %s", code, out)
	}
}

// TestRunTLSMissingFiles: a node whose tls_dir lacks its certificate does
// not start and says which file and which command makes it.
func TestRunTLSMissingFiles(t *testing.T) {
	dir, path := writeConfig(t, "127.0.0.1:17709", "") // never listened on: the start fails first
	if err := os.WriteFile(filepath.Join(dir, "b.img"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, _ := os.ReadFile(path)
	cfg = bytes.Replace(cfg, []byte("[nodes.alpha]"), []byte("tls_dir = \"tls\"\n[nodes.beta]\nreplication = \"127.0.0.1:17702\"\n[nodes.alpha]"), 1)
	cfg = bytes.Replace(cfg, []byte(`disk = { alpha = "r0.img" }`), []byte(`disk = { alpha = "r0.img", beta = "b.img" }`), 1)
	if err := os.WriteFile(path, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	// No tls_dir at all: a config error with its line.
	out, code := run2(t, "run", "--config", path, "--node", "alpha")
	if code == 0 || !strings.Contains(out, path+":2: tls_dir: ") || !strings.Contains(out, "tharsis cert create-ca") {
		t.Fatalf("run without the tls_dir: exit %d: %s", code, out)
	}
	// The CA but not the node's certificate: a start error naming both.
	if out, code := run2(t, "cert", "create-ca", "--dir", filepath.Join(dir, "tls")); code != 0 {
		t.Fatal(out)
	}
	out, code = run2(t, "run", "--config", path, "--node", "alpha")
	if code == 0 || !strings.Contains(out, filepath.Join(dir, "tls", "alpha.crt")+" is missing") || !strings.Contains(out, "tharsis cert create-node") {
		t.Fatalf("run without the node certificate: exit %d: %s", code, out)
	}
	t.Logf("%s", out)
}

// TestCertNBD: create-node puts the hosts NBD clients dial for TLS exports
// (listen host, service address) into the node certificate; create-client
// writes a client certificate of the cluster CA in the layout GnuTLS
// clients read.
func TestCertNBD(t *testing.T) {
	dir := t.TempDir()
	tlsDir := filepath.Join(dir, "tls")
	cfgPath := filepath.Join(dir, "tharsis.toml")
	cfg := "tls_dir = \"tls\"\n[nodes.alpha]\nreplication = \"10.9.0.1:7777\"\n[nodes.beta]\nreplication = \"10.9.0.2:7777\"\n" +
		"[resources.r0]\ndisk = { alpha = \"a.img\", beta = \"b.img\" }\nservice_address = \"10.9.0.50/24\"\nservice_interface = \"eth1\"\n" +
		"[resources.r1]\ndisk = { beta = \"c.img\" }\n" +
		"[[exports.nbd]]\nresource = \"r0\"\nlisten = \"nbd.example:10809\"\ntls = \"require\"\n" +
		"[[exports.nbd]]\nresource = \"r1\"\nlisten = \"10.9.0.2:10809\"\ntls = \"on\"\n"
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(tlsDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, code := run2(t, "cert", "create-ca", "--dir", tlsDir); code != 0 {
		t.Fatal(out)
	}
	if out, code := run2(t, "cert", "create-node", "--config", cfgPath, "alpha"); code != 0 {
		t.Fatal(out)
	}
	c := readCert(t, filepath.Join(tlsDir, "alpha.crt"))
	var ips []string
	for _, ip := range c.IPAddresses {
		ips = append(ips, ip.String())
	}
	if !slices.Equal(ips, []string{"10.9.0.1", "10.9.0.50"}) || !slices.Equal(c.DNSNames, []string{"nbd.example"}) {
		t.Errorf("alpha's certificate names IPs %v, DNS names %v; want its replication host, r0's NBD listen host and service address", ips, c.DNSNames)
	}

	out, code := run2(t, "cert", "create-client", "--config", cfgPath, "backup")
	if code != 0 {
		t.Fatalf("create-client: exit %d: %s", code, out)
	}
	t.Logf("%s", out)
	cdir := filepath.Join(tlsDir, "clients", "backup")
	cc := readCert(t, filepath.Join(cdir, "client-cert.pem"))
	if replicate.CertClient(cc) != "backup" || replicate.CertNode(cc) != "" {
		t.Errorf("client certificate names client %q, node %q", replicate.CertClient(cc), replicate.CertNode(cc))
	}
	pool := x509.NewCertPool()
	pool.AddCert(readCert(t, filepath.Join(cdir, "ca-cert.pem")))
	if _, err := cc.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("the client certificate does not verify against the CA: %v", err)
	}
	if _, err := cc.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("a client certificate can serve")
	}
	if m := mode(t, filepath.Join(cdir, "client-key.pem")); m != 0o600 {
		t.Errorf("client-key.pem mode %04o, want 0600", m)
	}
	if _, err := tls.LoadX509KeyPair(filepath.Join(cdir, "client-cert.pem"), filepath.Join(cdir, "client-key.pem")); err != nil {
		t.Errorf("client key pair: %v", err)
	}
	if out, code = run2(t, "cert", "create-client", "--dir", tlsDir, "backup"); code != 1 || !strings.Contains(out, "already exist") {
		t.Errorf("create-client again: exit %d: %s", code, out)
	}
	if out, code = run2(t, "cert", "create-client", "--dir", tlsDir, "--out", filepath.Join(dir, "x"), "../evil"); code != 2 {
		t.Errorf("create-client with a path as name: exit %d: %s", code, out)
	}
}
