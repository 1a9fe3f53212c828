package h2server

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// errConnect marks a CONNECT request, which is answered 405.
var errConnect = errors.New("h2server: CONNECT is not served")

// pseudo holds a request's pseudo-header fields.
type pseudo struct {
	method, scheme, authority, path string
}

// newRequest builds stream st's request from its HEADERS, or says why it is malformed
// (RFC 9113 section 8.1.1, 8.2 and 8.3).
func (c *conn) newRequest(st *stream, f *http2.MetaHeadersFrame) (*http.Request, error) {
	p, err := requestPseudo(f.PseudoFields())
	if err != nil {
		return nil, err
	}
	h, err := c.requestHeader(f.RegularFields())
	if err != nil {
		return nil, err
	}
	u, err := url.ParseRequestURI(p.path)
	if err != nil {
		return nil, fmt.Errorf("h2server: bad :path %q: %w", p.path, err)
	}
	host, err := requestHost(p.authority, h)
	if err != nil {
		return nil, err
	}
	cl, err := contentLength(h["Content-Length"])
	if err != nil {
		return nil, err
	}
	r := &http.Request{
		Method: p.method, URL: u, Proto: "HTTP/2.0", ProtoMajor: 2, Header: h,
		Host: host, RemoteAddr: c.remoteAddr, RequestURI: p.path, TLS: c.tlsState,
		Trailer: c.declaredTrailers(h), ContentLength: cl, Body: &st.body,
	}
	if f.StreamEnded() {
		if cl > 0 {
			return nil, errBodyLength
		}
		r.Body, r.ContentLength = http.NoBody, 0
	}
	st.declaredLen = cl
	return r.WithContext(st.ctx), nil
}

// requestPseudo reads and checks the pseudo-header fields; the framer already refused
// unknown, duplicate and misplaced ones.
func requestPseudo(fields []hpack.HeaderField) (pseudo, error) {
	var p pseudo
	for _, hf := range fields {
		switch hf.Name {
		case ":method":
			p.method = hf.Value
		case ":scheme":
			p.scheme = hf.Value
		case ":authority":
			p.authority = hf.Value
		case ":path":
			p.path = hf.Value
		default: // :status, :protocol
			return p, fmt.Errorf("h2server: pseudo-header %s in a request", hf.Name)
		}
	}
	if !validMethod(p.method) {
		return p, fmt.Errorf("h2server: bad :method %q", p.method)
	}
	if p.method == http.MethodConnect {
		return p, errConnect
	}
	if p.scheme != "https" && p.scheme != "http" {
		return p, fmt.Errorf("h2server: bad :scheme %q", p.scheme)
	}
	if p.path == "" || p.path[0] != '/' && (p.path != "*" || p.method != http.MethodOptions) {
		return p, fmt.Errorf("h2server: bad :path %q", p.path)
	}
	return p, nil
}

func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for _, r := range m {
		if !httpguts.IsTokenRune(r) {
			return false
		}
	}
	return true
}

// requestHeader turns the regular fields into an http.Header, refusing
// connection-specific fields and joining cookies (RFC 9113 section 8.2.2, 8.2.3).
func (c *conn) requestHeader(fields []hpack.HeaderField) (http.Header, error) {
	h := make(http.Header, len(fields))
	vals := make([]string, 0, len(fields)) // one backing array for single values
	var cookies []string
	for _, hf := range fields {
		switch hf.Name {
		case "connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade":
			return nil, fmt.Errorf("h2server: connection-specific header %q", hf.Name)
		case "te":
			if hf.Value != "trailers" {
				return nil, fmt.Errorf("h2server: te %q is not \"trailers\"", hf.Value)
			}
		case "cookie":
			cookies = append(cookies, hf.Value)
			continue
		}
		k := c.canonical(hf.Name)
		if prev, ok := h[k]; ok {
			h[k] = append(prev, hf.Value)
			continue
		}
		vals = append(vals, hf.Value)
		h[k] = vals[len(vals)-1 : len(vals) : len(vals)]
	}
	if len(cookies) > 0 {
		h["Cookie"] = []string{strings.Join(cookies, "; ")}
	}
	return h, nil
}

// requestHost returns the request's host, from :authority or else the Host header.
func requestHost(authority string, h http.Header) (string, error) {
	host := authority
	if host == "" {
		host = h.Get("Host")
	}
	delete(h, "Host")
	if !httpguts.ValidHostHeader(host) {
		return "", fmt.Errorf("h2server: bad :authority %q", host)
	}
	return host, nil
}

// contentLength parses the content-length fields, -1 when there is none.
func contentLength(vals []string) (int64, error) {
	if len(vals) == 0 {
		return -1, nil
	}
	for _, v := range vals[1:] {
		if v != vals[0] {
			return 0, fmt.Errorf("h2server: conflicting content-length %q and %q", vals[0], v)
		}
	}
	n, err := strconv.ParseUint(vals[0], 10, 63)
	if err != nil {
		return 0, fmt.Errorf("h2server: bad content-length %q", vals[0])
	}
	return int64(n), nil
}

// declaredTrailers returns the trailer keys the request announces in its Trailer header
// (which it removes), as net/http does, or nil.
func (c *conn) declaredTrailers(h http.Header) http.Header {
	vals := h["Trailer"]
	if len(vals) == 0 {
		return nil
	}
	delete(h, "Trailer")
	tr := http.Header{}
	for _, v := range vals {
		for k := range strings.SplitSeq(v, ",") {
			k = c.canonical(strings.TrimSpace(k))
			if k != "" && httpguts.ValidTrailerHeader(k) {
				tr[k] = nil
			}
		}
	}
	return tr
}

// trailerHeader builds the request trailers from a trailing HEADERS frame.
func (c *conn) trailerHeader(f *http2.MetaHeadersFrame) (http.Header, error) {
	fields := f.RegularFields()
	tr := make(http.Header, len(fields))
	for _, hf := range fields {
		k := c.canonical(hf.Name)
		if !httpguts.ValidTrailerHeader(k) {
			return nil, fmt.Errorf("h2server: %q is not allowed in trailers", hf.Name)
		}
		tr[k] = append(tr[k], hf.Value)
	}
	return tr, nil
}
