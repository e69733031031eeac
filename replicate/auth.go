package replicate

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/tharsis/tharsis/replicate/wire"
)

// ErrAuth is wrapped by every error that says a peer failed the mutual
// authentication (wrong cluster secret, or not a tharsis peer at all).
var ErrAuth = errors.New("peer failed authentication")

// authError is an authentication failure with its operator-facing message.
type authError struct{ msg string }

func (e *authError) Error() string        { return e.msg }
func (e *authError) Is(target error) bool { return target == ErrAuth }

func authErr(format string, args ...any) error { return &authError{fmt.Sprintf(format, args...)} }

// authMAC is the proof of one side of the handshake: HMAC-SHA256 keyed with
// the cluster secret over the role, both nonces and both node names. The role
// separates the two proofs, so a server's proof can never be replayed as a
// client's (or the other way round); the fresh nonces prevent replays.
func authMAC(secret []byte, role string, cn, sn [wire.NonceSize]byte, client, server string) [wire.MACSize]byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte("tharsis replication v1\x00" + role + "\x00"))
	h.Write(cn[:])
	h.Write(sn[:])
	var l [2]byte
	for _, s := range []string{client, server} {
		binary.LittleEndian.PutUint16(l[:], uint16(len(s)))
		h.Write(l[:])
		h.Write([]byte(s))
	}
	var m [wire.MACSize]byte
	copy(m[:], h.Sum(nil))
	return m
}

// clientHandshake authenticates the connection c to the peer at addr: both
// sides prove they know secret before anything else flows. It returns the
// peer's node name.
func clientHandshake(c *wire.Conn, node string, secret []byte, addr string) (string, error) {
	hello := &wire.Hello{Node: node}
	rand.Read(hello.Nonce[:])
	if err := c.SendFlush(hello); err != nil {
		return "", err
	}
	m, err := c.Recv()
	if err != nil {
		if errors.Is(err, wire.ErrBadMagic) || errors.Is(err, wire.ErrMalformed) || errors.Is(err, wire.ErrTooLarge) {
			return "", authErr("%s is not a tharsis replication peer (%v); check the replication address in the config", addr, err)
		}
		return "", err
	}
	ch, ok := m.(*wire.Challenge)
	if !ok {
		if e, ok := m.(*wire.Error); ok && e.Code == wire.CodeAuth {
			return "", authErr("peer %s refused us: %s", addr, e.Message)
		}
		if e, ok := m.(*wire.Error); ok {
			return "", fmt.Errorf("peer %s refused the connection: %s", addr, e.Message)
		}
		return "", authErr("peer %s answered hello with %s", addr, m.Type())
	}
	if want := authMAC(secret, "server", hello.Nonce, ch.Nonce, node, ch.Node); !hmac.Equal(want[:], ch.MAC[:]) {
		c.SendFlush(&wire.Error{Code: wire.CodeAuth, Message: fmt.Sprintf("node %s: your proof of the cluster secret does not match: wrong cluster secret? (compare secret_file on both nodes)", node)})
		return "", authErr("peer %s (node %q) failed authentication: wrong cluster secret? (compare secret_file on both nodes)", addr, ch.Node)
	}
	if err := c.SendFlush(&wire.Response{MAC: authMAC(secret, "client", hello.Nonce, ch.Nonce, node, ch.Node)}); err != nil {
		return "", err
	}
	if m, err = c.Recv(); err != nil {
		return "", err
	}
	switch m := m.(type) {
	case *wire.Welcome:
		return ch.Node, nil
	case *wire.Error:
		return "", authErr("peer %s (node %q) refused us: %s", addr, ch.Node, m.Message)
	}
	return "", authErr("peer %s answered the proof with %s", addr, m.Type())
}

// serverHandshake authenticates an accepted connection from remote and
// returns the client's node name. A client with the wrong secret is told so
// (an Error message) before the connection is closed by the caller.
func serverHandshake(c *wire.Conn, node string, secret []byte, remote string) (string, error) {
	m, err := c.Recv()
	if err != nil {
		if errors.Is(err, wire.ErrBadMagic) || errors.Is(err, wire.ErrMalformed) || errors.Is(err, wire.ErrTooLarge) {
			return "", authErr("%s is not a tharsis replication peer (%v)", remote, err)
		}
		return "", err
	}
	hello, ok := m.(*wire.Hello)
	if e, isErr := m.(*wire.Error); isErr && e.Code == wire.CodeAuth {
		return "", authErr("peer %s refused us: %s", remote, e.Message)
	}
	if !ok {
		return "", authErr("peer %s opened with %s instead of hello", remote, m.Type())
	}
	ch := &wire.Challenge{Node: node}
	rand.Read(ch.Nonce[:])
	ch.MAC = authMAC(secret, "server", hello.Nonce, ch.Nonce, hello.Node, node)
	if err := c.SendFlush(ch); err != nil {
		return "", err
	}
	if m, err = c.Recv(); err != nil {
		return "", err
	}
	if e, ok := m.(*wire.Error); ok && e.Code == wire.CodeAuth {
		return "", authErr("peer %s (says it is node %q) failed authentication: wrong cluster secret? (it refused our proof: %s)", remote, hello.Node, e.Message)
	}
	resp, ok := m.(*wire.Response)
	want := authMAC(secret, "client", hello.Nonce, ch.Nonce, hello.Node, node)
	if !ok || !hmac.Equal(want[:], resp.MAC[:]) {
		c.SendFlush(&wire.Error{Code: wire.CodeAuth, Message: "authentication failed: wrong cluster secret? (compare secret_file on both nodes)"})
		return "", authErr("peer %s (says it is node %q) failed authentication: wrong cluster secret?", remote, hello.Node)
	}
	if err := c.SendFlush(&wire.Welcome{}); err != nil {
		return "", err
	}
	return hello.Node, nil
}
