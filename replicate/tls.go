package replicate

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/tharsis/tharsis/replicate/wire"
)

// TLS is a node's identity for replication over mutual TLS 1.3: its
// certificate and key, and the cluster CA that every peer's certificate must
// be signed by. Make one with LoadTLS.
//
// Both ends of a connection verify the other's certificate after the TLS
// handshake and before anything else flows: signed by the cluster CA,
// valid now, naming a node of the config (the tharsis://node/NAME URI SAN),
// and on the dialling side the node it meant to reach. A refused peer is
// told why (inside the encrypted channel) before the connection closes, so
// both sides can log the reason.
type TLS struct {
	Node string          // this node's name (its certificate names it)
	Dir  string          // where the files came from, for messages
	Cert tls.Certificate // this node's certificate chain and key
	Leaf *x509.Certificate
	CA   *x509.CertPool
	// IsNode reports whether name is a node of the cluster (of the config
	// in force); nil accepts any name the CA signed.
	IsNode func(name string) bool
	// Now is the clock certificates are checked against; nil: time.Now.
	Now func() time.Time
}

// TLS file names inside a tls_dir.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// NodeCertFile and NodeKeyFile name node's certificate and key in a tls_dir.
func NodeCertFile(node string) string { return node + ".crt" }

// NodeKeyFile names node's key in a tls_dir.
func NodeKeyFile(node string) string { return node + ".key" }

// LoadTLS reads dir/ca.crt and node's dir/NODE.crt and dir/NODE.key. It
// checks that the certificate is signed by the CA, names node and is valid
// now, and that the key is not readable by group or others. Errors name the
// file and the `tharsis cert` command that makes it.
func LoadTLS(dir, node string, isNode func(string) bool) (*TLS, error) {
	caPath := filepath.Join(dir, CACertFile)
	certPath, keyPath := filepath.Join(dir, NodeCertFile(node)), filepath.Join(dir, NodeKeyFile(node))
	missing := func(path string, err error, make string) error {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("tls_dir: %s is missing: %s, then copy it there: %w", path, make, err)
		}
		return fmt.Errorf("tls_dir: read %s: %w", path, err)
	}
	makeCA := fmt.Sprintf("make the cluster CA once with `tharsis cert create-ca --dir %s`", dir)
	makeNode := fmt.Sprintf("make it where ca.key is with `tharsis cert create-node --dir %s --config CONFIG %s`", dir, node)
	caPEM, err := os.ReadFile(caPath)
	if err != nil {
		return nil, missing(caPath, err, makeCA)
	}
	pool, err := poolOf(caPEM)
	if err != nil {
		return nil, fmt.Errorf("tls_dir: %s: %w; %s", caPath, err, makeCA)
	}
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, missing(certPath, err, makeNode)
	}
	st, err := os.Stat(keyPath)
	if err != nil {
		return nil, missing(keyPath, err, makeNode)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("tls_dir: the key %s is readable by others (mode %04o); `chmod 600 %s`", keyPath, st.Mode().Perm(), keyPath)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, missing(keyPath, err, makeNode)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("tls_dir: %s and %s do not make a certificate and its key (%w); %s", certPath, keyPath, err, makeNode)
	}
	t := &TLS{Node: node, Dir: dir, Cert: cert, Leaf: cert.Leaf, CA: pool, IsNode: isNode}
	if got := CertNode(t.Leaf); got != node {
		return nil, fmt.Errorf("tls_dir: %s is not the certificate of node %s (it names %q); %s", certPath, node, got, makeNode)
	}
	if _, err := t.verify(t.Leaf, nil, x509.ExtKeyUsageClientAuth); err != nil {
		return nil, fmt.Errorf("tls_dir: %s: %s; %s", certPath, err.reason, makeNode)
	}
	return t, nil
}

// poolOf returns a pool of the CA certificates in caPEM.
func poolOf(caPEM []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("it holds no PEM certificate")
	}
	return pool, nil
}

func (t *TLS) now() time.Time {
	if t.Now != nil {
		return t.Now()
	}
	return time.Now()
}

// certRefusal says why a peer's certificate is refused: reason is neutral
// (it is sent to the peer), advice says what to do on this side.
type certRefusal struct {
	reason, advice string
}

func describeCert(c *x509.Certificate) string {
	if n := CertNode(c); n != "" {
		return fmt.Sprintf("the certificate of node %q", n)
	}
	return fmt.Sprintf("the certificate %q", c.Subject.CommonName)
}

// verify checks leaf (with intermediates) against the cluster CA for usage
// and returns the node it names.
func (t *TLS) verify(leaf *x509.Certificate, inter []*x509.Certificate, usage x509.ExtKeyUsage) (string, *certRefusal) {
	pool := x509.NewCertPool()
	for _, c := range inter {
		pool.AddCert(c)
	}
	now := t.now()
	_, err := leaf.Verify(x509.VerifyOptions{Roots: t.CA, Intermediates: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}})
	var inv x509.CertificateInvalidError
	var ua x509.UnknownAuthorityError
	switch {
	case err == nil:
	case errors.As(err, &inv) && inv.Reason == x509.Expired && now.After(leaf.NotAfter):
		return "", &certRefusal{
			fmt.Sprintf("%s expired at %s", describeCert(leaf), leaf.NotAfter.UTC().Format(time.RFC3339)),
			"make it a new one (`tharsis cert create-node --force`) and restart that node"}
	case errors.As(err, &inv) && inv.Reason == x509.Expired:
		return "", &certRefusal{
			fmt.Sprintf("%s is not valid before %s", describeCert(leaf), leaf.NotBefore.UTC().Format(time.RFC3339)),
			"check the clocks of both nodes"}
	case errors.As(err, &ua):
		return "", &certRefusal{
			fmt.Sprintf("%s (issued by %q) is not signed by the cluster CA", describeCert(leaf), leaf.Issuer.CommonName),
			"every node needs the same ca.crt and a certificate made with its ca.key (`tharsis cert create-node`)"}
	default:
		return "", &certRefusal{fmt.Sprintf("%s is not valid: %v", describeCert(leaf), err),
			"make it a new one with `tharsis cert create-node`"}
	}
	name := CertNode(leaf)
	switch {
	case name == "":
		return "", &certRefusal{fmt.Sprintf("%s names no tharsis node (no %sNAME URI)", describeCert(leaf), nodeURIPrefix),
			"make node certificates with `tharsis cert create-node`"}
	case t.IsNode != nil && !t.IsNode(name):
		return "", &certRefusal{fmt.Sprintf("%s names a node that is not in the config", describeCert(leaf)),
			"add the node to the config on every node, or remove the stray one"}
	}
	return name, nil
}

// verifyPeer checks the certificate the peer of cs presented.
func (t *TLS) verifyPeer(cs tls.ConnectionState, usage x509.ExtKeyUsage) (string, *certRefusal) {
	if len(cs.PeerCertificates) == 0 {
		return "", &certRefusal{"no certificate was presented", "give the node a certificate (`tharsis cert create-node`) and set tls_dir"}
	}
	return t.verify(cs.PeerCertificates[0], cs.PeerCertificates[1:], usage)
}

func (t *TLS) config() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{t.Cert},
		// The peer's certificate is verified by verifyPeer right after the
		// handshake, before anything else is sent, so that a refusal can
		// be explained to the peer; the handshake itself still checks that
		// the peer holds the key of the certificate it presented.
		InsecureSkipVerify:     true,
		SessionTicketsDisabled: true,
	}
}

// refuse tells the peer why it is refused, then lets it read that before
// the caller closes the connection.
func refuse(tc *tls.Conn, msg string) {
	tc.SetDeadline(time.Now().Add(2 * time.Second))
	wire.NewConn(tc).SendFlush(&wire.Error{Code: wire.CodeAuth, Message: msg})
	tc.CloseWrite()
	io.Copy(io.Discard, io.LimitReader(tc, 1<<20))
}

// client runs the TLS handshake on nc to peer p and verifies the peer's
// certificate; a refused peer is told why.
func (t *TLS) client(ctx context.Context, nc net.Conn, p Peer) (*tls.Conn, error) {
	cfg := t.config()
	if h, _, err := net.SplitHostPort(p.Addr); err == nil {
		cfg.ServerName = h
	}
	tc := tls.Client(nc, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		var ae tls.AlertError
		if errors.As(err, &ae) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) {
			return nil, authErr("TLS handshake with peer %s failed (%v): does it run with the same tls_dir setting? (a node without tls_dir does not speak TLS)", p, err)
		}
		return nil, fmt.Errorf("TLS handshake with peer %s: %w", p, err)
	}
	name, r := t.verifyPeer(tc.ConnectionState(), x509.ExtKeyUsageServerAuth)
	if r == nil && p.Name != "" && name != p.Name {
		r = &certRefusal{
			fmt.Sprintf("node %s dialled node %q at %s, but that address answered with the certificate of node %q", t.Node, p.Name, p.Addr, name),
			"check the replication addresses in the config"}
	}
	if r != nil {
		refuse(tc, fmt.Sprintf("node %s refuses your certificate: %s", t.Node, r.reason))
		return nil, authErr("refused peer %s: %s; %s", p, r.reason, r.advice)
	}
	return tc, nil
}

// server runs the TLS handshake on an accepted connection nc and verifies
// the client's certificate; it returns the node the certificate names. A
// refused client is told why.
func (t *TLS) server(ctx context.Context, nc net.Conn, remote string) (*tls.Conn, string, error) {
	cfg := t.config()
	cfg.ClientAuth = tls.RequireAnyClientCert
	tc := tls.Server(nc, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		var rh tls.RecordHeaderError
		if errors.As(err, &rh) {
			return nil, "", authErr("peer %s does not speak TLS, but this node requires it (tls_dir): set tls_dir on every node of the cluster", remote)
		}
		return nil, "", authErr("TLS handshake with peer %s failed: %v", remote, err)
	}
	name, r := t.verifyPeer(tc.ConnectionState(), x509.ExtKeyUsageClientAuth)
	if r != nil {
		refuse(tc, fmt.Sprintf("node %s refuses your certificate: %s", t.Node, r.reason))
		return nil, "", authErr("refused peer %s: %s; %s", remote, r.reason, r.advice)
	}
	return tc, name, nil
}
