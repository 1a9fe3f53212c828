// Package outbound is the proxy's outbound HTTP listener: it routes each request to a
// mesh Service named by the request's authority, picks a backend by weight and an
// endpoint of that backend, and forwards the request there. It never forwards anywhere
// its configuration does not name.
package outbound

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"

	"github.com/braidmesh/braid/proxy/bufpool"
	"github.com/braidmesh/braid/proxy/forward"
	"github.com/braidmesh/braid/proxy/h1client"
	"github.com/braidmesh/braid/proxy/router"
	"github.com/braidmesh/braid/proxy/sockio"
	"github.com/braidmesh/braid/proxy/telemetry"
)

// Handler routes outbound HTTP requests by the current routing table.
type Handler struct {
	log     logr.Logger
	table   *atomic.Pointer[router.Table]
	metrics *telemetry.Metrics
	// buffers lends the buffers answers are copied through.
	buffers *bufpool.Pool
	// upstream carries each attempt of a request to its endpoint.
	upstream http.RoundTripper
	rngs     sync.Pool
	// mirrors holds a token per mirrored request under way (maxMirrorsInFlight).
	mirrors chan struct{}
	// backoff spaces retries.
	backoff backoff
}

// exchange is what the handler and its forwarding share about one forwarded request;
// it is the request's forward.Exchange.
type exchange struct {
	h       *Handler
	fwd     forward.Request
	port    *router.Port // nil until the request resolves to a Service port
	route   *router.Route
	backend *router.Backend
	dest    *telemetry.Destination
	// ctx is the request's context, with the route's timeout.
	ctx context.Context
	// endpoint is the endpoint of the current attempt, and names its addresses as text.
	endpoint router.Endpoint
	names    *router.EndpointNames
	// call is the attempt whose answer is forwarded, held until the exchange ends.
	call    router.Call
	hasCall bool
	// attemptCtx is the context of the current attempt, with the backend request
	// timeout, and cancelAttempt ends it.
	attemptCtx    context.Context
	cancelAttempt context.CancelFunc
	body          requestBody
	tried         []*router.EndpointState
	triedArray    [4]*router.EndpointState
	// attempted says that endpoint was tried: the request reached at least one attempt.
	attempted bool
	// status is the status of the answer, once the backend gave one or the proxy failed.
	status     int
	proxyError bool
	denied     bool // the proxy refused the request: the workload may not reach the Service
	// answered says that the answer went out whole: route returned rather than panicked.
	answered bool
	timedOut bool // a timeout was counted
}

type exchangeKey struct{}

// New returns a Handler that reads the routing table from table on every request, so a
// new table applies to the next request without disturbing requests in flight. It
// records every request in metrics, unless metrics is nil.
func New(log logr.Logger, table *atomic.Pointer[router.Table], metrics *telemetry.Metrics) *Handler {
	h := &Handler{
		log: log, table: table, metrics: metrics, upstream: newPlainTransport(), buffers: &bufpool.Pool{},
		mirrors: make(chan struct{}, maxMirrorsInFlight), backoff: systemBackoff(),
	}
	h.rngs.New = func() any { return rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())) }
	return h
}

// copyBufferSize is the size of the buffers opaque connections are copied through.
const copyBufferSize = bufpool.Size

// connectTimeout bounds a connection attempt: an endpoint that vanished without a reset
// (a deleted pod before the configuration catches up) must fail fast with a 502, not
// after the kernel's two minutes of SYN retries.
const connectTimeout = 3 * time.Second

// newPlainTransport reaches unmeshed endpoints: requests without a body the lean way
// (proxy/h1client, in the handler's goroutine), the others through net/http.
func newPlainTransport() *h1client.Transport {
	t := newTransport()
	dial := t.DialContext
	t.DialContext = h1client.FallbackDialer(dial)
	return &h1client.Transport{
		DialContext: dial, Fallback: t,
		IdleConnTimeout: t.IdleConnTimeout, MaxIdleConnsPerHost: t.MaxIdleConnsPerHost,
	}
}

func newTransport() *http.Transport {
	return &http.Transport{
		DialContext:           sockio.DialContext(&net.Dialer{Timeout: connectTimeout, KeepAlive: 30 * time.Second}),
		Proxy:                 nil, // never chain to an environment proxy
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   128,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 0, // per-route timeouts: see Handler.route
		ForceAttemptHTTP2:     false,
		// The client's Accept-Encoding passes as it is, and answers come back as the
		// application encoded them: without this, a request that did not ask for gzip
		// would ask for it, and the proxy would decompress the answer.
		DisableCompression: true,
	}
}

// ServeHTTP routes one request, and records it once answered.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	x := &exchange{h: h}
	if h.metrics != nil {
		// Deferred, so that a response forward aborts midway (it panics with
		// http.ErrAbortHandler) counts too.
		defer h.record(x, time.Now())
	}
	h.route(w, r, x)
	x.answered = true
}

func (h *Handler) record(x *exchange, start time.Time) {
	if x.status == 0 {
		return // the client went away before any answer: nothing to count
	}
	result := telemetry.Success
	switch {
	case x.denied:
		result = telemetry.Denied
	case x.proxyError:
		result = telemetry.ProxyError
	case x.status >= 500 || !x.answered:
		result = telemetry.Failure
	}
	var ep *router.Endpoint
	if x.attempted {
		ep = &x.endpoint
	}
	elapsed := time.Since(start) // once: a clock read is ~90 ns on the VMs measured
	h.metrics.Destination(x.port).Record(x.route, ep, x.status, result, elapsed)
	h.metrics.Edges().Outbound(x.endpoint, x.status, !x.answered, elapsed) // SMI TrafficMetrics edges
}

// route answers one request: it forwards it, or fails it itself. It notes in x the
// Service port the request resolved to and the outcome.
func (h *Handler) route(w http.ResponseWriter, r *http.Request, x *exchange) {
	table := h.table.Load()
	if table == nil {
		x.fail(w, http.StatusServiceUnavailable, "the proxy has no configuration yet")
		return
	}
	port, err := resolve(table, r) // by Host, or by the original destination of a redirected connection
	if err != nil {
		x.fail(w, http.StatusNotFound, err.Error())
		return
	}
	x.port = port
	if port.Denied != "" {
		x.denied = true
		x.fail(w, http.StatusForbidden, fmt.Sprintf("%s may not reach %s: %s", h.selfID(), port.Host(), port.Denied))
		return
	}
	route := port.Route(r.Method, r.URL.Path, r.Header)
	if route == nil {
		x.fail(w, http.StatusNotFound, fmt.Sprintf("no route of service %s port %d matches %s %s", port.Service, port.Number, r.Method, r.URL.Path))
		return
	}
	x.route = route
	backend := route.Pick()
	switch {
	case backend == nil:
		x.fail(w, http.StatusServiceUnavailable, fmt.Sprintf("service %s port %d has no backend with a weight above 0", port.Service, port.Number))
	case backend.Unavailable != "":
		x.fail(w, http.StatusServiceUnavailable, backend.Unavailable)
	case len(backend.Endpoints()) == 0:
		x.fail(w, http.StatusServiceUnavailable, fmt.Sprintf("backend %s of service %s port %d has no ready endpoints", backend.Service, port.Service, port.Number))
	default:
		h.mirror(r, route)
		h.forwardTo(w, r, x, route, backend)
	}
}

// selfID names the proxy's own workload in its answers: its SPIFFE ID, or "this
// workload" when it has no certificate (no mesh, or none yet).
func (h *Handler) selfID() string {
	if m, ok := h.upstream.(*meshRoundTripper); ok && m.ids != nil {
		if id := m.ids.ID(); id != "" {
			return id
		}
	}
	return "this workload"
}

// forwardTo forwards a request to an endpoint of backend, under the route's timeout and
// retry policy.
func (h *Handler) forwardTo(w http.ResponseWriter, r *http.Request, x *exchange, route *router.Route, backend *router.Backend) {
	x.route, x.backend, x.dest = route, backend, h.metrics.Destination(x.port)
	x.tried = x.triedArray[:0]
	ctx := context.WithValue(r.Context(), exchangeKey{}, x)
	if route.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, route.Timeout, &timeoutError{route: route.Name, after: route.Timeout, kind: requestTimeout})
		defer cancel()
	}
	x.ctx = ctx
	out, err := x.fwd.Outgoing(ctx, w, r)
	if err != nil {
		x.fail(w, http.StatusBadRequest, err.Error())
		return
	}
	out.URL.Scheme = "http" // the host is the endpoint of each attempt; out.Host stays the client's authority
	route.RequestHeaders.Apply(out.Header, &out.Host)
	backend.RequestHeaders.Apply(out.Header, &out.Host)
	x.body = prepareBody(out, route)
	defer x.finish()
	x.fwd.Forward(w, r, out, x, h.buffers)
}

// RoundTrip sends the request to an endpoint of the exchange's backend, and again to
// another on a failure its route retries.
func (x *exchange) RoundTrip(out *http.Request) (*http.Response, error) {
	return x.h.attempts(out, x)
}

// ModifyResponse notes the answer's status and applies the route's and the backend's
// response header modifiers.
func (x *exchange) ModifyResponse(res *http.Response) error {
	x.status = res.StatusCode
	x.route.ResponseHeaders.Apply(res.Header, nil)
	x.backend.ResponseHeaders.Apply(res.Header, nil)
	return nil
}

// finish ends the exchange's last attempt, and counts a timeout that cut its answer off.
func (x *exchange) finish() {
	if x.hasCall {
		x.call.End()
		x.hasCall = false
	}
	if x.cancelAttempt != nil {
		x.cancelAttempt()
	}
	if !x.timedOut {
		if te := x.timeout(); te != nil {
			x.dest.TimedOut(te.kind.String())
		}
	}
}

// Failed answers a request no endpoint answered: with the proxy's own failure, a 504
// for a timeout, or a 502.
func (x *exchange) Failed(w http.ResponseWriter, r *http.Request, err error) {
	var pf *proxyFailure
	if errors.As(err, &pf) {
		x.fail(w, pf.status, pf.msg)
		return
	}
	if te := x.timeout(); te != nil {
		x.timedOut = true
		x.dest.TimedOut(te.kind.String())
		x.fail(w, http.StatusGatewayTimeout, te.Error())
		return
	}
	if errors.Is(err, context.Canceled) {
		return // the client went away; nobody reads the answer
	}
	x.h.log.V(1).Info("Upstream request failed", "endpoint", x.endpoint.Addr.String(), "host", r.Host, "error", err.Error())
	x.fail(w, http.StatusBadGateway, fmt.Sprintf("endpoint %s for host %q failed: %v", x.endpoint.Addr, r.Host, err))
}

// fail writes an error the proxy generated itself, marked so that clients and operators
// can tell it from the application's own errors, and notes it as the outcome.
func (x *exchange) fail(w http.ResponseWriter, code int, msg string) {
	x.status, x.proxyError = code, true
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Braid-Proxy-Error", http.StatusText(code))
	w.WriteHeader(code)
	_, _ = fmt.Fprintf(w, "braid-proxy: %s\n", msg)
}
