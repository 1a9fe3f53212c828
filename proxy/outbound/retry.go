package outbound

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/braidmesh/braid/proxy/h2client"
	"github.com/braidmesh/braid/proxy/router"
)

// maxReplayBody is the largest request body the proxy buffers so that it can send it
// again on a retry.
const maxReplayBody = 64 << 10

// timeoutKind says which of a route's timeouts fired.
type timeoutKind uint8

const (
	requestTimeout timeoutKind = iota
	backendRequestTimeout
)

func (k timeoutKind) String() string {
	if k == backendRequestTimeout {
		return "backend_request"
	}
	return "request"
}

// timeoutError is the cause of a context a route's timeout ended.
type timeoutError struct {
	route string
	after time.Duration
	kind  timeoutKind
}

func (e *timeoutError) Error() string {
	if e.kind == backendRequestTimeout {
		return fmt.Sprintf("route %s: the endpoint did not answer within the backend request timeout, %s", e.route, e.after)
	}
	return fmt.Sprintf("route %s: the request timed out after %s (the route's request timeout)", e.route, e.after)
}

// timeout returns the timeout that ended the request or its current attempt, if one did.
func (x *exchange) timeout() *timeoutError {
	for _, ctx := range []context.Context{x.ctx, x.attemptCtx} {
		if ctx == nil || ctx.Err() == nil {
			continue
		}
		var te *timeoutError
		if errors.As(context.Cause(ctx), &te) {
			return te
		}
	}
	return nil
}

// proxyFailure is an answer the proxy gives itself when it cannot forward a request.
type proxyFailure struct {
	status int
	msg    string
}

func (f *proxyFailure) Error() string { return f.msg }

// connectError is a failure to establish a connection to an endpoint: nothing of the
// request reached the application.
type connectError struct{ err error }

func (e *connectError) Error() string { return e.err.Error() }
func (e *connectError) Unwrap() error { return e.err }

// isConnectFailure reports whether nothing of the request reached the application: the
// connection failed, or the peer proxy did not process the request (h2client.ErrNotProcessed).
func isConnectFailure(err error) bool {
	var ce *connectError
	if errors.As(err, &ce) || errors.Is(err, h2client.ErrNotProcessed) {
		return true
	}
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// requestBody is what a retry needs of the request body.
type requestBody struct {
	// buffered holds the whole body when the proxy read it first, to send it again.
	buffered []byte
	// guard is the body otherwise: it tells whether the transport read any of it.
	guard *guardedBody
}

// guardedBody passes a request body on, notes whether any of it was read, and ignores
// Close: the transport closes the body of a request that fails to connect, which a
// retry then sends.
type guardedBody struct {
	io.ReadCloser
	read atomic.Bool
}

func (g *guardedBody) Read(p []byte) (int, error) {
	g.read.Store(true)
	return g.ReadCloser.Read(p)
}

func (g *guardedBody) Close() error { return nil } // the server closes the request body

// idempotent reports whether a request may be sent twice.
func idempotent(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPut, http.MethodDelete, http.MethodTrace:
		return true
	}
	return r.Body == nil || r.Body == http.NoBody
}

// prepareBody makes the request's body ready for retries: read whole first when it is
// small and may be sent again after a failure past the connection (an idempotent method
// on a route with retries), guarded otherwise.
func prepareBody(r *http.Request, route *router.Route) requestBody {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 || route.Retries == 0 {
		return requestBody{}
	}
	if idempotent(r) && r.ContentLength > 0 && r.ContentLength <= maxReplayBody {
		buf := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, buf); err == nil {
			r.Body = io.NopCloser(bytes.NewReader(buf))
			return requestBody{buffered: buf}
		}
		// A short body: let the transport send what there is and fail as it would.
		r.Body = io.NopCloser(io.MultiReader(bytes.NewReader(buf), r.Body))
		return requestBody{}
	}
	g := &guardedBody{ReadCloser: r.Body}
	r.Body = g
	return requestBody{guard: g}
}

// replayable reports whether the body can be sent again after an attempt that failed;
// connected says whether that attempt reached the endpoint.
func (b requestBody) replayable(r *http.Request, connected bool) bool {
	switch {
	case r.Body == nil || r.Body == http.NoBody || b.buffered != nil:
		return true
	case b.guard != nil:
		return !connected && !b.guard.read.Load()
	}
	return false
}

// replay returns a body that sends the request body again: the buffered copy, or the
// guarded body itself, which a transport's Close after a failed connection left
// readable; original otherwise.
func (b requestBody) replay(original io.ReadCloser) io.ReadCloser {
	switch {
	case b.buffered != nil:
		return io.NopCloser(bytes.NewReader(b.buffered))
	case b.guard != nil:
		return b.guard
	}
	return original
}

// attempts sends a request to an endpoint of its exchange's backend, and again to
// another on a failure its route retries.
func (h *Handler) attempts(req *http.Request, x *exchange) (*http.Response, error) {
	rng := h.rngs.Get().(*rand.Rand)
	defer h.rngs.Put(rng)
	call, err := x.backend.Pick(rng, nil)
	if err != nil {
		return nil, &proxyFailure{status: http.StatusServiceUnavailable, msg: pickFailure(x, err)}
	}
	for n := 0; ; n++ {
		resp, err := h.attempt(req, x, call, n)
		failed, retry := x.outcome(req, resp, err)
		if call.Responded(failed) {
			x.dest.Ejected()
			h.log.V(1).Info("Ejected an endpoint after consecutive failures", "endpoint", call.Endpoint().Addr.String(), "backend", x.backend.Service)
		}
		var next router.Call
		var pause time.Duration
		if retry && n < x.route.Retries {
			next, pause, retry = x.retryCall(rng, call, h.backoff, n+1)
		}
		if !retry || n >= x.route.Retries {
			x.call, x.hasCall = call, true
			return resp, err
		}
		if resp != nil {
			_ = resp.Body.Close()
		}
		call.End()
		x.cancelAttempt()
		if err := h.backoff.pause(x.ctx, pause); err != nil {
			next.End()
			return nil, err // the client went away, or the route's timeout fired
		}
		call = next
	}
}

// retryCall picks the endpoint of the n-th retry after call failed, draws the pause
// before it, and takes the retry from the budget; it reports false when there is no
// endpoint, no time or no budget left.
func (x *exchange) retryCall(rng *rand.Rand, call router.Call, b backoff, n int) (router.Call, time.Duration, bool) {
	x.tried = append(x.tried, call.State)
	next, err := x.backend.Pick(rng, x.tried)
	if err != nil {
		return router.Call{}, 0, false
	}
	pause, ok := b.draw(x.ctx, x.route, n)
	if !ok {
		next.End()
		return router.Call{}, 0, false
	}
	if !x.route.Budget.Withdraw() {
		next.End()
		x.dest.RetrySkipped()
		return router.Call{}, 0, false
	}
	x.dest.Retried()
	return next, pause, true
}

// attempt sends the request to the endpoint of call; n counts the attempts before it.
func (h *Handler) attempt(req *http.Request, x *exchange, call router.Call, n int) (*http.Response, error) {
	x.endpoint, x.names, x.attempted = call.Endpoint(), call.State.Names(), true
	out := req
	if n > 0 {
		out = req.Clone(req.Context())
		out.Body = x.body.replay(req.Body)
	}
	x.attemptCtx, x.cancelAttempt = req.Context(), func() {}
	if d := x.route.BackendRequestTimeout; d > 0 {
		x.attemptCtx, x.cancelAttempt = context.WithTimeoutCause(req.Context(), d,
			&timeoutError{route: x.route.Name, after: d, kind: backendRequestTimeout})
		out = out.WithContext(x.attemptCtx)
	}
	out.URL.Scheme, out.URL.Host = "http", x.names.Addr // the mesh transport may have named a peer proxy
	return h.upstream.RoundTrip(out)
}

// outcome classifies an attempt: whether the endpoint failed (for its outlier
// detection), and whether the request may be retried.
func (x *exchange) outcome(req *http.Request, resp *http.Response, err error) (failed, retry bool) {
	switch {
	case err == nil:
		failed = resp.StatusCode >= 500
		return failed, x.route.RetriesStatus(resp.StatusCode) && idempotent(req) && x.body.replayable(req, true)
	case x.ctx.Err() != nil:
		return false, false // the client went away, or the route's timeout fired
	case x.attemptCtx.Err() != nil:
		return true, false // the backend request timeout: not retried
	case isConnectFailure(err):
		return true, x.body.replayable(req, false)
	}
	return true, idempotent(req) && x.body.replayable(req, true)
}

// pickFailure says why no endpoint of the exchange's backend can take its request.
func pickFailure(x *exchange, err error) string {
	return fmt.Sprintf("service %s port %d: %v", x.port.Service, x.port.Number, err)
}
