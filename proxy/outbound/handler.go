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
	"net/http"
	"net/http/httputil"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"

	"github.com/braidmesh/braid/proxy/router"
)

// Handler routes outbound HTTP requests by the current routing table.
type Handler struct {
	log     logr.Logger
	table   *atomic.Pointer[router.Table]
	forward *httputil.ReverseProxy
	rngs    sync.Pool
}

type endpointKey struct{}

// New returns a Handler that reads the routing table from table on every request, so a
// new table applies to the next request without disturbing requests in flight.
func New(log logr.Logger, table *atomic.Pointer[router.Table]) *Handler {
	h := &Handler{log: log, table: table}
	h.rngs.New = func() any { return rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())) }
	h.forward = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			ep, _ := pr.In.Context().Value(endpointKey{}).(netip.AddrPort)
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = ep.String()
			pr.Out.Host = pr.In.Host // the application sees the authority its client used
		},
		Transport:    newTransport(),
		ErrorHandler: h.upstreamError,
		ErrorLog:     nil,
	}
	return h
}

func newTransport() *http.Transport {
	return &http.Transport{
		Proxy:                 nil, // never chain to an environment proxy
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   128,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 0, // per-route timeouts come with route configuration
		ForceAttemptHTTP2:     false,
	}
}

// ServeHTTP routes one request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	table := h.table.Load()
	if table == nil {
		fail(w, http.StatusServiceUnavailable, "the proxy has not received its configuration from the control plane yet")
		return
	}
	port, err := table.Resolve(r.Host)
	if err != nil {
		fail(w, http.StatusNotFound, err.Error())
		return
	}
	route := port.Route(r.Method, r.URL.Path, r.Header)
	if route == nil {
		fail(w, http.StatusNotFound, fmt.Sprintf("no route of service %s port %d matches %s %s", port.Service, port.Number, r.Method, r.URL.Path))
		return
	}
	backend := route.Pick()
	var ep netip.AddrPort
	ok := false
	if backend != nil {
		rng := h.rngs.Get().(*rand.Rand)
		ep, ok = backend.Endpoint(rng)
		h.rngs.Put(rng)
	}
	switch {
	case backend == nil:
		fail(w, http.StatusServiceUnavailable, fmt.Sprintf("service %s port %d has no backend with a weight above 0", port.Service, port.Number))
		return
	case backend.Unavailable != "":
		fail(w, http.StatusServiceUnavailable, backend.Unavailable)
		return
	case !ok:
		fail(w, http.StatusServiceUnavailable, fmt.Sprintf("backend %s of service %s port %d has no ready endpoints", backend.Service, port.Service, port.Number))
		return
	}
	h.forward.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), endpointKey{}, ep)))
}

func (h *Handler) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, context.Canceled) {
		return // the client went away; nobody reads the answer
	}
	ep, _ := r.Context().Value(endpointKey{}).(netip.AddrPort)
	h.log.V(1).Info("Upstream request failed", "endpoint", ep.String(), "host", r.Host, "error", err.Error())
	fail(w, http.StatusBadGateway, fmt.Sprintf("endpoint %s for host %q failed: %v", ep, r.Host, err))
}

// fail writes an error the proxy generated itself, marked so that clients and operators
// can tell it from the application's own errors.
func fail(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Braid-Proxy-Error", http.StatusText(code))
	w.WriteHeader(code)
	_, _ = fmt.Fprintf(w, "braid-proxy: %s\n", msg)
}
