package outbound

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"

	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/proxy/origdst"
	"github.com/braidmesh/braid/proxy/router"
	"github.com/braidmesh/braid/proxy/sockio"
	"github.com/braidmesh/braid/proxy/telemetry"
)

// ListenerConfig configures a Listener.
type ListenerConfig struct {
	Log     logr.Logger
	Table   *atomic.Pointer[router.Table]
	Metrics *telemetry.Metrics // nil: nothing is recorded
	// Dialer opens upstream connections of opaque traffic (PlainDialer when nil).
	Dialer Dialer
	// DetectTimeout bounds protocol detection (DefaultDetectTimeout when zero).
	DetectTimeout time.Duration
	// ConnectTimeout bounds an upstream connection attempt (3 s when zero).
	ConnectTimeout time.Duration
	// OriginalDst reads where an accepted connection was going (origdst.Get when nil).
	OriginalDst func(*net.TCPConn) (netip.AddrPort, error)
}

// Listener is the outbound listener. Applications reach it explicitly, with HTTP
// requests whose Host names a Service, or transparently, redirected by braid-init
// on their way to somewhere else. Its Accept returns the connections that carry HTTP,
// for an http.Server with the outbound Handler and ConnContext; it forwards the others
// as opaque TCP itself:
//
//   - a connection whose original destination is the listener itself (or unknown) is
//     explicit: HTTP;
//   - one to a Service port (a cluster IP and port) goes by the port's protocol: HTTP1
//     and HTTP2 are HTTP, every request routed to that port whatever its Host; OPAQUE is
//     forwarded to an endpoint of a backend picked by weight; DETECT is HTTP if its
//     first bytes are, and opaque otherwise (nothing within the detection wait included);
//   - one to any other destination is passed through, unchanged, to that destination.
type Listener struct {
	lis  net.Listener
	cfg  ListenerConfig
	http chan accepted
	done chan struct{}
	stop sync.Once
	// ctx ends when the remaining opaque connections are closed at the end of a drain.
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	opaque map[*net.TCPConn]struct{} // forwarded connections open now; guarded by mu
	// upstreams holds the local addresses of the proxy's own upstream connections, to
	// recognise one that comes back to the proxy (a redirect loop).
	upstreams sync.Map // netip.AddrPort → struct{}
	rngs      sync.Pool
	backoff   backoff // spaces the connection attempts of a route with a retry backoff
}

type accepted struct {
	conn net.Conn
	err  error
}

// NewListener serves lis: it starts accepting at once.
func NewListener(lis net.Listener, cfg ListenerConfig) *Listener {
	return newListener(lis, cfg, systemBackoff())
}

func newListener(lis net.Listener, cfg ListenerConfig, b backoff) *Listener {
	if cfg.Dialer == nil {
		cfg.Dialer = PlainDialer{}
	}
	cfg.DetectTimeout = cmp.Or(cfg.DetectTimeout, DefaultDetectTimeout)
	cfg.ConnectTimeout = cmp.Or(cfg.ConnectTimeout, connectTimeout)
	if cfg.OriginalDst == nil {
		cfg.OriginalDst = origdst.Get
	}
	l := &Listener{lis: lis, cfg: cfg, http: make(chan accepted), done: make(chan struct{}), opaque: map[*net.TCPConn]struct{}{}, backoff: b}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	l.rngs.New = func() any { return rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())) }
	go l.run()
	return l
}

// Accept returns the next connection that carries HTTP.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case a := <-l.http:
		return a.conn, a.err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops accepting. Opaque connections go on: Shutdown ends them.
func (l *Listener) Close() error {
	err := net.ErrClosed
	l.stop.Do(func() {
		close(l.done)
		err = l.lis.Close()
	})
	return err
}

// Addr is the listener's address.
func (l *Listener) Addr() net.Addr { return l.lis.Addr() }

// Shutdown stops accepting and waits for the opaque connections to end; when ctx ends
// first, it closes those left and says how many there were.
func (l *Listener) Shutdown(ctx context.Context) error {
	_ = l.Close()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		l.mu.Lock()
		open := len(l.opaque)
		l.mu.Unlock()
		if open == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			l.cancel()
			l.mu.Lock()
			for c := range l.opaque {
				_ = c.Close()
			}
			l.mu.Unlock()
			return fmt.Errorf("closed %d TCP connections still open: %w", open, ctx.Err())
		case <-tick.C:
		}
	}
}

func (l *Listener) run() {
	for {
		c, err := l.lis.Accept()
		if err != nil {
			select {
			case l.http <- accepted{err: err}: // the http.Server decides whether to go on
			case <-l.done:
				return
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(5 * time.Millisecond) // out of file descriptors, say: no busy loop
			continue
		}
		go l.dispatch(c)
	}
}

// deliver hands a connection to the HTTP server.
func (l *Listener) deliver(c net.Conn) {
	select {
	case l.http <- accepted{conn: c}:
	case <-l.done:
		_ = c.Close()
	}
}

func (l *Listener) dispatch(c net.Conn) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		l.deliver(c)
		return
	}
	dst, err := l.cfg.OriginalDst(tc)
	if err != nil || dst == addrPort(tc.LocalAddr()) {
		l.deliver(sockio.Wrap(tc)) // explicit
		return
	}
	log := l.cfg.Log.WithValues("client", tc.RemoteAddr().String(), "destination", dst.String())
	if _, loop := l.upstreams.Load(addrPort(tc.RemoteAddr())); loop {
		log.Info("Refused a connection from the proxy to itself: its own upstream connections are redirected back to it (is braid-init's --proxy-uid the proxy's user?)")
		refuse(tc)
		return
	}
	table := l.cfg.Table.Load()
	if table == nil {
		log.V(1).Info("Refused a transparent connection: the proxy has no configuration yet")
		refuse(tc)
		return
	}
	port, ok := table.ResolveAddr(dst)
	if !ok {
		log.V(1).Info("Passing a connection through: its destination is no Service port of the mesh")
		l.forward(tc, nil, nil, log, func() (net.Conn, func(), error) {
			up, err := l.dial(router.Endpoint{Addr: dst})
			return up, func() {}, err
		})
		return
	}
	log = log.WithValues("service", port.Service, "port", port.Number)
	switch port.Protocol {
	case api.Protocol_PROTOCOL_HTTP1, api.Protocol_PROTOCOL_HTTP2:
		l.deliver(&transparentConn{Conn: sockio.Wrap(tc), tcp: tc, dst: dst})
	case api.Protocol_PROTOCOL_OPAQUE:
		l.forwardToService(tc, nil, port, log)
	default:
		l.detectAndServe(tc, dst, port, log)
	}
}

func (l *Listener) detectAndServe(tc *net.TCPConn, dst netip.AddrPort, port *router.Port, log logr.Logger) {
	verdict, peeked, err := detect(tc, l.cfg.DetectTimeout)
	if err != nil {
		log.V(1).Info("Closed a connection during protocol detection", "error", err.Error())
		_ = tc.Close()
		return
	}
	log.V(1).Info("Detected the protocol of a connection", "protocol", verdict.String(), "peeked", len(peeked))
	if verdict == isHTTP {
		l.deliver(&transparentConn{Conn: sockio.Wrap(tc), tcp: tc, dst: dst, peeked: peeked})
		return
	}
	l.forwardToService(tc, peeked, port, log)
}

// forwardToService forwards an opaque connection to an endpoint of the port's opaque
// route: a backend picked by weight, an endpoint of it by latency and connections open.
func (l *Listener) forwardToService(tc *net.TCPConn, peeked []byte, port *router.Port, log logr.Logger) {
	if port.Denied != "" {
		log.V(1).Info("Refused an opaque connection: the workload may not reach the Service", "reason", port.Denied)
		l.cfg.Metrics.DeniedTCP(port)
		refuse(tc)
		return
	}
	route, backend, why := opaqueBackend(port)
	if why != "" {
		log.V(1).Info("Refused an opaque connection", "reason", why)
		rec := l.cfg.Metrics.OpenTCP(port)
		rec.Closed()
		refuse(tc)
		return
	}
	l.forward(tc, peeked, port, log, func() (net.Conn, func(), error) {
		return l.dialService(port, route, backend)
	})
}

// opaqueBackend chooses the backend of an opaque connection, or says why there is none.
func opaqueBackend(port *router.Port) (*router.Route, *router.Backend, string) {
	route := port.OpaqueRoute()
	if route == nil {
		return nil, nil, "every route of the port has HTTP matches, which a TCP connection cannot meet"
	}
	backend := route.Pick()
	switch {
	case backend == nil:
		return nil, nil, "no backend has a weight above 0"
	case backend.Unavailable != "":
		return nil, nil, backend.Unavailable
	case len(backend.Endpoints()) == 0:
		return nil, nil, fmt.Sprintf("backend %s has no ready endpoints", backend.Service)
	}
	return route, backend, ""
}

// dialService connects to an endpoint of backend, and to another when that fails, as
// the route's retry policy and budget allow. It returns the connection and what ends
// its call on the endpoint.
func (l *Listener) dialService(port *router.Port, route *router.Route, backend *router.Backend) (net.Conn, func(), error) {
	rng := l.rngs.Get().(*rand.Rand)
	defer l.rngs.Put(rng)
	dest := l.cfg.Metrics.Destination(port)
	call, err := backend.Pick(rng, nil)
	if err != nil {
		return nil, nil, err
	}
	var tried []*router.EndpointState
	for n := 0; ; n++ {
		up, err := l.dial(call.Endpoint())
		if call.Responded(err != nil) {
			dest.Ejected()
		}
		if err == nil {
			return up, call.End, nil
		}
		call.End()
		l.cfg.Log.V(1).Info("Upstream connection failed", "endpoint", call.Endpoint().Addr.String(), "error", err.Error())
		if n >= route.Retries {
			return nil, nil, err
		}
		tried = append(tried, call.State)
		next, ok := l.retryCall(rng, dest, route, backend, tried, n+1)
		if !ok {
			return nil, nil, err
		}
		call = next
	}
}

// retryCall picks the endpoint of the n-th connection attempt after the endpoints
// tried failed, takes it from the route's retry budget and waits the route's backoff;
// it reports false when there is no endpoint or no budget left, or the listener closed.
func (l *Listener) retryCall(rng *rand.Rand, dest *telemetry.Destination, route *router.Route, backend *router.Backend,
	tried []*router.EndpointState, n int) (router.Call, bool) {
	next, err := backend.Pick(rng, tried)
	if err != nil {
		return router.Call{}, false
	}
	pause, _ := l.backoff.draw(l.ctx, route, n) // l.ctx has no deadline
	if !route.Budget.Withdraw() {
		next.End()
		dest.RetrySkipped()
		return router.Call{}, false
	}
	dest.Retried()
	if err := l.backoff.pause(l.ctx, pause); err != nil {
		next.End()
		return router.Call{}, false
	}
	return next, true
}

// dial connects to ep within the connect timeout.
func (l *Listener) dial(ep router.Endpoint) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(l.ctx, l.cfg.ConnectTimeout)
	defer cancel()
	return l.cfg.Dialer.DialEndpoint(ctx, ep)
}

// forward connects upstream with dial and copies the connection there and back, peeked
// bytes first; done, which dial returns, runs when the connection ends. port is the
// Service port (nil: passthrough), for metrics.
func (l *Listener) forward(tc *net.TCPConn, peeked []byte, port *router.Port, log logr.Logger, dial func() (net.Conn, func(), error)) {
	rec := l.cfg.Metrics.OpenTCP(port)
	defer rec.Closed()
	if !l.track(tc, true) {
		refuse(tc)
		return
	}
	defer l.track(tc, false)
	up, done, err := dial()
	if err != nil {
		log.V(1).Info("Upstream connection failed", "error", err.Error())
		refuse(tc)
		return
	}
	defer done()
	local := addrPort(up.LocalAddr())
	l.upstreams.Store(local, struct{}{})
	defer l.upstreams.Delete(local)
	if len(peeked) > 0 {
		if _, err := up.Write(peeked); err != nil {
			abort(tc, up)
			return
		}
		rec.Sent(len(peeked))
	}
	pipe(tc, up, rec)
}

// track notes that an opaque connection is open (or no longer is); once the remaining
// ones have been closed by Shutdown, it refuses new ones.
func (l *Listener) track(c *net.TCPConn, open bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !open {
		delete(l.opaque, c)
		return true
	}
	if l.ctx.Err() != nil {
		return false
	}
	l.opaque[c] = struct{}{}
	return true
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// transparentConn is a connection redirected to the proxy on its way to a Service port,
// which carries HTTP. Its reads return the bytes protocol detection took first.
type transparentConn struct {
	net.Conn // not *net.TCPConn: its WriteTo would skip the peeked bytes
	tcp      *net.TCPConn
	dst      netip.AddrPort
	peeked   []byte
}

func (c *transparentConn) Read(b []byte) (int, error) {
	if len(c.peeked) > 0 {
		n := copy(b, c.peeked)
		c.peeked = c.peeked[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// CloseWrite closes the sending half of the connection.
func (c *transparentConn) CloseWrite() error { return c.tcp.CloseWrite() }

type destinationKey struct{}

// ConnContext is the http.Server ConnContext that goes with a Listener: the requests of
// a transparent connection carry the Service port address it was going to, so that the
// Handler routes them there rather than by their Host.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if tc, ok := c.(*transparentConn); ok {
		return context.WithValue(ctx, destinationKey{}, tc.dst)
	}
	return ctx
}

// resolve finds the Service port of a request: the one its connection was going to, if
// it was redirected to the proxy, else the one its Host names. The address is resolved
// again for every request, so that a long-lived connection follows configuration changes.
func resolve(table *router.Table, r *http.Request) (*router.Port, error) {
	dst, ok := r.Context().Value(destinationKey{}).(netip.AddrPort)
	if !ok {
		return table.Resolve(r.Host)
	}
	if port, ok := table.ResolveAddr(dst); ok {
		return port, nil
	}
	return nil, fmt.Errorf("%w: %s is no longer a Service port of the mesh", router.ErrNoRoute, dst)
}

// ServerProtocols are the protocols of the http.Server that serves a Listener: HTTP/1.1,
// and HTTP/2 with prior knowledge (h2c), which gRPC clients speak in plaintext.
func ServerProtocols() *http.Protocols {
	p := &http.Protocols{}
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	return p
}
