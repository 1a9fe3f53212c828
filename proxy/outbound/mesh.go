package outbound

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"github.com/braidmesh/braid/proxy/forward"
	"github.com/braidmesh/braid/proxy/h2client"
	"github.com/braidmesh/braid/proxy/router"
	"github.com/braidmesh/braid/proxy/sockio"
	"github.com/braidmesh/braid/proxy/tlsid"
)

// Headers a client proxy sets for its peer (proxy/inbound reads them).
const (
	targetPortHeader     = "Braid-Target-Port"
	targetProtocolHeader = "Braid-Target-Protocol"
	clientIDHeader       = "Braid-Client-Id"
)

// MeshDialer dials meshed endpoints through their peer proxies, over mTLS, verifying that
// the peer presents the endpoint's identity; other endpoints in plaintext.
type MeshDialer struct {
	IDs *tlsid.Store
}

// DialEndpoint opens one opaque connection to ep: for a meshed endpoint, a TLS session
// with its peer proxy (ALPN braid.tcp/1) that starts with the two-byte target port.
func (d MeshDialer) DialEndpoint(ctx context.Context, ep router.Endpoint) (net.Conn, error) {
	if !ep.Meshed() {
		return PlainDialer{}.DialEndpoint(ctx, ep)
	}
	tc, err := dialPeer(ctx, d.IDs, ep.ProxyAddr().String(), ep.Identity, tlsid.ProtoTCP)
	if err != nil {
		return nil, err
	}
	var hdr [2]byte
	binary.BigEndian.PutUint16(hdr[:], ep.Addr.Port())
	if _, err := tc.Write(hdr[:]); err != nil {
		_ = tc.Close()
		return nil, fmt.Errorf("opening a mesh connection to %s: %w", ep.Identity, err)
	}
	return tc, nil
}

// dialPeer connects to the peer proxy at addr, which must present identity, and completes
// the mTLS handshake for proto. Its errors are connectErrors.
func dialPeer(ctx context.Context, ids *tlsid.Store, addr, identity, proto string) (*tls.Conn, error) {
	tc, err := handshakePeer(ctx, ids, addr, identity, proto)
	if err != nil {
		return nil, &connectError{err}
	}
	return tc, nil
}

// peerDialer dials peer proxies: keepalive after 30 s of silence, and TCP_USER_TIMEOUT
// userTimeout (sockio.PeerUserTimeout). HTTP/2 connections find a silent peer sooner,
// by PING; opaque and upgraded connections have only this.
func peerDialer(userTimeout time.Duration) *net.Dialer {
	return &net.Dialer{Timeout: connectTimeout, KeepAlive: 30 * time.Second, Control: sockio.UserTimeout(userTimeout)}
}

func handshakePeer(ctx context.Context, ids *tlsid.Store, addr, identity, proto string) (*tls.Conn, error) {
	if !ids.Ready() {
		return nil, fmt.Errorf("cannot reach %s at %s: %w", identity, addr, tlsid.ErrNoIdentity)
	}
	raw, err := peerDialer(sockio.PeerUserTimeout).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(sockio.Wrap(raw), ids.ClientConfig(identity, proto))
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		return nil, fmt.Errorf("mTLS with the proxy of %s at %s: %w", identity, addr, err)
	}
	if got := tc.ConnectionState().NegotiatedProtocol; got != proto {
		_ = tc.Close()
		return nil, fmt.Errorf("the proxy of %s at %s does not speak %s (it chose %q)", identity, addr, proto, got)
	}
	return tc, nil
}

// meshRoundTripper sends requests for meshed endpoints to their peer proxies over HTTP/2
// and mTLS (one multiplexed connection pool per peer identity), and the others straight
// to the endpoint. Unlike an http.RoundTripper's contract, it edits the request it is
// given (URL and peer headers): every attempt hands it a request of its own.
type meshRoundTripper struct {
	ids   *tlsid.Store
	plain http.RoundTripper
	// plainH2 carries to unmeshed endpoints the requests the application sent over
	// HTTP/2 with prior knowledge (gRPC): they stay HTTP/2.
	plainH2 http.RoundTripper
	log     logr.Logger
	mu      sync.Mutex
	peers   map[string]*h2client.Transport // by identity
	// upgrades holds, by identity, the HTTP/1.1 transports of protocol upgrades
	// (WebSocket), which HTTP/2 cannot carry.
	upgrades map[string]*http.Transport
}

// UseMesh makes the handler reach meshed endpoints through their peer proxies over mTLS,
// with the certificate and trust bundle ids holds.
func (h *Handler) UseMesh(ids *tlsid.Store) {
	h2c := newTransport()
	h2c.Protocols = new(http.Protocols)
	h2c.Protocols.SetUnencryptedHTTP2(true)
	h.upstream = &meshRoundTripper{
		ids: ids, plain: h.upstream, plainH2: h2c, log: h.log,
		peers: map[string]*h2client.Transport{}, upgrades: map[string]*http.Transport{},
	}
}

func (m *meshRoundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	continueTrace(req.Header) // the outgoing request's own headers: forward.Request.Outgoing copied them
	x, _ := req.Context().Value(exchangeKey{}).(*exchange)
	// The headers are this attempt's own (the outgoing request's, or the retry's clone:
	// see attempt), so they are edited in place; an earlier attempt at a meshed endpoint
	// may have left the peer headers in them.
	if x == nil || !x.endpoint.Meshed() {
		req.Header.Del(targetPortHeader)
		req.Header.Del(targetProtocolHeader)
		if req.ProtoMajor == 2 {
			return m.plainH2.RoundTrip(req)
		}
		return m.plain.RoundTrip(req)
	}
	// The request is this attempt's own too: its URL now names the peer proxy (attempt
	// names the endpoint again for the next).
	ep := x.endpoint
	req.URL.Scheme, req.URL.Host = "https", x.names.ProxyAddr
	req.Header.Set(targetPortHeader, x.names.Port)
	req.Header.Del(clientIDHeader) // only the server proxy says who the client is
	if req.ProtoMajor == 2 {
		req.Header.Set(targetProtocolHeader, "h2c")
	} else {
		req.Header.Del(targetProtocolHeader)
	}
	return m.transport(ep, isUpgrade(req)).RoundTrip(req)
}

// isUpgrade reports whether a request asks to switch protocols (WebSocket and the like).
func isUpgrade(r *http.Request) bool { return forward.UpgradeType(r.Header) != "" }

func (m *meshRoundTripper) transport(ep router.Endpoint, upgrade bool) http.RoundTripper {
	m.mu.Lock()
	defer m.mu.Unlock()
	if upgrade {
		return m.upgradeTransport(ep.Identity)
	}
	if t, ok := m.peers[ep.Identity]; ok {
		return t
	}
	identity := ep.Identity
	t := &h2client.Transport{
		DialTLS: func(ctx context.Context, addr string) (net.Conn, error) {
			// A dial is shared by the requests waiting for it and outlives the
			// cancellation of the first: bound it here.
			ctx, cancel := context.WithTimeout(ctx, peerDialTimeout)
			defer cancel()
			return dialPeer(ctx, m.ids, addr, identity, tlsid.ProtoHTTP2)
		},
		IdleConnTimeout: 90 * time.Second,
		Log:             m.log.WithName("h2client").WithValues("peer", identity),
	}
	m.peers[identity] = t
	return t
}

// peerDialTimeout bounds connecting to a peer proxy and the mTLS handshake with it.
const peerDialTimeout = 10 * time.Second

// upgradeTransport returns the HTTP/1.1-over-mTLS transport to the peers of identity;
// callers hold m.mu.
func (m *meshRoundTripper) upgradeTransport(identity string) *http.Transport {
	if t, ok := m.upgrades[identity]; ok {
		return t
	}
	t := &http.Transport{
		DialTLSContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return dialPeer(ctx, m.ids, addr, identity, tlsid.ProtoHTTP1)
		},
		Proxy:              nil,
		IdleConnTimeout:    90 * time.Second,
		DisableCompression: true,
	}
	m.upgrades[identity] = t
	return t
}
