package mesh_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/braidmesh/braid/proxy/outbound"
	"github.com/braidmesh/braid/proxy/router"
)

// rawRequest writes raw to the client proxy and returns the status of its answer.
func rawRequest(t *testing.T, p *pair, raw string) int {
	t.Helper()
	c, err := net.Dial("tcp", p.client.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the answer to %q: %v", raw, err)
	}
	defer func() { _ = resp.Body.Close() }()
	return resp.StatusCode
}

// Requests whose framing two parsers could read differently never get through: a
// smuggled request must not reach the application. (Content-Length together with
// Transfer-Encoding: chunked is the one ambiguity RFC 9112 section 6.3 lets an
// intermediary resolve instead: the chunked framing wins, Content-Length is removed, and
// the proxy re-frames what it forwards, so no hop behind it can read it differently.)
func TestAmbiguousFramingIsRefused(t *testing.T) {
	p := newPair(t)
	for _, raw := range []string{
		"POST /x HTTP/1.1\r\nHost: reviews\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
		"GET / HTTP/1.1\r\nHost: reviews\r\nHost: other\r\n\r\n",
	} {
		if code := rawRequest(t, p, raw); code != http.StatusBadRequest {
			t.Errorf("%q answered %d, want 400", raw, code)
		}
	}
	select {
	case h := <-p.seen:
		t.Fatalf("an ambiguous request reached the application: %v", h)
	default:
	}
}

// Hop-by-hop headers end at the proxy: the application never sees them.
func TestHopByHopHeadersStopAtTheProxy(t *testing.T) {
	p := newPair(t)
	raw := "GET /h HTTP/1.1\r\nHost: reviews\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\nProxy-Authorization: Basic c2VjcmV0\r\nTE: trailers\r\nX-Kept: yes\r\n\r\n"
	if code := rawRequest(t, p, raw); code != http.StatusOK {
		t.Fatalf("answered %d", code)
	}
	seen := <-p.seen
	for _, h := range []string{"X-Hop", "Proxy-Authorization", "Connection"} {
		if seen.Get(h) != "" {
			t.Errorf("hop-by-hop header %s reached the application: %q", h, seen.Get(h))
		}
	}
	if seen.Get("X-Kept") != "yes" {
		t.Errorf("an end-to-end header was lost: %v", seen)
	}
}

// The proxy is no open proxy: an absolute URI naming a host outside the mesh is not
// forwarded there.
func TestNoOpenProxying(t *testing.T) {
	p := newPair(t)
	code := rawRequest(t, p, "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
	if code != http.StatusNotFound {
		t.Errorf("a request for example.com answered %d, want the proxy's 404", code)
	}
}

// No client may target the server proxy's own ports, even where everyone is admitted: a
// peer could otherwise send traffic out through that proxy under its workload's identity.
func TestProxyPortsAreNotTargets(t *testing.T) {
	p := newPair(t)
	code, body, _ := p.do(http.MethodGet, "sideways", "/")
	if code != http.StatusForbidden || !strings.Contains(body, "the proxy's own") {
		t.Errorf("a request for the proxy's own port answered %d %q, want 403", code, body)
	}
	d := outbound.MeshDialer{IDs: p.clientID}
	c, err := d.DialEndpoint(t.Context(), router.Endpoint{Addr: p.reserved, Identity: "spiffe://cluster.local/ns/shop/sa/reviews", ProxyPort: p.inbound.Port()})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	_, _ = io.WriteString(c, "hello")
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16)
	if n, err := c.Read(buf); err == nil {
		t.Errorf("an opaque connection to the proxy's own port echoed %q", buf[:n])
	}
}

// The mesh is transparent to forwarding headers and to the query string: an ingress in
// front of the client relies on X-Forwarded-For reaching the application, and the
// application parses its own query.
func TestForwardingHeadersAndQueryPassThrough(t *testing.T) {
	p := newPair(t)
	raw := "GET /h?a=1;b=2&c=%zz HTTP/1.1\r\nHost: reviews\r\nX-Forwarded-For: 203.0.113.7\r\n" +
		"X-Forwarded-Proto: https\r\nX-Forwarded-Host: shop.example\r\nForwarded: for=203.0.113.7\r\n\r\n"
	if code := rawRequest(t, p, raw); code != http.StatusOK {
		t.Fatalf("answered %d", code)
	}
	seen := <-p.seen
	want := map[string]string{
		"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https",
		"X-Forwarded-Host": "shop.example", "Forwarded": "for=203.0.113.7",
	}
	for k, v := range want {
		if got := seen.Get(k); got != v {
			t.Errorf("%s reached the application as %q, want %q", k, got, v)
		}
	}
	if q := seen.Get("X-Seen-Query"); q != "a=1;b=2&c=%zz" {
		t.Errorf("the query reached the application as %q, want it untouched", q)
	}
}
