package h2server

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"

	"github.com/braidmesh/braid/proxy/internal/h2hdr"
)

// errConnect marks a CONNECT request, which is answered 405.
var errConnect = errors.New("h2server: CONNECT is not served")

// newRequest builds stream st's request from its header block, or says why it is
// malformed (RFC 9113 section 8.1.1, 8.2 and 8.3).
func (c *conn) newRequest(st *stream, f *headerBlock) (*http.Request, error) {
	if err := requestPseudo(f); err != nil {
		return nil, err
	}
	h, err := requestHeader(f)
	if err != nil {
		return nil, err
	}
	u, err := url.ParseRequestURI(f.Path)
	if err != nil {
		return nil, fmt.Errorf("h2server: bad :path %q: %w", f.Path, err)
	}
	host, err := requestHost(f.Authority, h)
	if err != nil {
		return nil, err
	}
	cl, err := contentLength(h["Content-Length"])
	if err != nil {
		return nil, err
	}
	r := &http.Request{
		Method: f.Method, URL: u, Proto: "HTTP/2.0", ProtoMajor: 2, Header: h,
		Host: host, RemoteAddr: c.remoteAddr, RequestURI: f.Path, TLS: c.tlsState,
		Trailer: c.declaredTrailers(h), ContentLength: cl, Body: &st.body,
	}
	if f.Ended {
		if cl > 0 {
			return nil, errBodyLength
		}
		r.Body, r.ContentLength = http.NoBody, 0
	}
	st.declaredLen = cl
	return r.WithContext(st.ctx), nil
}

// requestPseudo checks the pseudo-header fields; the block reader already refused
// unknown, duplicate and misplaced ones.
func requestPseudo(f *headerBlock) error {
	switch {
	case f.Pseudo&h2hdr.Status != 0:
		return errors.New("h2server: pseudo-header :status in a request")
	case f.Pseudo&h2hdr.Protocol != 0:
		return errors.New("h2server: pseudo-header :protocol in a request")
	}
	// A method is a token (RFC 9110 §9.1), as a field name is.
	if !httpguts.ValidHeaderFieldName(f.Method) {
		return fmt.Errorf("h2server: bad :method %q", f.Method)
	}
	if f.Method == http.MethodConnect {
		return errConnect
	}
	if f.Scheme != "https" && f.Scheme != "http" {
		return fmt.Errorf("h2server: bad :scheme %q", f.Scheme)
	}
	if f.Path == "" || f.Path[0] != '/' && (f.Path != "*" || f.Method != http.MethodOptions) {
		return fmt.Errorf("h2server: bad :path %q", f.Path)
	}
	if strings.ContainsAny(f.Path, " \t") {
		// A URI has no whitespace (RFC 3986); the decoder already refused control
		// characters. Passed on, a space would end an HTTP/1.1 request line early.
		return fmt.Errorf("h2server: :path %q has whitespace", f.Path)
	}
	return nil
}

// requestHeader returns the request's http.Header, with its cookies joined (RFC 9113
// section 8.2.3), or the field that makes it malformed (section 8.2.2).
func requestHeader(f *headerBlock) (http.Header, error) {
	if f.fieldErr != nil {
		return nil, f.fieldErr
	}
	if len(f.cookies) > 0 {
		f.Header["Cookie"] = []string{strings.Join(f.cookies, "; ")}
	}
	return f.Header, nil
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
			k = c.blocks.dec.Canonical(strings.TrimSpace(k))
			if k != "" && httpguts.ValidTrailerHeader(k) {
				tr[k] = nil
			}
		}
	}
	return tr
}

// trailerHeader returns the request trailers of a trailing header block.
func trailerHeader(f *headerBlock) (http.Header, error) {
	tr := f.Header
	for k := range tr {
		if !httpguts.ValidTrailerHeader(k) {
			return nil, fmt.Errorf("h2server: %q is not allowed in trailers", k)
		}
	}
	if len(f.cookies) > 0 {
		tr["Cookie"] = f.cookies
	}
	return tr, nil
}
