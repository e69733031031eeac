package replicate

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tharsis/tharsis/internal/testutil"
	"github.com/tharsis/tharsis/replicate/wire"
)

func TestWrongSecretRefused(t *testing.T) {
	a := newNode(t, "alpha", 1<<20)
	a.startPrimary(0)
	ctx := context.Background()
	// The right secret works.
	if _, err := fetchNodeStatus(ctx, "beta", Auth{Secret: testSecret}, a.peer()); err != nil {
		t.Fatalf("right secret: %v", err)
	}
	_, err := fetchNodeStatus(ctx, "beta", Auth{Secret: []byte("another cluster")}, a.peer())
	if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), "wrong cluster secret?") {
		t.Fatalf("client error = %v, want ErrAuth saying wrong cluster secret", err)
	}
	t.Logf("client: %v", err)
	testutil.WaitFor(t, 5*time.Second, "the server to log the refusal", func() bool {
		return strings.Contains(a.logBuf.String(), "failed authentication: wrong cluster secret?")
	})

	// A secondary with the wrong secret fetches nothing and says why.
	b := newNode(t, "beta", 1<<20)
	b.startSecondary(func() []Peer { return []Peer{a.peer()} }, func(o *SecondaryOptions) { o.Secret = []byte("wrong") })
	testutil.WaitFor(t, 5*time.Second, "the secondary to report the authentication failure", func() bool {
		return strings.Contains(b.sec.Status().Err, "wrong cluster secret?")
	})
}

func TestNotATharsisPeer(t *testing.T) {
	// A server that is not tharsis.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
			c.Close()
		}
	}()
	_, err = fetchNodeStatus(context.Background(), "beta", Auth{Secret: testSecret}, Peer{Name: "web", Addr: l.Addr().String()})
	if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), "not a tharsis replication peer") {
		t.Fatalf("err = %v", err)
	}
	// A client that is not tharsis.
	a := newNode(t, "alpha", 1<<20)
	c, err := net.Dial("tcp", a.addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 100)
	if n, _ := c.Read(buf); n != 0 {
		t.Errorf("server answered a non-tharsis client with %q", buf[:n])
	}
	c.Close()
	testutil.WaitFor(t, 5*time.Second, "the server to log the stranger", func() bool {
		return strings.Contains(a.logBuf.String(), "not a tharsis replication peer")
	})
}

// FuzzServerHandshake feeds arbitrary bytes to the server side of the
// handshake: it never panics and never authenticates a client that does
// not know the secret.
func FuzzServerHandshake(f *testing.F) {
	f.Add(wire.AppendFrame(nil, &wire.Hello{Node: "beta"}))
	f.Add(append(wire.AppendFrame(nil, &wire.Hello{Node: "beta"}), wire.AppendFrame(nil, &wire.Response{})...))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		c := wire.NewConn(struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(in), io.Discard})
		if peer, err := serverHandshake(c, "alpha", testSecret, "fuzz"); err == nil {
			t.Fatalf("authenticated %q without the secret", peer)
		}
	})
}
