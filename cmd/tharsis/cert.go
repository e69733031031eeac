package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tharsis/tharsis/config"
	"github.com/tharsis/tharsis/replicate"
)

// `tharsis cert`: the cluster CA and the nodes' certificates for replication
// over mutual TLS (tls_dir), modelled on `cockroach cert`. Keys are ECDSA
// P-256 (PKCS#8 PEM, mode 0600); a node is named by the URI SAN
// tharsis://node/NODE and the CN, and its hosts are DNS/IP SANs.

func init() {
	ca := &command{name: "cert create-ca", args: "--dir DIR",
		summary: "make the cluster CA for replication over TLS (tls_dir): DIR/ca.crt and DIR/ca.key (ECDSA P-256, key mode 0600)"}
	ca.run = func(args []string) error { return certCreateCA(os.Stdout, ca, args) }
	register(ca)
	node := &command{name: "cert create-node", args: "[--config FILE] [--host H]... NODE",
		summary: "make NODE's certificate and key signed by DIR/ca.key, naming the node, its replication host (from --config) and every --host"}
	node.run = func(args []string) error { return certCreateNode(os.Stdout, node, args) }
	register(node)
	client := &command{name: "cert create-client", args: "[--dir DIR] [--out OUT] NAME",
		summary: "make an NBD client's certificate signed by DIR/ca.key, in OUT (default DIR/clients/NAME) as ca-cert.pem, client-cert.pem and client-key.pem: the layout libnbd's tls-certificates and qemu's tls-creds-x509 dir read"}
	client.run = func(args []string) error { return certCreateClient(os.Stdout, client, args) }
	register(client)
}

// hostList is a repeatable --host flag.
type hostList []string

func (h *hostList) String() string { return strings.Join(*h, ",") }
func (h *hostList) Set(s string) error {
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			*h = append(*h, v)
		}
	}
	return nil
}

// refuseOverwrite returns an error naming the files of paths that exist;
// force says what --force would do.
func refuseOverwrite(force string, paths ...string) error {
	var there []string
	for _, p := range paths {
		if _, err := os.Lstat(p); err == nil {
			there = append(there, p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if len(there) > 0 {
		verb := "exist"
		if len(there) == 1 {
			verb = "exists"
		}
		return fmt.Errorf("%s already %s; not overwriting (%s)", strings.Join(there, " and "), verb, force)
	}
	return nil
}

// writeFiles writes each file (path, contents, mode) through a temporary
// file renamed into place.
func writeFiles(files ...certFile) error {
	for _, f := range files {
		tmp := f.path + ".tmp"
		if err := os.WriteFile(tmp, f.data, f.mode); err != nil {
			return err
		}
		if err := os.Chmod(tmp, f.mode); err != nil { // umask
			return err
		}
		if err := os.Rename(tmp, f.path); err != nil {
			os.Remove(tmp)
			return err
		}
	}
	return nil
}

// certFile is a file writeFiles writes.
type certFile struct {
	path string
	data []byte
	mode os.FileMode
}

func certCreateCA(w io.Writer, c *command, args []string) error {
	fs := newFlagSet(c)
	dir := fs.String("dir", "", "directory for ca.crt and ca.key (created, mode 0700)")
	force := fs.Bool("force", false, "replace an existing CA (every node certificate must then be made again)")
	lifetime := fs.Duration("lifetime", replicate.CAValidity, "validity of the CA certificate")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" || fs.NArg() > 0 {
		return usageError{"usage: tharsis cert create-ca --dir DIR [--force] [--lifetime D]"}
	}
	crt, key := filepath.Join(*dir, replicate.CACertFile), filepath.Join(*dir, replicate.CAKeyFile)
	if !*force {
		if err := refuseOverwrite("--force makes a new CA; every node certificate must then be made again", crt, key); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		return err
	}
	ca, crtPEM, keyPEM, err := replicate.NewCA("tharsis cluster CA", time.Now(), *lifetime)
	if err != nil {
		return err
	}
	if err := writeFiles(certFile{key, keyPEM, 0o600}, certFile{crt, crtPEM, 0o644}); err != nil {
		return fmt.Errorf("write the CA: %w", err)
	}
	fmt.Fprintf(w, "wrote %s (valid until %s) and %s (ECDSA P-256, mode 0600)\n", crt, ca.Cert.NotAfter.UTC().Format(time.DateOnly), key)
	fmt.Fprintf(w, "next: `tharsis cert create-node --dir %s --config CONFIG NODE` for every node; copy ca.crt and that node's NODE.crt and NODE.key to its tls_dir; keep ca.key off the nodes if you can\n", *dir)
	return nil
}

func certCreateNode(w io.Writer, c *command, args []string) error {
	fs := newFlagSet(c)
	dir := fs.String("dir", "", "directory holding ca.crt and ca.key; NODE.crt and NODE.key are written there (default: the config's tls_dir)")
	cfgPath := fs.String("config", "", "cluster config: the node must be in it, and its replication host goes into the certificate")
	var hosts hostList
	fs.Var(&hosts, "host", "a host name or IP address the node is reached at (repeatable, or comma-separated)")
	force := fs.Bool("force", false, "replace the node's existing certificate and key")
	lifetime := fs.Duration("lifetime", replicate.NodeValidity, "validity of the certificate (at most until the CA expires)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError{"usage: tharsis cert create-node --dir DIR [--config FILE] [--host NAME_OR_IP ...] [--force] NODE"}
	}
	node := fs.Arg(0)
	if *cfgPath != "" {
		cfg, err := config.Load(*cfgPath)
		if err != nil {
			return err
		}
		n, ok := cfg.Nodes[node]
		if !ok {
			return fmt.Errorf("node %q is not in %s (it has %s)", node, *cfgPath, strings.Join(cfg.NodeNames(), ", "))
		}
		if h, _, err := net.SplitHostPort(n.Replication); err == nil {
			hosts = append(hostList{h}, hosts...)
		}
		hosts = append(hosts, cfg.NBDTLSHosts(node)...)
		if *dir == "" {
			*dir = cfg.TLSDir
		}
	}
	if *dir == "" {
		return usageError{"cert create-node: name the CA's directory with --dir (or --config with a tls_dir)"}
	}
	if len(hosts) == 0 {
		return usageError{fmt.Sprintf("cert create-node: say where node %s is reached: --config CONFIG (its replication host) and/or --host NAME_OR_IP", node)}
	}
	ca, _, err := loadCA(*dir)
	if err != nil {
		return err
	}
	crt, key := filepath.Join(*dir, replicate.NodeCertFile(node)), filepath.Join(*dir, replicate.NodeKeyFile(node))
	if !*force {
		if err := refuseOverwrite("--force replaces them; restart the node to use the new ones", crt, key); err != nil {
			return err
		}
	}
	certPEM, nodeKeyPEM, err := replicate.NewNodeCert(ca, node, hosts, time.Now(), *lifetime)
	if err != nil {
		return err
	}
	if err := writeFiles(certFile{key, nodeKeyPEM, 0o600}, certFile{crt, certPEM, 0o644}); err != nil {
		return fmt.Errorf("write the certificate of node %s: %w", node, err)
	}
	fmt.Fprintf(w, "wrote %s (node %s, %s, hosts %s, valid until %s) and %s (ECDSA P-256, mode 0600)\n",
		crt, node, replicate.NodeURI(node), strings.Join(hosts, ", "), certExpiry(certPEM), key)
	return nil
}

// loadCA reads the CA of dir: its certificate and key, and ca.crt's PEM.
func loadCA(dir string) (*replicate.CA, []byte, error) {
	caCrt, caKey := filepath.Join(dir, replicate.CACertFile), filepath.Join(dir, replicate.CAKeyFile)
	crtPEM, err := os.ReadFile(caCrt)
	if err != nil {
		return nil, nil, fmt.Errorf("read the CA certificate: %w (make the CA with `tharsis cert create-ca --dir %s`)", err, dir)
	}
	keyPEM, err := os.ReadFile(caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("read the CA key: %w (certificates are made where ca.key is)", err)
	}
	ca, err := replicate.ParseCA(crtPEM, keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("%s and %s: %w", caCrt, caKey, err)
	}
	return ca, crtPEM, nil
}

// The files of an NBD client's certificate directory, named as GnuTLS
// clients (libnbd's tls-certificates, qemu's tls-creds-x509 dir) look for
// them.
const (
	clientCAFile   = "ca-cert.pem"
	clientCertFile = "client-cert.pem"
	clientKeyFile  = "client-key.pem"
)

func certCreateClient(w io.Writer, c *command, args []string) error {
	fs := newFlagSet(c)
	dir := fs.String("dir", "", "directory holding ca.crt and ca.key (default: the config's tls_dir)")
	cfgPath := fs.String("config", "", "cluster config whose tls_dir holds the CA")
	out := fs.String("out", "", "directory for ca-cert.pem, client-cert.pem and client-key.pem (created, mode 0700; default DIR/clients/NAME)")
	force := fs.Bool("force", false, "replace the client's existing certificate and key")
	lifetime := fs.Duration("lifetime", replicate.ClientValidity, "validity of the certificate (at most until the CA expires)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 || fs.Arg(0) == "" || strings.ContainsAny(fs.Arg(0), "/\\") {
		return usageError{"usage: tharsis cert create-client --dir DIR [--out OUT] [--force] NAME"}
	}
	name := fs.Arg(0)
	if *cfgPath != "" && *dir == "" {
		cfg, err := config.Load(*cfgPath)
		if err != nil {
			return err
		}
		*dir = cfg.TLSDir
	}
	if *dir == "" {
		return usageError{"cert create-client: name the CA's directory with --dir (or --config with a tls_dir)"}
	}
	ca, caPEM, err := loadCA(*dir)
	if err != nil {
		return err
	}
	if *out == "" {
		*out = filepath.Join(*dir, "clients", name)
	}
	crt, key, caCopy := filepath.Join(*out, clientCertFile), filepath.Join(*out, clientKeyFile), filepath.Join(*out, clientCAFile)
	if !*force {
		if err := refuseOverwrite("--force replaces them", crt, key); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(*out, 0o700); err != nil {
		return err
	}
	certPEM, keyPEM, err := replicate.NewClientCert(ca, name, time.Now(), *lifetime)
	if err != nil {
		return err
	}
	if err := writeFiles(certFile{key, keyPEM, 0o600}, certFile{crt, certPEM, 0o644}, certFile{caCopy, caPEM, 0o644}); err != nil {
		return fmt.Errorf("write the certificate of client %s: %w", name, err)
	}
	fmt.Fprintf(w, "wrote %s (client %s, valid until %s), %s (ECDSA P-256, mode 0600) and %s (the cluster CA)\n",
		crt, name, certExpiry(certPEM), key, caCopy)
	fmt.Fprintf(w, "use: nbdinfo 'nbds://HOST/EXPORT?tls-certificates=%s'; qemu-img --object tls-creds-x509,id=tls0,endpoint=client,dir=%s; nbd-client -A %s -F %s -K %s\n",
		*out, *out, caCopy, crt, key)
	return nil
}

func certExpiry(certPEM []byte) string {
	id, err := replicate.ParseCertPEM(certPEM)
	if err != nil {
		return "?"
	}
	return id.NotAfter.UTC().Format(time.DateOnly)
}
