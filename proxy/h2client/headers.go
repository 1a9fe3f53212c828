package h2client

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2/hpack"

	"github.com/braidmesh/braid/proxy/internal/h2hdr"
)

// checkALPN refuses a TLS connection that did not negotiate "h2".
func checkALPN(nc net.Conn) error {
	tc, ok := nc.(interface{ ConnectionState() tls.ConnectionState })
	if !ok {
		return nil
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
		return fmt.Errorf("negotiated protocol %q, want \"h2\"", p)
	}
	return nil
}

// appendRequestFields validates req's header list and appends to fields the fields to
// send, the pseudo-headers first: once per request, before a stream is opened, so that
// a request that cannot be sent fails alone, and its retries send the same list.
func appendRequestFields(fields []hpack.HeaderField, req *http.Request) ([]hpack.HeaderField, error) {
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	if !httpguts.ValidHostHeader(host) {
		return nil, fmt.Errorf("h2client: invalid request host %q", host)
	}
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	// A method is a token (RFC 9110 §9.1), as a field name is.
	if !httpguts.ValidHeaderFieldName(method) {
		return nil, fmt.Errorf("h2client: invalid request method %q", method)
	}
	path := req.URL.RequestURI()
	if path == "" {
		path = "/"
	}
	fields = append(fields,
		hpack.HeaderField{Name: ":method", Value: method},
		hpack.HeaderField{Name: ":scheme", Value: "https"},
		hpack.HeaderField{Name: ":authority", Value: host},
		hpack.HeaderField{Name: ":path", Value: path})
	fields, err := appendHeaderFields(fields, req.Header)
	if err != nil {
		return nil, err
	}
	if len(req.Trailer) > 0 {
		fields = append(fields, hpack.HeaderField{Name: "trailer", Value: trailerNames(req.Trailer)})
	}
	if cl, ok := contentLength(req); ok {
		fields = append(fields, hpack.HeaderField{Name: "content-length", Value: strconv.FormatInt(cl, 10)})
	}
	return fields, nil
}

// contentLength is the content-length to send, if any: the declared length of a body,
// or 0 for a bodiless request whose method expects one.
func contentLength(req *http.Request) (int64, bool) {
	if req.ContentLength > 0 {
		return req.ContentLength, true
	}
	if hasBody(req) {
		return 0, false // unknown length
	}
	switch req.Method {
	case http.MethodPost, http.MethodPut, http.MethodPatch:
		return 0, true
	}
	return 0, false
}

func hasBody(req *http.Request) bool {
	return req.Body != nil && req.Body != http.NoBody
}

// appendHeaderFields validates h and appends to fields every field of it that HTTP/2
// carries.
func appendHeaderFields(fields []hpack.HeaderField, h http.Header) ([]hpack.HeaderField, error) {
	for k, vv := range h {
		if !httpguts.ValidHeaderFieldName(k) {
			return nil, fmt.Errorf("h2client: invalid header field name %q", k)
		}
		name := h2hdr.Lower(k)
		if dropped(name, h) {
			continue
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return nil, fmt.Errorf("h2client: invalid value for header field %q", k)
			}
			if name == "te" && !strings.EqualFold(v, "trailers") {
				continue
			}
			fields = append(fields, hpack.HeaderField{Name: name, Value: v})
		}
	}
	return fields, nil
}

// dropped reports whether a request header must not be sent over HTTP/2: a
// connection-specific one, one the Connection header names, or one sent otherwise.
func dropped(name string, h http.Header) bool {
	switch name {
	case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade",
		"host", "content-length", "trailer":
		return true
	}
	for _, v := range h["Connection"] {
		for f := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(f), name) {
				return true
			}
		}
	}
	return false
}

func trailerNames(tr http.Header) string {
	names := make([]string, 0, len(tr))
	for k := range tr {
		names = append(names, h2hdr.Lower(k))
	}
	return strings.Join(names, ", ")
}

// responseHead is a decoded response HEADERS block.
type responseHead struct {
	status int
	header http.Header
}

var errMissingStatus = errors.New("response without a valid :status")

// decodeHead checks a response's (or an informational response's) header block.
func decodeHead(f *h2hdr.Block) (responseHead, error) {
	status, err := strconv.Atoi(f.Status)
	if err != nil || status < 100 || status > 999 {
		return responseHead{}, errMissingStatus
	}
	return responseHead{status: status, header: f.Header}, nil
}

// newResponse builds the final response from its head into resp; the caller sets Body.
func newResponse(resp *http.Response, req *http.Request, head responseHead) (*http.Response, error) {
	*resp = http.Response{
		Status:        statusLine(head.status),
		StatusCode:    head.status,
		Proto:         "HTTP/2.0",
		ProtoMajor:    2,
		Header:        head.header,
		ContentLength: -1,
		Request:       req,
	}
	if cl := head.header["Content-Length"]; len(cl) > 0 {
		n, err := strconv.ParseInt(cl[0], 10, 64)
		if err != nil || n < 0 || len(cl) > 1 && !allEqual(cl) {
			return nil, fmt.Errorf("invalid content-length %q", cl)
		}
		resp.ContentLength = n
	}
	if declared := head.header["Trailer"]; len(declared) > 0 {
		resp.Trailer = http.Header{}
		for _, v := range declared {
			for k := range strings.SplitSeq(v, ",") {
				if k = strings.TrimSpace(k); k != "" {
					resp.Trailer[textproto.CanonicalMIMEHeaderKey(k)] = nil
				}
			}
		}
		delete(head.header, "Trailer")
	}
	return resp, nil
}

func allEqual(vs []string) bool {
	for _, v := range vs[1:] {
		if v != vs[0] {
			return false
		}
	}
	return true
}

// decodeTrailers checks a trailing HEADERS block.
func decodeTrailers(f *h2hdr.Block) (http.Header, error) {
	if !f.Ended {
		return nil, errors.New("trailers without END_STREAM")
	}
	if f.Pseudo != 0 {
		return nil, errors.New("pseudo-header in trailers")
	}
	return f.Header, nil
}

// statusLine is a response's Status, without building the common ones.
func statusLine(code int) string {
	switch code {
	case http.StatusOK:
		return "200 OK"
	case http.StatusNoContent:
		return "204 No Content"
	case http.StatusNotModified:
		return "304 Not Modified"
	case http.StatusNotFound:
		return "404 Not Found"
	}
	return strconv.Itoa(code) + " " + http.StatusText(code)
}
