package h1client

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// excluded are the header fields a head does not copy from Request.Header: it writes
// Host and Content-Length itself, User-Agent only when set, and a request without a
// body has no Transfer-Encoding or trailers.
func excluded(k string) bool {
	switch k {
	case "Host", "User-Agent", "Content-Length", "Transfer-Encoding", "Trailer":
		return true
	}
	return false
}

// head is a request's head, checked and ready to write: what net/http's Request.Write
// writes for a request without a body (the Host that field or the URL names, punycoded
// and without an IPv6 zone; a Content-Length of 0 for the methods that expect a body;
// the other fields sorted by name), with three differences:
//   - it allocates nothing for a request of up to 16 fields with an ASCII host;
//   - a field name or value that cannot be sent (a control character could split the
//     header), or a target with a space, is an error, where net/http drops the field,
//     rewrites the value or writes the target as it is;
//   - without a User-Agent field it sends none, where net/http sends its own.
type head struct {
	req          *http.Request
	method, host string
	path         string
	query        bool // the URL's RawQuery follows path, after a "?"
}

// errUnsendable marks a request that no connection can carry.
var errUnsendable = errors.New("the request cannot be sent over HTTP/1.1")

// prepare checks req, a request without a body, and readies h to write its head.
func (h *head) prepare(req *http.Request) error {
	h.req = req
	h.method = cmp.Or(req.Method, http.MethodGet)
	// A method is a token (RFC 9110 §9.1), as a field name is.
	if !httpguts.ValidHeaderFieldName(h.method) {
		return fmt.Errorf("%w: invalid method %q", errUnsendable, h.method)
	}
	var err error
	if h.host, err = outgoingHost(req); err != nil {
		return err
	}
	if h.path, h.query, err = requestURI(req.URL); err != nil {
		return err
	}
	return checkFields(req.Header)
}

// write writes the head to w.
func (h *head) write(w *bufio.Writer) error {
	req := h.req
	_, _ = w.WriteString(h.method)
	_ = w.WriteByte(' ')
	_, _ = w.WriteString(h.path)
	if h.query {
		_ = w.WriteByte('?')
		_, _ = w.WriteString(req.URL.RawQuery)
	}
	_, _ = w.WriteString(" HTTP/1.1\r\nHost: ")
	_, _ = w.WriteString(h.host)
	_, _ = w.WriteString("\r\n")
	if ua := req.Header["User-Agent"]; len(ua) > 0 && ua[0] != "" { // an empty one says: send none
		writeField(w, "User-Agent", ua[0]) // one agent, as net/http sends
	}
	if req.Close && !httpguts.HeaderValuesContainsToken(req.Header["Connection"], "close") {
		_, _ = w.WriteString("Connection: close\r\n")
	}
	switch h.method {
	case http.MethodPost, http.MethodPut, http.MethodPatch:
		_, _ = w.WriteString("Content-Length: 0\r\n") // servers expect one for these methods
	}
	var buf [16]string // the names of a typical request's fields, sorted without allocating
	for _, k := range fieldNames(buf[:0], req.Header) {
		for _, v := range req.Header[k] {
			writeField(w, k, v)
		}
	}
	_, err := w.WriteString("\r\n")
	return err //nolint:wrapcheck // the caller says what it was writing
}

// checkFields checks that every field of h can be sent.
func checkFields(h http.Header) error {
	for k, vv := range h {
		if !httpguts.ValidHeaderFieldName(k) {
			return fmt.Errorf("%w: invalid header field name %q", errUnsendable, k)
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Errorf("%w: invalid value for header field %q", errUnsendable, k)
			}
		}
	}
	return nil
}

// fieldNames appends to names, sorted, the names of the fields of h to write.
func fieldNames(names []string, h http.Header) []string {
	for k := range h {
		if !excluded(k) {
			names = append(names, k)
		}
	}
	slices.Sort(names)
	return names
}

func writeField(w *bufio.Writer, k, v string) {
	_, _ = w.WriteString(k)
	_, _ = w.WriteString(": ")
	_, _ = w.WriteString(textproto.TrimString(v))
	_, _ = w.WriteString("\r\n")
}

// outgoingHost is the Host to send: the request's Host, or its URL's, in ASCII and
// without an IPv6 zone (RFC 6874). Like net/http, it sends an empty Host rather than an
// invalid one.
func outgoingHost(req *http.Request) (string, error) {
	host := cmp.Or(req.Host, req.URL.Host)
	if !isASCII(host) {
		ascii, err := httpguts.PunycodeHostPort(host)
		if err != nil {
			return "", fmt.Errorf("%w: invalid host %q: %w", errUnsendable, host, err)
		}
		host = ascii
	}
	if !httpguts.ValidHostHeader(host) {
		return "", nil
	}
	return withoutZone(host), nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// withoutZone removes the zone from an IPv6 literal host ("[fe80::1%eth0]:80").
func withoutZone(host string) string {
	if !strings.HasPrefix(host, "[") {
		return host
	}
	end := strings.LastIndex(host, "]")
	if end < 0 {
		return host
	}
	zone := strings.LastIndex(host[:end], "%")
	if zone < 0 {
		return host
	}
	return host[:zone] + host[end:]
}

// requestURI returns what u.RequestURI returns, in two parts so that writing it makes no
// string: the path, and whether u.RawQuery follows after a "?". It refuses a URI that
// cannot go on a request line.
func requestURI(u *url.URL) (path string, query bool, err error) {
	if u.Opaque != "" {
		path = u.RequestURI() // rare: an opaque URL; its query is already in
	} else {
		path, query = cmp.Or(u.EscapedPath(), "/"), u.ForceQuery || u.RawQuery != ""
	}
	if !sendable(path) || query && !sendable(u.RawQuery) {
		return "", false, fmt.Errorf("%w: its target %q has a space or a control character", errUnsendable, u.RequestURI())
	}
	return path, query, nil
}

// sendable reports whether s can be part of a request line's target: it has no space,
// which would end the target early, and no control character. (net/http's
// Request.Write checks only the latter, and writes a query with a space as it is.)
func sendable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] == 0x7f {
			return false
		}
	}
	return true
}
