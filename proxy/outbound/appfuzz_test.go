package outbound_test

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// FuzzAppResponse sends the application's answer, raw bytes the fuzzer chooses, back
// through a whole proxy pair in one process (HTTP/1.1 from the application, HTTP/2 over
// mTLS between the proxies, HTTP/1.1 to the client). Whatever the application writes:
//
//   - the client gets an answer: the application's status as net/http reads it, or the
//     proxy's own 502 naming the cause, never a hang or a broken connection before the
//     head;
//   - the connection between the proxies survives: it carries other requests too, so a
//     malformed answer must cost its own stream, never the connection. After each input
//     a well-formed request succeeds, and the server proxy has accepted one connection
//     in all.
func FuzzAppResponse(f *testing.F) {
	for _, seed := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: v\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\n\r\n",
		"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 103 Early Hints\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 1\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
		"HTTP/1.1 200 OK\r\nConnection: X-Hop, close\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: h2c\r\nProxy-Connection: x\r\n\r\nbody",
		"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nX-Empty:\r\nX-Spaces:   v   \r\nx-lower: v\r\n\r\n",
		"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTrailer: X-T\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\nContent-Length: 5\r\n\r\n",
		"HTTP/1.0 200 OK\r\n\r\nold",
		"HTTP/1.1 999 Odd\r\n\r\n",
		"HTTP/1.1 200\r\n\r\n",
		"HTTP/2.0 200 OK\r\n\r\n",
		"garbage\r\n\r\n",
		"",
	} {
		f.Add([]byte(seed))
	}
	var answer atomic.Pointer[[]byte]
	p := newMeshPair(f, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/fuzz" {
			_, _ = io.WriteString(w, "fine")
			return
		}
		c, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			panic(err) // the application speaks HTTP/1.1 to the proxy: it can hijack
		}
		_, _ = c.Write(*answer.Load())
		_ = c.Close()
	})
	client := p.client(false)
	f.Cleanup(client.CloseIdleConnections)
	f.Fuzz(func(t *testing.T, raw []byte) {
		answer.Store(&raw)
		status, header, informational := fuzzGet(t, client, p, "/fuzz", raw)
		proxys := status == http.StatusBadGateway && header.Get("Braid-Proxy-Error") != ""
		if want, ok := statusAsRead(raw); !proxys && (!ok || status != want) {
			t.Fatalf("status %d, want the application's (%d, read: %v) or the proxy's 502, for %q", status, want, ok, raw)
		}
		if hop, v := hopByHopIn(raw, append(informational, header)); hop != "" {
			t.Fatalf("the hop-by-hop field %s: %q reached the client, for %q", hop, v, raw)
		}
		if status, _, _ := fuzzGet(t, client, p, "/fine", raw); status != http.StatusOK {
			t.Fatalf("a well-formed request after %q: status %d", raw, status)
		}
		if n := p.accepted.Load(); n != 1 {
			t.Fatalf("the server proxy accepted %d connections: the answer %q cost the shared connection", n, raw)
		}
	})
}

// fuzzGet sends a GET for path through the pair and reads the whole answer, whose body may
// end early (a truncated answer is passed on as one). It returns the status, the header
// and the headers of the informational answers before it.
func fuzzGet(t *testing.T, client *http.Transport, p *meshPair, path string, raw []byte) (int, http.Header, []http.Header) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var informational []http.Header
	trace := &httptrace.ClientTrace{Got1xxResponse: func(_ int, h textproto.MIMEHeader) error {
		informational = append(informational, http.Header(h).Clone())
		return nil
	}}
	req := p.request(t).WithContext(httptrace.WithClientTrace(ctx, trace))
	req.URL.Path = path
	resp, err := client.RoundTrip(req)
	if err != nil {
		t.Fatalf("GET %s: %v, for the answer %q", path, err, raw)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if ctx.Err() != nil {
		t.Fatalf("GET %s hung, for the answer %q", path, raw)
	}
	resp.Header.Del("Connection") // net/http's own, on the last answer of a connection
	return resp.StatusCode, resp.Header, informational
}

// statusAsRead is the final status net/http reads from raw as the answer to a GET,
// skipping informational answers; ok is false when it reads none.
func statusAsRead(raw []byte) (int, bool) {
	br := bufio.NewReader(bytes.NewReader(raw))
	req, _ := http.NewRequest(http.MethodGet, "http://web.shop/fuzz", nil)
	for {
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			return 0, false
		}
		_ = resp.Body.Close()
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			return resp.StatusCode, true
		}
	}
}

// hopByHopIn returns a hop-by-hop field of the application's answer raw that one of
// headers, what the client received, holds, and its values; "" when none does.
func hopByHopIn(raw []byte, headers []http.Header) (string, []string) {
	hops := append(listedInConnection(raw), "Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade", "Te")
	for _, h := range headers {
		for _, hop := range hops {
			if v, ok := h[hop]; ok && !frontsOwn[hop] {
				return hop, v
			}
		}
	}
	return "", nil
}

// frontsOwn are the fields the client proxy's HTTP/1.1 server may set on an answer
// itself, whatever the application sent.
var frontsOwn = map[string]bool{"Date": true, "Content-Length": true, "Content-Type": true, "Connection": true}

// listedInConnection returns the fields the Connection headers of raw's answers list, as
// the application sent them (net/http's ReadResponse drops a Connection header holding
// "close").
func listedInConnection(raw []byte) []string {
	tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(raw)))
	var listed []string
	for {
		if _, err := tp.ReadLine(); err != nil {
			return listed
		}
		h, err := tp.ReadMIMEHeader()
		for _, v := range h.Values("Connection") {
			for name := range strings.SplitSeq(v, ",") {
				if name = textproto.TrimString(name); name != "" {
					listed = append(listed, textproto.CanonicalMIMEHeaderKey(name))
				}
			}
		}
		if err != nil {
			return listed
		}
	}
}
