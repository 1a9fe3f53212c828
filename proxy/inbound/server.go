// Package inbound is the proxy's inbound listener. Peer proxies reach it directly, over
// mTLS: HTTP requests multiplexed on HTTP/2, or on HTTP/1.1 for protocol upgrades (each
// naming its target port in a header), or one opaque TCP connection per TLS session
// (preceded by its two-byte target port). Clients without a proxy reach it through the
// pod's redirection rules, in plaintext, with their original destination port. Every
// request and connection is authorised against the workload's inbound policy before it
// reaches the application on 127.0.0.1.
package inbound

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"

	"github.com/braidmesh/braid/proxy/bufpool"
	"github.com/braidmesh/braid/proxy/forward"
	"github.com/braidmesh/braid/proxy/h1client"
	"github.com/braidmesh/braid/proxy/h2server"
	"github.com/braidmesh/braid/proxy/origdst"
	"github.com/braidmesh/braid/proxy/sockio"
	"github.com/braidmesh/braid/proxy/telemetry"
	"github.com/braidmesh/braid/proxy/tlsid"
)

// Headers between proxies and towards the application.
const (
	// TargetPortHeader carries, from the client proxy, the application port a request is for.
	TargetPortHeader = "Braid-Target-Port"
	// TargetProtocolHeader says "h2c" when the client application spoke HTTP/2, so that the
	// request reaches the application over HTTP/2 too (gRPC).
	TargetProtocolHeader = "Braid-Target-Protocol"
	// ClientIDHeader tells the application the verified SPIFFE ID of its client; any value
	// a client sets is replaced.
	ClientIDHeader = "Braid-Client-Id"
)

// Config configures a Server.
type Config struct {
	Log logr.Logger
	// IDs holds the proxy's certificate and trust bundle.
	IDs *tlsid.Store
	// Policy is the inbound policy in force; nil admits nothing.
	Policy *atomic.Pointer[Policy]
	// AppHost is where the application listens (127.0.0.1 when empty).
	AppHost string
	// HandshakeTimeout bounds a TLS handshake (10 s when zero).
	HandshakeTimeout time.Duration
	// Metrics records requests and connections; nil records nothing.
	Metrics *telemetry.Inbound
	// Edges records requests per peer for the SMI TrafficMetrics API; nil records nothing.
	Edges *telemetry.Edges
	// ProxyPorts are the proxy's own ports on the application's host (admin, outbound):
	// no client may target them, or a peer could send traffic out through this proxy
	// under this workload's identity. The inbound port itself is always refused.
	ProxyPorts []uint16
}

// Server serves the inbound listener.
type Server struct {
	cfg  Config
	lis  net.Listener
	port uint16
	// mesh serves the peer proxies' HTTP/2 sessions; http1 serves their HTTP/1.1 sessions
	// (protocol upgrades) and plaintext clients' connections, fed through conns.
	mesh  *h2server.Server
	http1 *http.Server
	conns chan net.Conn
	done  chan struct{} // closed by Shutdown
	// app and appH2 carry requests to the application over HTTP/1.1 and h2c, and
	// buffers lends the buffers its answers are copied through.
	app     *h1client.Transport
	appH2   *http.Transport
	buffers *bufpool.Pool
	// appAddrs holds the application's address per port as text (uint16 → string),
	// made once rather than per request.
	appAddrs sync.Map

	mu      sync.Mutex
	tcp     map[net.Conn]struct{}
	closing bool
	wg      sync.WaitGroup
}

// New returns a Server for lis.
func New(lis net.Listener, cfg Config) *Server {
	if cfg.AppHost == "" {
		cfg.AppHost = "127.0.0.1"
	}
	if cfg.HandshakeTimeout == 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	s := &Server{cfg: cfg, lis: lis, conns: make(chan net.Conn), done: make(chan struct{}), tcp: map[net.Conn]struct{}{}}
	if ap, err := netip.ParseAddrPort(lis.Addr().String()); err == nil {
		s.port = ap.Port()
	}
	dial := sockio.DialContext(&net.Dialer{Timeout: 3 * time.Second})
	app := &http.Transport{
		DialContext:         h1client.FallbackDialer(dial),
		MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second,
		DisableCompression: true, // the client's Accept-Encoding reaches the application as it is
	}
	appH2 := &http.Transport{DialContext: dial, IdleConnTimeout: 90 * time.Second, DisableCompression: true}
	appH2.Protocols = new(http.Protocols)
	appH2.Protocols.SetUnencryptedHTTP2(true)
	// Requests without a body, most of them, go the lean way: written and answered in the
	// handler's goroutine.
	lean := &h1client.Transport{DialContext: dial, Fallback: app, MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second}
	s.app, s.appH2, s.buffers = lean, appH2, &bufpool.Pool{}
	s.mesh = &h2server.Server{
		Handler:           http.HandlerFunc(s.serveMeshHTTP),
		ConnContext:       connContext,
		MaxHeaderListSize: 64 << 10,
		IdleTimeout:       5 * time.Minute,
		Log:               cfg.Log,
	}
	s.http1 = &http.Server{
		Handler:           http.HandlerFunc(s.serveMeshHTTP),
		ConnContext:       connContext,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		TLSConfig:         &tls.Config{NextProtos: []string{tlsid.ProtoHTTP2, tlsid.ProtoHTTP1}, MinVersion: tls.VersionTLS13},
	}
	return s
}

// Serve accepts connections until Shutdown.
func (s *Server) Serve() error {
	served := make(chan error, 1)
	go func() { served <- s.http1.Serve(chanListener{s}) }()
	for {
		c, err := s.lis.Accept()
		if err != nil {
			if s.isClosing() {
				return nil
			}
			return fmt.Errorf("accepting inbound connections: %w", err)
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.dispatch(c)
		}()
	}
}

// Shutdown stops accepting, lets HTTP requests in flight finish, and closes opaque TCP
// connections once ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.closing {
		close(s.done)
	}
	s.closing = true
	s.mu.Unlock()
	err := s.lis.Close()
	var meshErr error
	var draining sync.WaitGroup
	draining.Go(func() { meshErr = s.mesh.Shutdown(ctx) })
	herr := s.http1.Shutdown(ctx)
	draining.Wait()
	s.app.CloseIdleConnections()
	s.appH2.CloseIdleConnections()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.tcp {
			_ = c.Close()
		}
		s.mu.Unlock()
		<-done
	}
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return errors.Join(err, herr, meshErr)
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// dispatch tells a peer proxy's connection (to the listener's own port) from a plaintext
// client's redirected one (to an application port).
func (s *Server) dispatch(c net.Conn) {
	port := s.port
	if tc, ok := c.(*net.TCPConn); ok {
		if dst, err := origdst.Get(tc); err == nil {
			port = dst.Port()
		}
	}
	if port == s.port {
		s.serveMesh(c)
		return
	}
	s.servePlaintext(c, port)
}

func (s *Server) serveMesh(c net.Conn) {
	tc := tls.Server(sockio.Wrap(c), s.cfg.IDs.ServerConfig())
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.HandshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		s.cfg.Log.V(1).Info("Inbound TLS handshake failed", "peer", c.RemoteAddr().String(), "error", err.Error())
		_ = c.Close()
		return
	}
	switch tc.ConnectionState().NegotiatedProtocol {
	case tlsid.ProtoHTTP2:
		if err := s.mesh.ServeConn(tc); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.cfg.Log.V(1).Info("Inbound HTTP/2 session ended with an error", "peer", c.RemoteAddr().String(), "error", err.Error())
		}
	case tlsid.ProtoHTTP1:
		select {
		case s.conns <- tc:
		case <-s.done:
			_ = tc.Close()
		}
	case tlsid.ProtoTCP:
		s.serveMeshTCP(tc)
	default:
		_ = tc.Close()
	}
}

// serveMeshTCP carries one opaque connection from a peer proxy: a two-byte target port,
// then the bytes.
func (s *Server) serveMeshTCP(tc *tls.Conn) {
	var hdr [2]byte
	_ = tc.SetReadDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	if _, err := io.ReadFull(tc, hdr[:]); err != nil {
		_ = tc.Close()
		return
	}
	_ = tc.SetReadDeadline(time.Time{})
	port := binary.BigEndian.Uint16(hdr[:])
	peer := tlsid.PeerID(tc.ConnectionState())
	if d := s.authorizeTCP(peer, port); !d.Allowed {
		s.cfg.Log.V(1).Info("Inbound connection refused", "peer", peer, "port", port, "reason", d.Reason)
		s.cfg.Metrics.Connection(peer, uint32(port), telemetry.Denied)
		_ = tc.Close()
		return
	}
	s.cfg.Metrics.Connection(peer, uint32(port), telemetry.Success)
	s.splice(tc, port)
}

// plaintextDetectWait bounds how long a plaintext connection is watched for an HTTP/1
// request line before it is carried as opaque bytes: a server that speaks first waits
// that long for its client's connection, once.
const plaintextDetectWait = 200 * time.Millisecond

// servePlaintext serves a client without a proxy. HTTP/1 requests go through the HTTP
// server, which authorises each (403 when refused) and strips any client identity header
// the client set itself; other bytes are carried whole when the policy admits everyone,
// and the connection is closed otherwise.
func (s *Server) servePlaintext(c net.Conn, port uint16) {
	br := bufio.NewReader(c)
	_ = c.SetReadDeadline(time.Now().Add(plaintextDetectWait))
	first, _ := br.Peek(4)
	_ = c.SetReadDeadline(time.Time{})
	pc := &plaintextConn{Conn: c, r: br, port: port}
	if looksLikeHTTP1(first) {
		select {
		case s.conns <- pc:
		case <-s.done:
			_ = c.Close()
		}
		return
	}
	d := s.authorizeTCP("", port)
	if d.Allowed {
		s.cfg.Metrics.Connection("", uint32(port), telemetry.Success)
		s.splice(pc, port)
		return
	}
	s.cfg.Metrics.Connection("", uint32(port), telemetry.Denied)
	s.cfg.Log.V(1).Info("Plaintext inbound connection refused", "client", c.RemoteAddr().String(), "port", port, "reason", d.Reason)
	_ = c.Close()
}

// plaintextConn is a redirected plaintext connection, with the bytes peeked at, and the
// application port its client asked for.
type plaintextConn struct {
	net.Conn
	r    *bufio.Reader
	port uint16
}

func (c *plaintextConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// CloseWrite half-closes the connection, as splice expects.
func (c *plaintextConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

type (
	plaintextKey struct{}
	peerKey      struct{}
)

// connContext notes, for the HTTP server, the port a plaintext connection was for, and
// the verified identity of a peer proxy's connection: its handshake is over, and reading
// the identity once per connection spares each request a copy of the TLS state and the
// formatting of the ID.
func connContext(ctx context.Context, c net.Conn) context.Context {
	switch c := c.(type) {
	case *plaintextConn:
		return context.WithValue(ctx, plaintextKey{}, c.port)
	case *tls.Conn:
		return context.WithValue(ctx, peerKey{}, tlsid.PeerID(c.ConnectionState()))
	}
	return ctx
}

func looksLikeHTTP1(b []byte) bool {
	for _, m := range []string{"GET ", "POST", "PUT ", "HEAD", "DELE", "PATC", "OPTI", "CONN", "TRAC"} {
		if string(b[:4]) == m {
			return true
		}
	}
	return false
}

// splice connects c to the application's port and copies both ways until both sides close.
func (s *Server) splice(c net.Conn, port uint16) {
	app, err := net.DialTimeout("tcp", s.appAddr(port), 3*time.Second)
	if err != nil {
		s.cfg.Log.V(1).Info("Application refused the connection", "port", port, "error", err.Error())
		_ = c.Close()
		return
	}
	if !s.track(c, true) {
		_ = c.Close()
		_ = app.Close()
		return
	}
	defer s.track(c, false)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); copyThenCloseWrite(app, c) }()
	go func() { defer wg.Done(); copyThenCloseWrite(c, app) }()
	wg.Wait()
	_ = c.Close()
	_ = app.Close()
}

func (s *Server) track(c net.Conn, open bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if open {
		if s.closing {
			return false
		}
		s.tcp[c] = struct{}{}
	} else {
		delete(s.tcp, c)
	}
	return true
}

func copyThenCloseWrite(dst, src net.Conn) {
	_, err := io.Copy(dst, src)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok && err == nil {
		_ = cw.CloseWrite()
		return
	}
	// An error on one side ends the exchange: close both so the other copy ends too.
	_ = dst.Close()
	_ = src.Close()
}

// serveMeshHTTP authorises one request from a peer proxy and forwards it to the app.
func (s *Server) serveMeshHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	peer, port, ok := requestTarget(r)
	if !ok {
		forbid(w, http.StatusBadRequest, "the request names no valid "+TargetPortHeader)
		return
	}
	d := s.reserved(uint16(port))
	if d.Allowed {
		d = s.cfg.Policy.Load().AuthorizeHTTP(peer, uint32(port), r)
	}
	if !d.Allowed {
		s.cfg.Log.V(1).Info("Inbound request refused", "peer", peer, "port", port, "method", r.Method, "path", r.URL.Path, "reason", d.Reason)
		forbid(w, http.StatusForbidden, d.Reason)
		s.cfg.Metrics.Request(peer, uint32(port), http.StatusForbidden, telemetry.Denied, time.Since(start))
		return
	}
	status := 0
	defer func() {
		result := telemetry.Success
		if status == 0 || status >= 500 {
			result = telemetry.Failure
		}
		elapsed := time.Since(start)
		s.cfg.Metrics.Request(peer, uint32(port), status, result, elapsed)
		s.cfg.Edges.Inbound(r.RemoteAddr, peer, status, elapsed)
	}()
	x := &forwarded{target: s.appAddr(uint16(port)), peer: peer, port: uint16(port), transport: s.app}
	x.fwd.Once = true // the request goes to the application once, and its header is not read after
	if r.Header.Get(TargetProtocolHeader) == "h2c" {
		x.transport = s.appH2
	}
	defer func() { status = x.status }()
	out, err := x.fwd.Outgoing(r.Context(), w, r)
	if err != nil {
		x.status = http.StatusBadRequest
		forbid(w, http.StatusBadRequest, err.Error())
		return
	}
	x.rewrite(out)
	x.fwd.Forward(w, r, out, x, s.buffers)
}

// appAddr is the application's address on port, host:port.
func (s *Server) appAddr(port uint16) string {
	if a, ok := s.appAddrs.Load(port); ok {
		return a.(string) //nolint:forcetypeassert // only strings are stored
	}
	a := net.JoinHostPort(s.cfg.AppHost, strconv.Itoa(int(port)))
	s.appAddrs.Store(port, a)
	return a
}

// requestTarget returns who sent a request and the application port it is for: from a
// peer proxy, its verified identity and the port its header names; from a plaintext
// client, no identity and the port its connection was for (a header it set is ignored).
func requestTarget(r *http.Request) (peer string, port uint64, ok bool) {
	if p, plain := r.Context().Value(plaintextKey{}).(uint16); plain {
		r.Header.Del(TargetPortHeader)
		return "", uint64(p), true
	}
	if r.TLS != nil {
		var known bool
		if peer, known = r.Context().Value(peerKey{}).(string); !known {
			peer = tlsid.PeerID(*r.TLS)
		}
	}
	port, err := strconv.ParseUint(r.Header.Get(TargetPortHeader), 10, 16)
	return peer, port, err == nil && port != 0 && r.TLS != nil
}

// forwarded is one request forwarded to the application: its forward.Exchange.
type forwarded struct {
	fwd       forward.Request
	transport http.RoundTripper
	target    string // host:port of the application
	peer      string // the client's verified identity
	port      uint16
	status    int
}

// rewrite addresses the outgoing request to the application, and replaces the peer
// headers with the client's verified identity.
func (x *forwarded) rewrite(out *http.Request) {
	out.URL.Scheme, out.URL.Host = "http", x.target
	out.Header.Del(TargetPortHeader)
	out.Header.Del(TargetProtocolHeader)
	if x.peer == "" {
		out.Header.Del(ClientIDHeader) // a plaintext client's own claim is no identity
	} else {
		out.Header.Set(ClientIDHeader, x.peer)
	}
}

func (x *forwarded) RoundTrip(out *http.Request) (*http.Response, error) {
	return x.transport.RoundTrip(out)
}

func (x *forwarded) ModifyResponse(res *http.Response) error {
	x.status = res.StatusCode
	return nil
}

// Failed answers a request the application did not answer with a 502, unless the client
// went away.
func (x *forwarded) Failed(w http.ResponseWriter, _ *http.Request, err error) {
	if errors.Is(err, context.Canceled) {
		return
	}
	x.status = http.StatusBadGateway
	forbid(w, http.StatusBadGateway, fmt.Sprintf("the application on port %d failed: %v", x.port, err))
}

// authorizeTCP decides on an opaque connection to port.
func (s *Server) authorizeTCP(peer string, port uint16) Decision {
	if d := s.reserved(port); !d.Allowed {
		return d
	}
	return s.cfg.Policy.Load().AuthorizeTCP(peer, uint32(port))
}

// reserved refuses the proxy's own ports as targets.
func (s *Server) reserved(port uint16) Decision {
	if port == s.port || slices.Contains(s.cfg.ProxyPorts, port) {
		return Decision{Reason: fmt.Sprintf("port %d is the proxy's own: clients reach the application's ports only", port)}
	}
	return Decision{Allowed: true}
}

func forbid(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Braid-Proxy-Error", http.StatusText(code))
	w.WriteHeader(code)
	_, _ = fmt.Fprintf(w, "braid-proxy: %s\n", msg)
}

// chanListener hands net/http the connections it serves: peers' HTTP/1.1 sessions
// (protocol upgrades) and plaintext clients' HTTP connections.
type chanListener struct{ s *Server }

func (l chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.s.conns:
		return c, nil
	case <-l.s.done:
		return nil, net.ErrClosed
	}
}

func (l chanListener) Close() error   { return nil }
func (l chanListener) Addr() net.Addr { return l.s.lis.Addr() }
