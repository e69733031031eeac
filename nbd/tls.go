package nbd

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
)

// TLSMode says whether an export is served over TLS (NBD_OPT_STARTTLS).
type TLSMode uint8

// The TLS modes of an export.
const (
	// TLSOff: the export does not ask for TLS. A client may still upgrade
	// when another export of the same Server offers TLS.
	TLSOff TLSMode = iota
	// TLSOn: plain and TLS clients are both served.
	TLSOn
	// TLSRequire: only clients that upgraded to TLS are served; a plain
	// client's NBD_OPT_GO or NBD_OPT_INFO is answered NBD_REP_ERR_TLS_REQD.
	TLSRequire
)

// String returns the mode as written in the config: off, on or require.
func (m TLSMode) String() string {
	switch m {
	case TLSOff:
		return "off"
	case TLSOn:
		return "on"
	case TLSRequire:
		return "require"
	}
	return fmt.Sprintf("TLSMode(%d)", uint8(m))
}

// tlsOnly reports whether e is served over TLS only.
func (e Export) tlsOnly() bool { return e.TLS == TLSRequire || e.VerifyClient }

// connTLS is the TLS mode of one connection, fixed when it is accepted (the
// spec asks for one mode over a connection's life), after proto.md's "TLS
// support": notls, forced (every export needs TLS: every option but
// STARTTLS and ABORT is refused until the client upgrades) or selective
// (some exports offer TLS; the TLS-only ones are refused, and left out of
// NBD_OPT_LIST, until the client upgrades).
type connTLS uint8

const (
	noTLS connTLS = iota
	forcedTLS
	selectiveTLS
)

// tlsModeOf returns the connection mode for a server with cfg (nil: no TLS)
// and exports.
func tlsModeOf(cfg *tls.Config, exports []Export) connTLS {
	if cfg == nil || len(exports) == 0 {
		return noTLS
	}
	offered, all := false, true
	for _, e := range exports {
		offered = offered || e.TLS != TLSOff || e.VerifyClient
		all = all && e.tlsOnly()
	}
	switch {
	case all:
		return forcedTLS
	case offered:
		return selectiveTLS
	}
	return noTLS
}

// refusal is why an option is refused: an option reply type and its
// message; typ 0 means none.
type refusal struct {
	typ uint32
	msg string
}

// tlsRefusal says whether TLS stands in the way of option opt before it is
// looked at further; it is pure (the connection's state only).
func (c *conn) tlsRefusal(opt uint32) refusal {
	if c.tlsMode != forcedTLS || c.tc != nil || opt == optStartTLS || opt == optAbort {
		return refusal{}
	}
	return refusal{repErrTLSReqd, "this server needs TLS: send NBD_OPT_STARTTLS first (nbds:// URI with libnbd, tls-creds with qemu, -certfile/-cacertfile with nbd-client)"}
}

// exportRefusal says whether export e may not be chosen (GO, INFO,
// EXPORT_NAME, META_CONTEXT) on this connection now.
func (c *conn) exportRefusal(e Export) refusal {
	switch {
	case e.tlsOnly() && c.tc == nil:
		return refusal{repErrTLSReqd, fmt.Sprintf("export %q needs TLS: send NBD_OPT_STARTTLS first (nbds:// URI with libnbd, tls-creds with qemu, -certfile/-cacertfile with nbd-client)", e.Name)}
	case e.VerifyClient && !c.clientVerified:
		return refusal{repErrPolicy, fmt.Sprintf("export %q needs a client certificate signed by the cluster CA (make one with `tharsis cert create-client`)", e.Name)}
	}
	return refusal{}
}

// listed reports whether NBD_OPT_LIST shows e on this connection now:
// TLS-only exports are shown only over TLS.
func (c *conn) listed(e Export) bool { return !e.tlsOnly() || c.tc != nil }

// startTLS answers NBD_OPT_STARTTLS and, after its ACK, runs the TLS
// handshake on the connection; the option haggling goes on over TLS.
// State negotiated in plain text (structured replies, metadata contexts)
// is dropped, so nothing a man in the middle injected survives.
func (c *conn) startTLS(data []byte) error {
	switch {
	case c.tlsMode == noTLS:
		return c.optReply(optStartTLS, repErrUnsup, "TLS is not offered on this address (the exports here have tls = \"off\")")
	case c.tc != nil:
		return c.optReply(optStartTLS, repErrInvalid, "TLS is already on")
	case len(data) != 0:
		return c.optReply(optStartTLS, repErrInvalid, "NBD_OPT_STARTTLS takes no data")
	}
	if err := c.optReply(optStartTLS, repAck, ""); err != nil {
		return err
	}
	if c.br.Buffered() > 0 {
		// The client sent more before it read the ACK: out of protocol, and
		// those bytes were not protected by TLS.
		return fmt.Errorf("client sent %d bytes after NBD_OPT_STARTTLS before the TLS handshake", c.br.Buffered())
	}
	tt := newTLSTransport(c.nc)
	tc := tls.Server(tt, c.tlsConfig)
	if err := tc.HandshakeContext(c.ctx); err != nil {
		return fmt.Errorf("TLS handshake: %w (a client that does not trust this node's certificate, or whose certificate is not signed by the cluster CA, fails here; the client's own message says which)", err)
	}
	st := tc.ConnectionState()
	c.tc, c.tt, c.w = tc, tt, tc
	c.br = bufio.NewReaderSize(tc, 64<<10)
	c.clientVerified = len(st.VerifiedChains) > 0
	c.structured, c.metaSet, c.metaExport = false, false, ""
	c.log.Debug("nbd: TLS on", "version", tls.VersionName(st.Version), "cipher", tls.CipherSuiteName(st.CipherSuite), "client_cert", c.clientVerified)
	return nil
}

// ServerTLSConfig returns the TLS configuration of a Server whose
// certificate is cert: TLS 1.2 or later (the spec's minimum; Go and GnuTLS
// clients negotiate 1.3), and, when ca is not nil, client certificates
// verified against ca if the client presents one (Export.VerifyClient then
// decides whether an export needs one). A client certificate that does not
// verify fails the TLS handshake.
func ServerTLSConfig(cert tls.Certificate, ca *x509.CertPool) *tls.Config {
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		// Full-size records from the first byte: block I/O is bulk, and
		// small records after every idle second cost a system call each.
		DynamicRecordSizingDisabled: true,
	}
	if ca != nil {
		cfg.ClientCAs = ca
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return cfg
}
