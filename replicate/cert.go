package replicate

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"strings"
	"time"
)

// Validity of the certificates NewCA and NewNodeCert make.
const (
	CAValidity   = 10 * 365 * 24 * time.Hour // ten years
	NodeValidity = 2 * 365 * 24 * time.Hour  // two years
)

// nodeURIPrefix starts the URI SAN that names a node in its certificate:
// tharsis://node/NAME. The URI is the node's identity for replication; the
// CN repeats the name for people reading the certificate.
const nodeURIPrefix = "tharsis://node/"

// NodeURI returns the URI SAN that names node in its certificate.
func NodeURI(node string) *url.URL {
	return &url.URL{Scheme: "tharsis", Host: "node", Path: "/" + node}
}

// CertNode returns the node a certificate names (its tharsis://node/NAME
// URI SAN), or "" when it names none (a certificate not made for a tharsis
// node).
func CertNode(c *x509.Certificate) string {
	for _, u := range c.URIs {
		if s := u.String(); strings.HasPrefix(s, nodeURIPrefix) && len(s) > len(nodeURIPrefix) {
			return s[len(nodeURIPrefix):]
		}
	}
	return ""
}

// CA is a cluster certificate authority: its certificate and signing key.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// NewCA makes a self-signed cluster CA valid from now for validity, with an
// ECDSA P-256 key. It returns the CA and its certificate and key in PEM.
func NewCA(name string, now time.Time, validity time.Duration) (ca *CA, certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"tharsis"}},
		NotBefore:             now.Add(-time.Hour), // tolerate clocks a little behind
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		SubjectKeyId:          keyID(&key.PublicKey),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("create the CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, err
	}
	keyPEM, err = marshalKey(key)
	if err != nil {
		return nil, nil, nil, err
	}
	return &CA{Cert: cert, Key: key}, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

// ParseCA reads a CA from its certificate and key in PEM.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := ParseCertPEM(certPEM)
	if err != nil {
		return nil, err
	}
	if !cert.IsCA {
		return nil, errors.New("the certificate is not a CA certificate")
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, errors.New("no PEM key found")
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse the key: %w", err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported key type %T", k)
	}
	return &CA{Cert: cert, Key: signer}, nil
}

// NewNodeCert makes the certificate of node signed by ca, valid from now for
// validity (at most until the CA expires), for both ends of a replication
// connection (server and client auth). The node is named by the URI SAN
// tharsis://node/NODE and the CN; hosts (host names or IP addresses, e.g.
// the node's replication host) become DNS and IP SANs. It returns the
// certificate and its new ECDSA P-256 key in PEM.
func NewNodeCert(ca *CA, node string, hosts []string, now time.Time, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if node == "" {
		return nil, nil, errors.New("no node name")
	}
	var ips []net.IP
	var dns []string
	seen := map[string]bool{}
	for _, h := range hosts {
		if h == "" || seen[h] {
			continue
		}
		seen[h] = true
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, h)
		}
	}
	return issue(ca, "node "+node, &x509.Certificate{
		Subject:     pkix.Name{CommonName: node, Organization: []string{"tharsis"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{NodeURI(node)},
		IPAddresses: ips,
		DNSNames:    dns,
	}, now, validity)
}

// issue fills in tmpl's serial, validity (from now, at most until the CA
// expires), key usage and key IDs, makes a new ECDSA P-256 key and signs the
// certificate with ca. what names the certificate in errors.
func issue(ca *CA, what string, tmpl *x509.Certificate, now time.Time, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl.SerialNumber = serial()
	tmpl.NotBefore = now.Add(-time.Hour) // tolerate clocks a little behind
	tmpl.NotAfter = now.Add(validity)
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.SubjectKeyId = keyID(&key.PublicKey)
	tmpl.AuthorityKeyId = ca.Cert.SubjectKeyId
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("create the certificate of %s: %w", what, err)
	}
	keyPEM, err = marshalKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

// clientURIPrefix starts the URI SAN that names an NBD client in its
// certificate: tharsis://client/NAME. It is not a node's URI, so a client
// certificate is never taken for a node on a replication link.
const clientURIPrefix = "tharsis://client/"

// ClientValidity is the validity of the certificates NewClientCert makes.
const ClientValidity = NodeValidity

// NewClientCert makes the certificate of an NBD client called name, signed
// by ca, valid from now for validity (at most until the CA expires), for
// client auth only. The client is named by the URI SAN
// tharsis://client/NAME and the CN. It returns the certificate and its new
// ECDSA P-256 key in PEM.
func NewClientCert(ca *CA, name string, now time.Time, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if name == "" {
		return nil, nil, errors.New("no client name")
	}
	return issue(ca, "client "+name, &x509.Certificate{
		Subject:     pkix.Name{CommonName: name, Organization: []string{"tharsis"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{{Scheme: "tharsis", Host: "client", Path: "/" + name}},
	}, now, validity)
}

// CertClient returns the NBD client a certificate names (its
// tharsis://client/NAME URI SAN), or "".
func CertClient(c *x509.Certificate) string {
	for _, u := range c.URIs {
		if s := u.String(); strings.HasPrefix(s, clientURIPrefix) && len(s) > len(clientURIPrefix) {
			return s[len(clientURIPrefix):]
		}
	}
	return ""
}

// ParseCertPEM parses the first PEM certificate in b.
func ParseCertPEM(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate found")
	}
	return x509.ParseCertificate(blk.Bytes)
}

func marshalKey(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n.Add(n, big.NewInt(1))
}

func keyID(pub *ecdsa.PublicKey) []byte {
	b, _ := x509.MarshalPKIXPublicKey(pub)
	s := sha256.Sum256(b)
	return s[:20]
}
