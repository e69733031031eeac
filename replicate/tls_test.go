package replicate

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tharsis/tharsis/blockdev"
	"github.com/tharsis/tharsis/internal/testutil"
)

// testCA is a cluster CA made for a test, with its files in dir.
type testCA struct {
	t     testing.TB
	dir   string
	ca    *CA
	nodes []string // the nodes of the "config"
}

func newTestCA(t testing.TB, nodes ...string) *testCA {
	t.Helper()
	ca, certPEM, _, err := NewCA("test cluster CA", time.Now(), CAValidity)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, CACertFile), certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return &testCA{t: t, dir: dir, ca: ca, nodes: nodes}
}

// issue makes node's certificate and key in the CA's dir, valid from
// notBefore for validity, with the loopback address among its hosts.
func (c *testCA) issue(node string, notBefore time.Time, validity time.Duration) {
	c.t.Helper()
	certPEM, keyPEM, err := NewNodeCert(c.ca, node, []string{"127.0.0.1", "localhost"}, notBefore, validity)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.dir, NodeCertFile(node)), certPEM, 0o644); err != nil {
		c.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.dir, NodeKeyFile(node)), keyPEM, 0o600); err != nil {
		c.t.Fatal(err)
	}
}

// identity is node's TLS identity (issued now unless already issued); it
// accepts the CA's nodes as peers. It reads the files as LoadTLS does, but
// without LoadTLS's checks, so an expired certificate can be used.
func (c *testCA) identity(node string) *TLS {
	c.t.Helper()
	certPath := filepath.Join(c.dir, NodeCertFile(node))
	if _, err := os.Stat(certPath); err != nil {
		c.issue(node, time.Now(), NodeValidity)
	}
	cert, err := tls.LoadX509KeyPair(certPath, filepath.Join(c.dir, NodeKeyFile(node)))
	if err != nil {
		c.t.Fatal(err)
	}
	caPEM, err := os.ReadFile(filepath.Join(c.dir, CACertFile))
	if err != nil {
		c.t.Fatal(err)
	}
	pool, err := poolOf(caPEM)
	if err != nil {
		c.t.Fatal(err)
	}
	return &TLS{Node: node, Dir: c.dir, Cert: cert, Leaf: cert.Leaf, CA: pool, IsNode: c.isNode}
}

func (c *testCA) isNode(name string) bool { return slices.Contains(c.nodes, name) }

// newTLSNode is newNode with TLS and no cluster secret.
func newTLSNode(t testing.TB, name string, size int64, id *TLS) *node {
	n := &node{t: t, name: name, dir: filepath.Join(t.TempDir(), name), data: blockdev.NewMemory(size), logBuf: &lockedBuffer{}, tls: id}
	n.listen(nil)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log of node %s:\n%s", name, n.logBuf.String())
		}
	})
	return n
}

func TestTLSGoodPair(t *testing.T) {
	ca := newTestCA(t, "alpha", "beta")
	a := newTLSNode(t, "alpha", 1<<20, ca.identity("alpha"))
	a.startPrimary(0)
	b := newTLSNode(t, "beta", 1<<20, ca.identity("beta"))
	b.startSecondary(func() []Peer { return []Peer{a.peer()} }, nil)
	if _, err := a.prim.WriteAt(bytes.Repeat([]byte("tls"), 1000), 4096); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, a.prim, b)
	sameData(t, a, b)
	// Status and role messages go the same way.
	st, err := fetchNodeStatus(t.Context(), "beta", Auth{TLS: b.tls}, a.peer())
	if err != nil || st.Node != "alpha" {
		t.Fatalf("status of alpha over TLS = %+v, %v", st, err)
	}
	// The connection is TLS 1.3.
	pc, err := dialPeer(t.Context(), "beta", Auth{TLS: b.tls}, a.peer())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.close()
	tc, ok := pc.nc.(*tls.Conn)
	if !ok || tc.ConnectionState().Version != tls.VersionTLS13 {
		t.Fatalf("connection is %T, want TLS 1.3", pc.nc)
	}
	t.Logf("cipher suite: %s", tls.CipherSuiteName(tc.ConnectionState().CipherSuite))
	// With TLS, a cluster secret is an extra check inside it.
	if _, err := fetchNodeStatus(t.Context(), "beta", Auth{TLS: b.tls, Secret: []byte("a secret alpha lacks")}, a.peer()); !errors.Is(err, ErrAuth) {
		t.Errorf("a secret only one side has: err = %v, want ErrAuth", err)
	}
}

// refusal dials server as client and checks that both sides say why, each
// with want in its message.
func checkRefused(t *testing.T, server *node, client *TLS, dial Peer, want string) {
	t.Helper()
	_, err := fetchNodeStatus(t.Context(), client.Node, Auth{TLS: client}, dial)
	if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), want) {
		t.Fatalf("client error = %v, want ErrAuth containing %q", err, want)
	}
	t.Logf("client: %v", err)
	testutil.WaitFor(t, 5*time.Second, "the server to log "+want, func() bool {
		return strings.Contains(unquote(server.logBuf.String()), want)
	})
	t.Logf("server: %s", lastLine(unquote(server.logBuf.String()), want))
}

// unquote undoes the quoting of slog's text handler in a log.
func unquote(log string) string { return strings.ReplaceAll(log, `\"`, `"`) }

func lastLine(log, with string) string {
	lines := strings.Split(log, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], with) {
			return lines[i]
		}
	}
	return ""
}

func TestTLSRefusals(t *testing.T) {
	ca := newTestCA(t, "alpha", "beta", "gamma")
	t.Run("wrong CA", func(t *testing.T) {
		a := newTLSNode(t, "alpha", 1<<20, ca.identity("alpha"))
		other := newTestCA(t, "alpha", "beta")
		checkRefused(t, a, other.identity("beta"), a.peer(), "is not signed by the cluster CA")
	})
	t.Run("expired client", func(t *testing.T) {
		a := newTLSNode(t, "alpha", 1<<20, ca.identity("alpha"))
		ca.issue("beta", time.Now().Add(-3*365*24*time.Hour), NodeValidity)
		defer os.Remove(filepath.Join(ca.dir, NodeCertFile("beta")))
		checkRefused(t, a, ca.identity("beta"), a.peer(), `the certificate of node "beta" expired at`)
	})
	t.Run("expired server", func(t *testing.T) {
		ca.issue("gamma", time.Now().Add(-3*365*24*time.Hour), NodeValidity)
		defer os.Remove(filepath.Join(ca.dir, NodeCertFile("gamma")))
		g := newTLSNode(t, "gamma", 1<<20, ca.identity("gamma"))
		checkRefused(t, g, ca.identity("beta"), g.peer(), `the certificate of node "gamma" expired at`)
	})
	t.Run("unknown node", func(t *testing.T) {
		a := newTLSNode(t, "alpha", 1<<20, ca.identity("alpha"))
		// The right CA, but a node the config does not have.
		checkRefused(t, a, ca.identity("mallory"), a.peer(), `the certificate of node "mallory" names a node that is not in the config`)
	})
	t.Run("another node than dialled", func(t *testing.T) {
		a := newTLSNode(t, "alpha", 1<<20, ca.identity("alpha"))
		// beta means to reach gamma, but gamma's address answers as alpha.
		checkRefused(t, a, ca.identity("beta"), Peer{Name: "gamma", Addr: a.addr}, `dialled node "gamma" at `+a.addr+`, but that address answered with the certificate of node "alpha"`)
	})
	t.Run("hello of another node", func(t *testing.T) {
		a := newTLSNode(t, "alpha", 1<<20, ca.identity("alpha"))
		// beta's certificate, but it says it is gamma inside.
		_, err := fetchNodeStatus(t.Context(), "gamma", Auth{TLS: ca.identity("beta")}, a.peer())
		if err == nil {
			t.Fatal("a node claiming another node's name was accepted")
		}
		testutil.WaitFor(t, 5*time.Second, "the server to log the impostor", func() bool {
			return strings.Contains(a.logBuf.String(), `says it is node \"gamma\", but its certificate names node \"beta\"`)
		})
	})
	t.Run("plain client", func(t *testing.T) {
		a := newTLSNode(t, "alpha", 1<<20, ca.identity("alpha"))
		_, err := fetchNodeStatus(t.Context(), "beta", Auth{Secret: testSecret}, a.peer())
		if err == nil {
			t.Fatal("a plain client was served by a TLS node")
		}
		testutil.WaitFor(t, 5*time.Second, "the server to log the plain client", func() bool {
			return strings.Contains(a.logBuf.String(), "does not speak TLS, but this node requires it (tls_dir)")
		})
	})
	t.Run("plain server", func(t *testing.T) {
		a := newNode(t, "alpha", 1<<20)
		_, err := fetchNodeStatus(t.Context(), "beta", Auth{TLS: ca.identity("beta")}, a.peer())
		if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), "tls_dir") {
			t.Fatalf("TLS client to a plain server: err = %v, want ErrAuth naming tls_dir", err)
		}
	})
}

func TestLoadTLS(t *testing.T) {
	ca := newTestCA(t, "alpha")
	_, err := LoadTLS(ca.dir, "alpha", ca.isNode)
	if err == nil || !strings.Contains(err.Error(), "alpha.crt is missing") || !strings.Contains(err.Error(), "tharsis cert create-node") {
		t.Fatalf("missing node certificate: err = %v", err)
	}
	ca.issue("alpha", time.Now(), NodeValidity)
	id, err := LoadTLS(ca.dir, "alpha", ca.isNode)
	if err != nil || id.Node != "alpha" {
		t.Fatalf("LoadTLS = %v, %v", id, err)
	}
	if _, err := LoadTLS(ca.dir, "beta", ca.isNode); err == nil || !strings.Contains(err.Error(), "beta.crt is missing") {
		t.Fatalf("another node's files: err = %v", err)
	}
	os.Chmod(filepath.Join(ca.dir, NodeKeyFile("alpha")), 0o644)
	if _, err := LoadTLS(ca.dir, "alpha", ca.isNode); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("key readable by others: err = %v", err)
	}
	os.Chmod(filepath.Join(ca.dir, NodeKeyFile("alpha")), 0o600)
	ca.issue("alpha", time.Now().Add(-3*365*24*time.Hour), NodeValidity)
	if _, err := LoadTLS(ca.dir, "alpha", ca.isNode); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired certificate: err = %v", err)
	}
	os.Remove(filepath.Join(ca.dir, CACertFile))
	if _, err := LoadTLS(ca.dir, "alpha", ca.isNode); err == nil || !strings.Contains(err.Error(), "tharsis cert create-ca") {
		t.Fatalf("missing CA: err = %v", err)
	}
}

// recProxy forwards TCP connections to target and records every byte
// that crosses it, both ways: what a capture of the link would see.
type recProxy struct {
	l   net.Listener
	mu  sync.Mutex
	rec bytes.Buffer
	wg  sync.WaitGroup
}

func newRecProxy(t *testing.T, target string) *recProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &recProxy{l: l}
	var conns sync.Map
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			conns.Store(c, u)
			p.wg.Add(2)
			pipe := func(dst, src net.Conn) {
				defer p.wg.Done()
				io.Copy(io.MultiWriter(dst, p), src)
				dst.Close()
				src.Close()
			}
			go pipe(u, c)
			go pipe(c, u)
		}
	}()
	t.Cleanup(func() {
		l.Close()
		conns.Range(func(k, v any) bool { k.(net.Conn).Close(); v.(net.Conn).Close(); return true })
		p.wg.Wait()
	})
	return p
}

func (p *recProxy) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.rec.Write(b)
}

func (p *recProxy) recorded() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Clone(p.rec.Bytes())
}

// TestTLSNoClearText runs a primary and a secondary with the replication
// link through a recording proxy, writes a marker through the primary and
// looks for it in what crossed the link: with TLS it never appears; without
// TLS it does (so the test can fail).
func TestTLSNoClearText(t *testing.T) {
	for _, withTLS := range []bool{false, true} {
		name := map[bool]string{false: "plain", true: "tls"}[withTLS]
		t.Run(name, func(t *testing.T) {
			var a, b *node
			if withTLS {
				ca := newTestCA(t, "alpha", "beta")
				a = newTLSNode(t, "alpha", 1<<20, ca.identity("alpha"))
				b = newTLSNode(t, "beta", 1<<20, ca.identity("beta"))
			} else {
				a, b = newNode(t, "alpha", 1<<20), newNode(t, "beta", 1<<20)
			}
			a.startPrimary(0)
			proxy := newRecProxy(t, a.addr)
			viaProxy := Peer{Name: "alpha", Addr: proxy.l.Addr().String()}
			b.startSecondary(func() []Peer { return []Peer{viaProxy} }, nil)
			var r [8]byte
			rand.Read(r[:])
			marker := []byte("tharsis-capture-marker-" + hex.EncodeToString(r[:]))
			if _, err := a.prim.WriteAt(marker, 8192); err != nil {
				t.Fatal(err)
			}
			waitCaughtUp(t, a.prim, b)
			got := make([]byte, len(marker))
			b.data.ReadAt(got, 8192)
			if !bytes.Equal(got, marker) {
				t.Fatalf("the secondary holds %q, not the marker", got)
			}
			// Status crosses the link too.
			if _, err := fetchNodeStatus(t.Context(), "beta", Auth{Secret: b.srv.Secret, TLS: b.tls}, viaProxy); err != nil {
				t.Fatal(err)
			}
			rec := proxy.recorded()
			found := bytes.Contains(rec, marker)
			t.Logf("%d bytes crossed the link; marker found: %v", len(rec), found)
			switch {
			case withTLS && found:
				t.Fatal("the marker crossed the TLS link in clear text")
			case withTLS && bytes.Contains(rec, []byte(`"node":"alpha"`)):
				t.Fatal("status crossed the TLS link in clear text")
			case !withTLS && !found:
				t.Fatal("the marker is not in the plain link's traffic: the capture sees nothing")
			}
		})
	}
}
