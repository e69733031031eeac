package nbd

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tharsis/tharsis/blockdev"
	"github.com/tharsis/tharsis/replicate"
)

// testPKI is a cluster CA with a server certificate for 127.0.0.1 and
// localhost, a client certificate, and a client certificate of another CA,
// written in the layout GnuTLS clients read (libnbd's tls-certificates,
// qemu's tls-creds-x509 dir).
type testPKI struct {
	server  *tls.Config // what the node serves with
	pool    *x509.CertPool
	anonDir string // ca-cert.pem only
	certDir string // ca-cert.pem, client-cert.pem, client-key.pem
	// foreignDir holds ca-cert.pem of the cluster CA with a client
	// certificate and key of another CA.
	foreignDir string
	client     tls.Certificate // signed by the cluster CA
	foreign    tls.Certificate // signed by another CA
	caPEM      []byte
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	now := time.Now()
	ca, caPEM, _, err := replicate.NewCA("test CA", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, _, _, err := replicate.NewCA("other CA", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srvPEM, srvKey, err := replicate.NewNodeCert(ca, "alpha", []string{"127.0.0.1", "localhost"}, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cliPEM, cliKey, err := replicate.NewClientCert(ca, "backup", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	forPEM, forKey, err := replicate.NewClientCert(other, "intruder", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair := func(c, k []byte) tls.Certificate {
		p, err := tls.X509KeyPair(c, k)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	p := &testPKI{
		server: ServerTLSConfig(pair(srvPEM, srvKey), pool), pool: pool,
		client: pair(cliPEM, cliKey), foreign: pair(forPEM, forKey), caPEM: caPEM,
	}
	write := func(name string, files ...[]byte) string {
		dir := filepath.Join(t.TempDir(), name)
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		for i, n := range []string{"ca-cert.pem", "client-cert.pem", "client-key.pem"}[:len(files)] {
			if err := os.WriteFile(filepath.Join(dir, n), files[i], 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	p.anonDir = write("anon", caPEM)
	p.certDir = write("cert", caPEM, cliPEM, cliKey)
	p.foreignDir = write("foreign", caPEM, forPEM, forKey)
	return p
}

// clientConfig is a Go TLS client trusting the cluster CA, presenting cert
// when it is not nil.
func (p *testPKI) clientConfig(cert *tls.Certificate) *tls.Config {
	cfg := &tls.Config{RootCAs: p.pool, ServerName: "localhost"}
	if cert != nil {
		// Sent whatever CAs the server names (Go would otherwise keep a
		// certificate of another CA to itself).
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	return cfg
}

// startTLS sends NBD_OPT_STARTTLS, expects its ACK and runs the TLS
// handshake; it returns the handshake's error.
func (k *client) startTLS(cfg *tls.Config) error {
	k.t.Helper()
	k.sendOpt(optStartTLS, nil)
	if typ, msg := k.optReply(optStartTLS); typ != repAck {
		k.t.Fatalf("STARTTLS answered %#x %q", typ, msg)
	}
	tc := tls.Client(k.c, cfg)
	if err := tc.Handshake(); err != nil {
		return err
	}
	k.c, k.br = tc, bufio.NewReader(tc)
	return nil
}

// expect sends option opt with data and checks the reply type.
func (k *client) expect(opt uint32, data []byte, want uint32) string {
	k.t.Helper()
	k.sendOpt(opt, data)
	typ, msg := k.optReply(opt)
	if typ != want {
		k.t.Fatalf("option %d answered %#x %q, want %#x", opt, typ, msg, want)
	}
	return string(msg)
}

// listNames sends NBD_OPT_LIST and returns the export names.
func (k *client) listNames() []string {
	k.t.Helper()
	k.sendOpt(optList, nil)
	final, replies := k.collect(optList, repServer, 4)
	if final != repAck {
		k.t.Fatalf("LIST answered %#x", final)
	}
	var names []string
	for _, r := range replies {
		n := binary.BigEndian.Uint32(r)
		names = append(names, string(r[4:4+n]))
	}
	return names
}

// goExport sends NBD_OPT_GO for name and returns the final reply type.
func (k *client) goExport(name string) uint32 {
	k.t.Helper()
	final, _ := k.info(optGo, name)
	if final == repAck {
		k.structured = false
	}
	return final
}

// roundTrip writes and reads back a block.
func (k *client) roundTrip() {
	k.t.Helper()
	data := []byte(strings.Repeat("tls!", 1024))
	if r := k.do(cmdWrite, 0, 1, 4096, uint32(len(data)), data); r.errno != 0 {
		k.t.Fatalf("write: %v", r)
	}
	if r := k.do(cmdRead, 0, 2, 4096, uint32(len(data)), nil); r.errno != 0 || string(r.data) != string(data) {
		k.t.Fatalf("read back: %v", r)
	}
	k.send(cmdDisc, 0, 3, 0, 0, nil)
}

func tlsServer(p *testPKI) *Server {
	s := newServer()
	s.SetTLSConfig(p.server)
	return s
}

// With every export TLS-only (FORCEDTLS), a plain client gets
// NBD_REP_ERR_TLS_REQD for every option but STARTTLS and ABORT; after
// STARTTLS the haggling goes on over TLS, and a second STARTTLS is invalid.
func TestTLSRequireRefusesPlainOptions(t *testing.T) {
	p := newTestPKI(t)
	l := startServer(t, tlsServer(p), Export{Name: "a", Device: blockdev.NewMemory(1 << 20), TLS: TLSRequire})
	k := dial(t, l)
	k.greet(flagCFixedNewstyle | flagCNoZeroes)
	for _, opt := range []uint32{optList, optStructuredReply, optListMetaContext, 99} {
		if msg := k.expect(opt, nil, repErrTLSReqd); !strings.Contains(msg, "STARTTLS") {
			t.Errorf("option %d refused with %q, which does not say what to do", opt, msg)
		}
	}
	for _, opt := range []uint32{optGo, optInfo} {
		k.expect(opt, appendInfoRequest(nil, infoRequest{name: "a"}), repErrTLSReqd)
	}
	k.expect(optStartTLS, []byte{1}, repErrInvalid)
	if err := k.startTLS(p.clientConfig(nil)); err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	st := k.c.(*tls.Conn).ConnectionState()
	if st.Version != tls.VersionTLS13 {
		t.Errorf("negotiated %s, want TLS 1.3", tls.VersionName(st.Version))
	}
	k.expect(optStartTLS, nil, repErrInvalid)
	if got := k.listNames(); len(got) != 1 || got[0] != "a" {
		t.Errorf("LIST over TLS: %q", got)
	}
	if final := k.goExport("a"); final != repAck {
		t.Fatalf("GO over TLS answered %#x", final)
	}
	k.roundTrip()
	k.expectClosed()
}

// NBD_OPT_EXPORT_NAME cannot be refused: before TLS on a TLS-only server
// the connection is closed; ABORT still works.
func TestTLSRequireExportNameCloses(t *testing.T) {
	p := newTestPKI(t)
	l := startServer(t, tlsServer(p), Export{Name: "a", Device: blockdev.NewMemory(4096), TLS: TLSRequire})
	k := dial(t, l)
	k.greet(flagCFixedNewstyle)
	k.sendOpt(optExportName, []byte("a"))
	k.expectClosed()

	k = dial(t, l)
	k.greet(flagCFixedNewstyle)
	k.expect(optAbort, nil, repAck)
	k.expectClosed()
}

// With exports of both kinds (SELECTIVETLS), a plain client is served the
// tls = "on" and "off" exports, is not shown the TLS-only one and is
// refused it with NBD_REP_ERR_TLS_REQD; a TLS client is served all.
func TestTLSOnServesPlainAndTLS(t *testing.T) {
	p := newTestPKI(t)
	exports := []Export{
		{Name: "on", Device: blockdev.NewMemory(1 << 20), TLS: TLSOn},
		{Name: "off", Device: blockdev.NewMemory(1 << 20)},
		{Name: "secret", Device: blockdev.NewMemory(1 << 20), TLS: TLSRequire},
	}
	l := startServer(t, tlsServer(p), exports...)

	k := dial(t, l)
	k.greet(flagCFixedNewstyle | flagCNoZeroes)
	if got := strings.Join(k.listNames(), ","); got != "on,off" {
		t.Errorf("plain LIST shows %q, want on,off", got)
	}
	k.expect(optInfo, appendInfoRequest(nil, infoRequest{name: "secret"}), repErrTLSReqd)
	k.expect(optListMetaContext, appendMetaRequest(nil, metaRequest{name: "secret"}), repErrTLSReqd)
	if final := k.goExport("on"); final != repAck {
		t.Fatalf("plain GO on: %#x", final)
	}
	k.roundTrip()

	k = dial(t, l)
	k.greet(flagCFixedNewstyle)
	k.sendOpt(optExportName, []byte("secret"))
	k.expectClosed()

	for _, name := range []string{"on", "off", "secret"} {
		k = dial(t, l)
		k.greet(flagCFixedNewstyle | flagCNoZeroes)
		if err := k.startTLS(p.clientConfig(nil)); err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(k.listNames(), ","); got != "on,off,secret" {
			t.Errorf("TLS LIST shows %q", got)
		}
		if final := k.goExport(name); final != repAck {
			t.Fatalf("TLS GO %s: %#x", name, final)
		}
		k.roundTrip()
	}
}

// Without TLS configured, or with every export tls = "off", STARTTLS is
// answered NBD_REP_ERR_UNSUP and the session goes on in plain text.
func TestTLSOffRefusesStartTLS(t *testing.T) {
	p := newTestPKI(t)
	for name, srv := range map[string]*Server{"no config": newServer(), "all off": tlsServer(p)} {
		t.Run(name, func(t *testing.T) {
			l := startServer(t, srv, Export{Name: "a", Device: blockdev.NewMemory(1 << 20), TLS: TLSOff})
			k := dial(t, l)
			k.greet(flagCFixedNewstyle | flagCNoZeroes)
			k.expect(optStartTLS, nil, repErrUnsup)
			if final := k.goExport("a"); final != repAck {
				t.Fatalf("GO: %#x", final)
			}
			k.roundTrip()
		})
	}
}

// An export with VerifyClient serves only clients with a certificate of
// the cluster CA; a certificate of another CA fails the TLS handshake.
func TestTLSVerifyClient(t *testing.T) {
	p := newTestPKI(t)
	l := startServer(t, tlsServer(p),
		Export{Name: "v", Device: blockdev.NewMemory(1 << 20), TLS: TLSRequire, VerifyClient: true},
		Export{Name: "open", Device: blockdev.NewMemory(1 << 20), TLS: TLSRequire})

	k := dial(t, l)
	k.greet(flagCFixedNewstyle | flagCNoZeroes)
	if err := k.startTLS(p.clientConfig(nil)); err != nil {
		t.Fatal(err)
	}
	if msg := k.expect(optGo, appendInfoRequest(nil, infoRequest{name: "v"}), repErrPolicy); !strings.Contains(msg, "create-client") {
		t.Errorf("refusal %q does not say how to get a certificate", msg)
	}
	if final := k.goExport("open"); final != repAck {
		t.Fatalf("GO open without a client certificate: %#x", final)
	}
	k.roundTrip()

	k = dial(t, l)
	k.greet(flagCFixedNewstyle | flagCNoZeroes)
	if err := k.startTLS(p.clientConfig(&p.client)); err != nil {
		t.Fatal(err)
	}
	if final := k.goExport("v"); final != repAck {
		t.Fatalf("GO v with a client certificate: %#x", final)
	}
	k.roundTrip()

	k = dial(t, l)
	k.greet(flagCFixedNewstyle | flagCNoZeroes)
	err := k.startTLS(p.clientConfig(&p.foreign))
	if err == nil {
		// TLS 1.3: the client learns of the refusal (an alert) at its
		// first read; an accepted client would wait here for its deadline.
		_, err = k.br.ReadByte()
	}
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a client certificate of another CA was accepted (%v)", err)
	}
	t.Logf("refused: %v", err)
}

// State negotiated before STARTTLS does not survive it.
func TestTLSDropsPlainState(t *testing.T) {
	p := newTestPKI(t)
	l := startServer(t, tlsServer(p), Export{Name: "a", Device: blockdev.NewMemory(1 << 20), TLS: TLSOn})
	k := dial(t, l)
	k.greet(flagCFixedNewstyle | flagCNoZeroes)
	k.expect(optStructuredReply, nil, repAck)
	if err := k.startTLS(p.clientConfig(nil)); err != nil {
		t.Fatal(err)
	}
	k.expect(optSetMetaContext, appendMetaRequest(nil, metaRequest{name: "a", queries: []string{metaBaseAllocation}}), repErrInvalid)
}

// Hostile clients: bytes sent after STARTTLS ahead of its ACK, and a
// handshake that is not TLS, close the connection.
func TestTLSMalformed(t *testing.T) {
	p := newTestPKI(t)
	l := startServer(t, tlsServer(p), Export{Name: "a", Device: blockdev.NewMemory(4096), TLS: TLSRequire})

	k := dial(t, l)
	k.greet(flagCFixedNewstyle)
	h := optionHeader{option: optStartTLS}
	k.write(append(h.appendBinary(nil), "early bytes"...))
	if typ, _ := k.optReply(optStartTLS); typ != repAck {
		t.Fatalf("STARTTLS: %#x", typ)
	}
	k.expectClosed()

	k = dial(t, l)
	k.greet(flagCFixedNewstyle)
	k.expect(optStartTLS, nil, repAck)
	k.write((&optionHeader{option: optList}).appendBinary(nil)) // plain text where a ClientHello belongs
	k.expectClosed()
}

// Over TLS, replies larger than the server's write buffer and bursts of
// pipelined replies (gathered into few records and system calls) arrive
// whole and in one piece each, with simple and structured replies.
func TestTLSLargeAndPipelinedReplies(t *testing.T) {
	p := newTestPKI(t)
	const size = 8 << 20
	l := startServer(t, tlsServer(p), Export{Name: "on", Device: blockdev.NewMemory(size), TLS: TLSOn})
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i*7 + i>>12)
	}
	for _, structured := range []bool{false, true} {
		k := dial(t, l)
		k.greet(flagCFixedNewstyle | flagCNoZeroes)
		if err := k.startTLS(p.clientConfig(nil)); err != nil {
			t.Fatal(err)
		}
		k.negotiate("on", structured)
		const big = 3 << 20
		if r := k.do(cmdWrite, 0, 1, 0, big, data[:big]); r.errno != 0 {
			t.Fatalf("write of %d bytes: %v", big, r)
		}
		if r := k.do(cmdWrite, 0, 2, big, size-big, data[big:]); r.errno != 0 {
			t.Fatalf("write: %v", r)
		}
		// Sent before any reply is read: the server batches the replies.
		want := map[uint64][]byte{}
		for h := uint64(10); h < 200; h++ {
			off := (h * 40961) % (size - 4096)
			k.send(cmdRead, 0, h, off, 4096, nil)
			want[h] = data[off : off+4096]
		}
		k.send(cmdRead, 0, 200, 1, size-2, nil)
		want[200] = data[1 : size-1]
		k.send(cmdRead, 0, 201, size, 4096, nil) // past the end: an error reply
		for range len(want) + 1 {
			r := k.recv()
			if r.handle == 201 {
				if r.errno == 0 {
					t.Errorf("structured=%v: a read past the end succeeded", structured)
				}
				continue
			}
			w, ok := want[r.handle]
			if !ok || r.errno != 0 || !bytes.Equal(r.data, w) {
				t.Fatalf("structured=%v: reply for handle %d (errno %d, %d bytes) is not the %d bytes asked for", structured, r.handle, r.errno, len(r.data), len(w))
			}
			delete(want, r.handle)
		}
		k.send(cmdDisc, 0, 300, 0, 0, nil)
	}
}
