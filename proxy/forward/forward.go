// Package forward passes an HTTP request on and streams its answer back: the reverse
// proxy both of braid-proxy's listeners are built on.
//
// It does for a request what net/http/httputil.ReverseProxy does, with the copies a
// sidecar pays on every request cut to one: the outgoing request is a single shallow
// copy of the server's, with its own URL and header, and the state of the exchange
// lives in a Request the caller embeds in its own per-request structure. What it does:
//   - hop-by-hop headers (those RFC 9110 §7.6.1 names, and any the Connection header
//     lists) are dropped both ways; "TE: trailers" and protocol upgrades pass;
//   - informational answers (1xx) reach the client before the final one;
//   - the answer's body streams back, flushed at once for server-sent events and
//     bodies of unknown length (gRPC, chunked), and its trailers follow;
//   - a 101 Switching Protocols answer turns the client's connection into a two-way
//     copy with the upstream one (WebSocket);
//   - an upstream that fails mid-answer aborts the client's response
//     (http.ErrAbortHandler), so the client sees a broken answer, not a short one;
//   - an answer without a Content-Type gets none: net/http's server would otherwise
//     sniff one from the body;
//   - a whole answer leaves before Forward returns (see complete), so that what the
//     caller does after it does not delay the client.
//
// Unlike httputil.ReverseProxy configured with Rewrite, it leaves Forwarded and
// X-Forwarded-* headers as the client sent them: a mesh is transparent to them, and an
// ingress in front of the workload relies on them reaching the application.
package forward

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strings"
	"sync"

	"golang.org/x/net/http/httpguts"

	"github.com/braidmesh/braid/proxy/bufpool"
)

// Exchange is what forwarding one request needs of its caller.
type Exchange interface {
	// RoundTrip sends the outgoing request and returns the answer.
	RoundTrip(out *http.Request) (*http.Response, error)
	// ModifyResponse sees the answer, its hop-by-hop headers gone, before it is passed
	// on; an error fails the request as a transport error would.
	ModifyResponse(res *http.Response) error
	// Failed answers the client when the request could not be forwarded for err.
	Failed(w http.ResponseWriter, out *http.Request, err error)
}

// Request is one request on its way. Embed it in a per-request structure: its zero
// value is ready, and it is used for one request only.
type Request struct {
	// Once says that the caller sends the request on once, and reads nothing of the
	// server's request's header after Outgoing: the header of an HTTP/2 request, which
	// has no hop-by-hop fields (RFC 9113 §8.2.2: "TE: trailers" at most, which passes),
	// then becomes the outgoing request's rather than being copied. A caller that may
	// retry must leave it false: each attempt needs the header as the client sent it.
	Once bool

	url   url.URL
	trace httptrace.ClientTrace
	w     http.ResponseWriter
	mu    sync.Mutex
	// final says the final answer arrived: informational answers after it are dropped.
	final bool
}

// Outgoing returns the request to send on for in, the server's request, which it leaves
// as it is (but see Once): a shallow copy under ctx, with its own URL and header,
// without hop-by-hop headers, and a body only when in has one. w is the client's: it
// receives the informational answers. Its error says what makes the request unfit to
// pass on: an upgrade to an invalid protocol, or a target with whitespace.
func (r *Request) Outgoing(ctx context.Context, w http.ResponseWriter, in *http.Request) (*http.Request, error) {
	up := UpgradeType(in.Header)
	if !isPrint(up) {
		return nil, fmt.Errorf("the client asked to switch to the invalid protocol %q", up)
	}
	if !inTarget(in.URL.RawQuery) || !inTarget(in.URL.Opaque) {
		// net/http's HTTP/2 server takes a :path with a space in its query; passed on,
		// the space would end an HTTP/1.1 request line early.
		return nil, fmt.Errorf("the request's target %q has a space or a control character", in.URL.RequestURI())
	}
	r.w = w
	r.trace.Got1xxResponse = r.got1xx
	out := in.WithContext(httptrace.WithClientTrace(ctx, &r.trace))
	r.url = *in.URL
	out.URL = &r.url
	if r.Once && in.ProtoMajor == 2 {
		out.Header = in.Header
	} else {
		out.Header = withoutHopByHop(in.Header)
	}
	out.Close = false
	if in.ContentLength == 0 {
		out.Body = nil // nothing to send: a transport may then send the request again
	} else if in.Body != nil {
		// The transport closes the body it sends; the server's request body is the
		// server's to close (closing it early would hang on a 100-continue body).
		out.Body = keepOpen{in.Body}
	}
	if httpguts.HeaderValuesContainsToken(in.Header["Te"], "trailers") {
		out.Header["Te"] = []string{"trailers"}
	}
	if up != "" {
		out.Header["Connection"] = []string{"Upgrade"}
		out.Header["Upgrade"] = []string{up}
	}
	if _, ok := out.Header["User-Agent"]; !ok {
		out.Header["User-Agent"] = []string{""} // send none, rather than the transport's own
	}
	return out, nil
}

// got1xx passes an informational answer on to the client, unless the final one came,
// without its hop-by-hop fields: an informational answer is a message too (RFC 9110
// §7.6.1).
func (r *Request) got1xx(code int, header textproto.MIMEHeader) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.final {
		return nil
	}
	RemoveHopByHop(http.Header(header)) // the transport's map for this answer alone
	h := r.w.Header()
	for k, vv := range header {
		h[k] = append(h[k], vv...)
	}
	r.w.WriteHeader(code)
	clear(h) // the ResponseWriter keeps them for the final answer otherwise
	return nil
}

// Forward sends out, made by Outgoing from in, through x and streams the answer to w,
// copying the body through a buffer of bufs.
func (r *Request) Forward(w http.ResponseWriter, in, out *http.Request, x Exchange, bufs *bufpool.Pool) {
	res, err := x.RoundTrip(out)
	r.mu.Lock()
	r.final = true
	r.mu.Unlock()
	if err != nil {
		x.Failed(w, out, err)
		return
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		if err := x.ModifyResponse(res); err != nil {
			_ = res.Body.Close()
			x.Failed(w, out, err)
			return
		}
		switchProtocols(w, out, res, x)
		return
	}
	RemoveHopByHop(res.Header)
	if err := x.ModifyResponse(res); err != nil {
		_ = res.Body.Close()
		x.Failed(w, out, err)
		return
	}
	announced := writeHead(w, res)
	if err := copyBody(w, res, bufs); err != nil {
		_ = res.Body.Close()
		if in.Context().Value(http.ServerContextKey) != nil {
			panic(http.ErrAbortHandler) // the server breaks the response off
		}
		return
	}
	_ = res.Body.Close() // now, so that res.Trailer holds the trailers
	if len(res.Trailer) == 0 {
		complete(w, in)
		return
	}
	writeTrailers(w, res, announced)
}

// complete sends a whole answer out now rather than when the handler returns, so that
// the caller's work after Forward (metrics) does not delay the client: h2server ends the
// stream (EndResponse); net/http's HTTP/1 server is flushed when the answer has a
// Content-Length, which makes it one write (without one, it would turn chunked).
// net/http's HTTP/2 server is left alone: a flush would split a trailers-only answer
// (gRPC's errors) into headers and an empty end, which is no longer trailers-only.
func complete(w http.ResponseWriter, in *http.Request) {
	if e, ok := w.(interface{ EndResponse() error }); ok {
		_ = e.EndResponse()
		return
	}
	if _, ok := w.Header()["Content-Length"]; ok && in.ProtoMajor == 1 {
		_ = http.NewResponseController(w).Flush()
	}
}

// writeHead writes the answer's status and header, announcing its trailers; it returns
// how many it announced.
func writeHead(w http.ResponseWriter, res *http.Response) int {
	h := w.Header()
	for k, vv := range res.Header {
		if len(h[k]) == 0 {
			h[k] = vv // the answer's own: no need to copy
		} else {
			h[k] = append(h[k], vv...)
		}
	}
	if _, typed := res.Header["Content-Type"]; !typed {
		h["Content-Type"] = nil // the server must not guess one the application did not send
	}
	if n := len(res.Trailer); n > 0 {
		keys := make([]string, 0, n)
		for k := range res.Trailer {
			keys = append(keys, k)
		}
		h.Add("Trailer", strings.Join(keys, ", "))
	}
	w.WriteHeader(res.StatusCode)
	return len(res.Trailer)
}

// writeTrailers writes the answer's trailers: as announced ones, or, for those the
// header did not announce, with http.TrailerPrefix.
func writeTrailers(w http.ResponseWriter, res *http.Response, announced int) {
	if len(res.Trailer) == 0 {
		return
	}
	// Flushing makes an HTTP/1.1 answer chunked: trailers need it, and a short body
	// would otherwise get a Content-Length.
	_ = http.NewResponseController(w).Flush()
	h := w.Header()
	if len(res.Trailer) == announced {
		for k, vv := range res.Trailer {
			h[k] = append(h[k], vv...)
		}
		return
	}
	for k, vv := range res.Trailer {
		for _, v := range vv {
			h.Add(http.TrailerPrefix+k, v)
		}
	}
}

// copyBody copies the answer's body to w. Server-sent events and bodies of unknown
// length (streams) are flushed as they come, the header first; others are left to w's
// buffering.
func copyBody(w http.ResponseWriter, res *http.Response, bufs *bufpool.Pool) error {
	var flush func() error
	if res.ContentLength == -1 || isEventStream(res.Header) {
		flush = http.NewResponseController(w).Flush
		if err := flush(); err != nil {
			return fmt.Errorf("flushing the header: %w", err)
		}
	}
	buf := bufs.Get()
	defer bufs.Put(buf)
	for {
		n, rerr := res.Body.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return fmt.Errorf("writing the answer: %w", err)
			}
			if flush != nil {
				if err := flush(); err != nil {
					return fmt.Errorf("flushing the answer: %w", err)
				}
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return fmt.Errorf("reading the answer: %w", rerr)
		}
	}
}

func isEventStream(h http.Header) bool {
	ct := h["Content-Type"]
	if len(ct) == 0 || !strings.HasPrefix(ct[0], "text/event-stream") {
		return false
	}
	mt, _, err := mime.ParseMediaType(ct[0])
	return err == nil && mt == "text/event-stream"
}

// keepOpen passes a request body on, and leaves closing it to the server.
type keepOpen struct{ io.ReadCloser }

func (keepOpen) Close() error { return nil }

// errNotWritable says an upstream switched protocols on a connection the proxy cannot
// write to.
var errNotWritable = errors.New("the upstream's 101 Switching Protocols answer came with a body that cannot be written to")
