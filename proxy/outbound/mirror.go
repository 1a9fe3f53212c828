package outbound

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/braidmesh/braid/proxy/forward"
	"github.com/braidmesh/braid/proxy/router"
)

const (
	// maxMirrorBody is the largest request body copied to mirrors; requests with larger
	// (or unknown-length, larger) bodies are not mirrored, so mirroring never holds a
	// large upload in memory.
	maxMirrorBody = 64 << 10
	// mirrorTimeout bounds a mirrored request: nobody waits for its answer.
	mirrorTimeout = 10 * time.Second
	// maxMirrorsInFlight bounds the mirrored requests under way; past it, copies are
	// dropped rather than queued.
	maxMirrorsInFlight = 256
)

// mirror sends copies of r to the route's mirrors, in the background: their answers are
// dropped, and a mirror that is slow or down never delays or fails r. A body is copied
// only up to maxMirrorBody; r keeps an identical body of its own.
func (h *Handler) mirror(r *http.Request, route *router.Route) {
	if len(route.Mirrors) == 0 || isUpgrade(r) {
		return
	}
	var body []byte
	if r.Body != nil && r.Body != http.NoBody {
		if r.ContentLength < 0 || r.ContentLength > maxMirrorBody {
			return
		}
		var err error
		if body, err = io.ReadAll(io.LimitReader(r.Body, maxMirrorBody+1)); err != nil || len(body) > maxMirrorBody {
			r.Body = io.NopCloser(io.MultiReader(bytes.NewReader(body), r.Body))
			return
		}
		_ = r.Body.Close()
		r.Body = io.NopCloser(bytes.NewReader(body))
	}
	for _, m := range route.Mirrors {
		if m.Percent < 100 && rand.Uint32N(100) >= m.Percent {
			continue
		}
		select {
		case h.mirrors <- struct{}{}:
		default:
			continue // too many copies under way: drop this one
		}
		rng := h.rngs.Get().(*rand.Rand)
		call, err := m.Backend.Pick(rng, nil)
		h.rngs.Put(rng)
		if err != nil {
			<-h.mirrors
			continue
		}
		out, cancel := mirrorRequest(r, call.State, body)
		go func() {
			defer func() { cancel(); call.End(); <-h.mirrors }()
			h.sendMirror(out, call)
		}()
	}
}

// mirrorRequest is the copy of r, with body, for endpoint ep.
func mirrorRequest(r *http.Request, ep *router.EndpointState, body []byte) (*http.Request, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), mirrorTimeout)
	x := &exchange{endpoint: ep.Endpoint, names: ep.Names()}
	out := r.Clone(context.WithValue(ctx, exchangeKey{}, x))
	out.RequestURI = ""
	out.URL.Scheme, out.URL.Host = "http", x.names.Addr
	out.Host = r.Host
	out.Body, out.ContentLength = http.NoBody, 0
	if len(body) > 0 {
		out.Body, out.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
	}
	forward.RemoveHopByHop(out.Header)
	return out, cancel
}

// sendMirror sends a mirrored copy and drops the answer.
func (h *Handler) sendMirror(out *http.Request, call router.Call) {
	resp, err := h.upstream.RoundTrip(out)
	if err != nil {
		call.Responded(true)
		return
	}
	call.Responded(resp.StatusCode >= 500)
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	_ = resp.Body.Close()
}
