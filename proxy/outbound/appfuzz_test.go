package outbound_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/braidmesh/braid/proxy/internal/h2test"
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
		"HTTP/1.1 103 Early Hints\r\nConnection: X-Hop, close\r\nX-Hop: 1\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
		"HTTP/1.1 200 OK\r\nConnection: X-Hop, close\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: h2c\r\nProxy-Connection: x\r\n\r\nbody",
		"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nX-Empty:\r\nX-Spaces:   v   \r\nx-lower: v\r\n\r\n",
		"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n",
		"HTTP/1.1 200 OK\r\nPragma: no-cache\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTrailer: X-T\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\nContent-Length: 5\r\n\r\n",
		"HTTP/1.0 200 OK\r\n\r\nold",
		"HTTP/1.1 999 Odd\r\n\r\n",
		"HTTP/1.1 200\r\n\r\n",
		"HTTP/2.0 200 OK\r\n\r\n",
		"garbage\r\n\r\n",
		"",
	} {
		f.Add([]byte(seed), false)
		f.Add([]byte(seed), true)
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
	f.Fuzz(func(t *testing.T, raw []byte, post bool) {
		answer.Store(&raw)
		method := http.MethodGet
		if post {
			method = http.MethodPost // with a body: the server proxy's net/http Transport carries it
		}
		status, header, informational := fuzzDo(t, p, method, raw)
		proxys := status == http.StatusBadGateway && header.Get("Braid-Proxy-Error") != ""
		if want, ok := statusAsRead(raw); !proxys && (!ok || status != want) {
			t.Fatalf("status %d, want the application's (%d, read: %v) or the proxy's 502, for %q", status, want, ok, raw)
		}
		if added := addedTo(raw, header); !proxys && added != "" {
			t.Fatalf("the client received %s, which the application did not send, for %q", added, raw)
		}
		if hop, v := hopByHopIn(raw, append(informational, header)); hop != "" {
			t.Fatalf("the hop-by-hop field %s: %q reached the client, for %q", hop, v, raw)
		}
		if status := fuzzGet(t, client, p, "/fine", raw); status != http.StatusOK {
			t.Fatalf("a well-formed request after %q: status %d", raw, status)
		}
		if n := p.accepted.Load(); n != 1 {
			t.Fatalf("the server proxy accepted %d connections: the answer %q cost the shared connection", n, raw)
		}
	})
}

// fuzzGet sends a GET for path through the pair, over client, and reads the whole answer.
// It returns the status.
func fuzzGet(t testing.TB, client *http.Transport, p *meshPair, path string, raw []byte) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req := p.request(t).WithContext(ctx)
	req.URL.Path = path
	resp, err := client.RoundTrip(req)
	if err != nil {
		t.Fatalf("GET %s: %v, after %q", path, err, raw)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if ctx.Err() != nil {
		t.Fatalf("GET %s hung, after %q", path, raw)
	}
	return resp.StatusCode
}

// fuzzDo sends a request for /fuzz through the pair, with a body for a POST, on a
// connection of its own, and reads the whole answer, whose body may end early (a
// truncated answer is passed on as one). It returns the final status, and the final and
// informational answers' headers as they came: a client such as net/http's changes
// some as it reads them.
func fuzzDo(t testing.TB, p *meshPair, method string, raw []byte) (int, http.Header, []http.Header) {
	t.Helper()
	c, err := net.DialTimeout("tcp", p.front, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	head := method + " /fuzz HTTP/1.1\r\nHost: web.shop\r\nConnection: close\r\n"
	if method == http.MethodPost {
		head += "Content-Length: 6\r\n\r\na body"
	} else {
		head += "\r\n"
	}
	if _, err := io.WriteString(c, head); err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	br := bufio.NewReader(io.TeeReader(c, &got))
	req, _ := http.NewRequest(method, "http://web.shop/fuzz", nil)
	for {
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatalf("%s /fuzz: %v, for the answer %q", method, err, raw)
		}
		if resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			_ = resp.Body.Close() // an informational answer has none
			continue
		}
		_, err = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("%s /fuzz hung, for the answer %q", method, raw)
			}
		}
		heads, final := headsIn(got.Bytes())
		if !final {
			t.Fatalf("%s /fuzz: net/http read an answer whose head is not whole in %q", method, got.Bytes())
		}
		return resp.StatusCode, heads[len(heads)-1], heads[:len(heads)-1]
	}
}

// headsIn returns the headers of the answers' heads in b as they came, informational
// ones first; final says whether the last is a final answer's (one after which the rest
// is a body, or nothing), read whole.
func headsIn(b []byte) (heads []http.Header, final bool) {
	tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(b)))
	for {
		line, err := tp.ReadLine()
		if err != nil {
			return heads, false
		}
		h, err := tp.ReadMIMEHeader()
		if err != nil {
			return heads, false
		}
		heads = append(heads, http.Header(h))
		if _, status, _ := strings.Cut(line, " "); !strings.HasPrefix(strings.TrimLeft(status, " "), "1") || strings.HasPrefix(strings.TrimLeft(status, " "), "101") {
			return heads, true
		}
	}
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

// addedTo returns a field of header that the final answer of raw does not have, and that
// the client proxy's server does not set itself; "" when there is none.
func addedTo(raw []byte, header http.Header) string {
	heads, final := headsIn(raw)
	if !final {
		return ""
	}
	for k := range header {
		if _, ok := heads[len(heads)-1][k]; !ok && !frontsOwn[k] {
			return k
		}
	}
	return ""
}

// frontsOwn are the fields the client proxy's HTTP/1.1 server may set on an answer
// itself, whatever the application sent: the framing of its own connection, and the date
// (RFC 9110 §6.6.1 asks a proxy to add one). Not Content-Type: the proxy must not guess
// one the application did not send.
var frontsOwn = map[string]bool{"Date": true, "Content-Length": true, "Connection": true, "Transfer-Encoding": true}

// listedInConnection returns the fields the Connection headers of raw's answers list, as
// the application sent them (net/http's ReadResponse drops a Connection header holding
// "close").
func listedInConnection(raw []byte) []string {
	heads, _ := headsIn(raw)
	var listed []string
	for _, h := range heads {
		listed = append(listed, connectionOptions(h)...)
	}
	return listed
}

// connectionOptions returns the canonical names h's Connection header lists: this test's
// own reading, apart from forward's.
func connectionOptions(h http.Header) []string {
	var names []string
	for _, v := range h.Values("Connection") {
		for name := range strings.SplitSeq(v, ",") {
			if name = textproto.TrimString(name); name != "" {
				names = append(names, textproto.CanonicalMIMEHeaderKey(name))
			}
		}
	}
	return names
}

// FuzzClientRequest sends raw bytes from a client through a whole pair in one process.
// Whatever the client sends:
//
//   - the application never receives a hop-by-hop field of the client's request (but
//     "TE: trailers", and the fields of an upgrade, which pass on);
//   - the client's connection ends in time;
//   - the connection the proxies multiplex requests on survives: a request in flight on
//     it meanwhile ends whole, and a well-formed request after each input succeeds.
func FuzzClientRequest(f *testing.F) {
	for _, seed := range []string{
		"GET /a HTTP/1.1\r\nHost: web.shop\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: web.shop\r\nConnection: X-Hop, close\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nProxy-Connection: x\r\nTE: trailers, deflate\r\n\r\n",
		"POST /a HTTP/1.1\r\nHost: web.shop\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3\r\nabc\r\n0\r\nX-T: v\r\n\r\n",
		"POST /a HTTP/1.1\r\nHost: web.shop\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
		"POST /a HTTP/1.1\r\nHost: web.shop\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: web.shop\r\n\r\nGET /b HTTP/1.1\r\nHost: web.shop\r\nConnection: close\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: web.shop\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
		"POST /a HTTP/1.1\r\nHost: web.shop\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
		"GET http://web.shop/a?q=1 HTTP/1.1\r\nHost: other\r\n\r\n",
		"GET /a HTTP/1.0\r\nHost: web.shop\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: web.shop\r\nX-Empty:\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: web.shop\r\nPragma: no-cache\r\n\r\n",
	} {
		f.Add([]byte(seed))
	}
	for _, seed := range h2cRequests() {
		f.Add(seed)
	}
	var raw atomic.Pointer[[]byte]
	var leaked atomic.Pointer[string]
	started, release := make(chan struct{}), make(chan struct{})
	p := newMeshPair(f, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/fine":
		case "/slow":
			_, _ = io.WriteString(w, "start ")
			_ = http.NewResponseController(w).Flush()
			started <- struct{}{}
			<-release
		default:
			if hop := hopByHopReceived(*raw.Load(), r); hop != "" {
				leaked.Store(&hop)
			} else if added := addedToRequest(*raw.Load(), r); added != "" {
				leaked.Store(&added)
			}
		}
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "end")
	})
	client, slow := p.client(false), p.client(false)
	f.Cleanup(client.CloseIdleConnections)
	f.Cleanup(slow.CloseIdleConnections)
	f.Fuzz(func(t *testing.T, in []byte) {
		raw.Store(&in)
		leaked.Store(nil)
		inFlight := make(chan string, 1)
		go func() { inFlight <- slowGet(t.Context(), slow, p) }()
		select {
		case <-started:
		case got := <-inFlight:
			t.Fatalf("the request in flight ended early: %s", got)
		}
		exchangeRaw(t, p.front, in)
		release <- struct{}{}
		if got := <-inFlight; got != "200 start end" {
			t.Fatalf("the request in flight on the shared connection got %q, for %q", got, in)
		}
		if hop := leaked.Load(); hop != nil {
			t.Fatalf("the application received %s, for %q", *hop, in)
		}
		if status := fuzzGet(t, client, p, "/fine", in); status != http.StatusOK {
			t.Fatalf("a well-formed request after %q: status %d", in, status)
		}
	})
}

// h2cRequests returns seeds of HTTP/2 with prior knowledge: the preface, SETTINGS, and
// requests for web.shop.
func h2cRequests() [][]byte {
	req := func(method string, pairs ...string) []string {
		return append([]string{":method", method, ":scheme", "http", ":authority", "web.shop", ":path", "/a"}, pairs...)
	}
	var seeds [][]byte
	for _, write := range []func(fr *http2.Framer, block func(...string) []byte){
		func(fr *http2.Framer, block func(...string) []byte) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block(req("GET", "te", "trailers", "x-a", "1")...), EndStream: true, EndHeaders: true})
		},
		func(fr *http2.Framer, block func(...string) []byte) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block(req("POST", "content-type", "application/grpc", "te", "trailers")...), EndHeaders: true})
			_ = fr.WriteData(1, false, []byte("\x00\x00\x00\x00\x01a"))
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block("x-t", "v"), EndStream: true, EndHeaders: true})
		},
		func(fr *http2.Framer, block func(...string) []byte) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block(req("GET")...), EndStream: true, EndHeaders: true})
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: block(req("POST")...), EndHeaders: true})
			_ = fr.WriteRSTStream(3, http2.ErrCodeCancel)
		},
	} {
		seeds = append(seeds, append([]byte(http2.ClientPreface), h2test.Frames(func(fr *http2.Framer, block func(...string) []byte) {
			_ = fr.WriteSettings()
			write(fr, block)
		})...))
	}
	return seeds
}

// slowGet sends a GET for /slow through the pair and returns its status and body, or
// its error.
func slowGet(ctx context.Context, client *http.Transport, p *meshPair) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.front+"/slow", nil)
	if err != nil {
		return err.Error()
	}
	req.Host = "web.shop"
	resp, err := client.RoundTrip(req)
	if err != nil {
		return err.Error()
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Sprintf("%d %s, then %v", resp.StatusCode, body, err)
	}
	return fmt.Sprintf("%d %s", resp.StatusCode, body)
}

// exchangeRaw writes in on a new connection to front, ends its writing half once an answer
// began (or 25 ms passed: a pair on loopback answers within a few), and reads what comes
// back until the proxy closes the connection, which must happen in time. in is HTTP/1.1,
// or HTTP/2 after its preface.
func exchangeRaw(t *testing.T, front string, in []byte) {
	t.Helper()
	c, err := net.DialTimeout("tcp", front, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(in); err != nil {
		return // the proxy may refuse before reading it all
	}
	// Half-closing at once would cancel the request on its way (net/http's server takes
	// the end of a client's sending for its going away): first let an answer begin, or
	// the proxy wait for the rest of an incomplete request.
	_ = c.SetReadDeadline(time.Now().Add(25 * time.Millisecond))
	if bytes.HasPrefix(in, []byte(http2.ClientPreface)) {
		awaitAnswerFrame(c) // the server's SETTINGS come first, whatever the requests
	} else {
		var first [1]byte
		_, _ = c.Read(first[:])
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_ = c.(*net.TCPConn).CloseWrite()
	if _, err := io.Copy(io.Discard, c); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("the proxy kept the connection open past 10 s, for %q", in)
		}
	}
}

// awaitAnswerFrame reads HTTP/2 frames from c until one that answers a stream, or ends
// the connection, comes, or c's read deadline passes.
func awaitAnswerFrame(c net.Conn) {
	fr := http2.NewFramer(io.Discard, c)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		switch f.(type) {
		case *http2.HeadersFrame, *http2.DataFrame, *http2.RSTStreamFrame, *http2.GoAwayFrame:
			return
		}
	}
}

// hopByHopReceived returns a hop-by-hop field of the client's request in that the
// application's request r holds, as "name: values"; "" when it holds none.
func hopByHopReceived(in []byte, r *http.Request) string {
	hops := append(listedInRequests(in), "Connection", "Keep-Alive", "Proxy-Connection", "Te", "Upgrade", "Transfer-Encoding")
	upgrade := r.Header.Get("Upgrade") != ""
	for _, hop := range hops {
		v, ok := r.Header[hop]
		switch {
		case !ok:
		case hop == "Te" && len(v) == 1 && v[0] == "trailers":
		case upgrade && (hop == "Upgrade" || hop == "Connection"):
		default:
			return hop + ": " + strings.Join(v, ", ")
		}
	}
	return ""
}

// listedInRequests returns the fields the Connection headers of in's requests list.
func listedInRequests(in []byte) []string {
	br := bufio.NewReader(bytes.NewReader(in))
	var listed []string
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return listed
		}
		listed = append(listed, connectionOptions(req.Header)...)
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			return listed
		}
	}
}

// addedToRequest returns a field of the application's request r that none of the
// client's requests in in has, but for those the mesh adds (Braid's own, and the
// framing of the connection to the application); "" when there is none. Cache-Control
// may come with a Pragma: net/http's server adds "Cache-Control: no-cache" to a request
// with "Pragma: no-cache" and no Cache-Control, which RFC 9111 §5.4 gives the same
// meaning (known, and accepted: undoing it would mean keeping every request's head as it
// came).
func addedToRequest(in []byte, r *http.Request) string {
	sent := sentNames(in)
	for k := range r.Header {
		framing := k == "Content-Length" || k == "Transfer-Encoding" // the server proxy's own, to the application
		if !sent[k] && !framing && !strings.HasPrefix(k, "Braid-") && (k != "Cache-Control" || r.Header.Get("Pragma") == "") {
			return "the field " + k + ", which the client did not send"
		}
	}
	return ""
}

// sentNames returns the canonical names of the fields of the requests in in: HTTP/1.1
// heads, or HTTP/2 header blocks after the preface (h2c with prior knowledge, as gRPC
// clients speak).
func sentNames(in []byte) map[string]bool {
	sent := map[string]bool{}
	if rest, ok := bytes.CutPrefix(in, []byte(http2.ClientPreface)); ok {
		fr := http2.NewFramer(io.Discard, bytes.NewReader(rest))
		fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		for {
			f, err := fr.ReadFrame()
			if mh, ok := f.(*http2.MetaHeadersFrame); ok {
				for _, hf := range mh.Fields {
					sent[textproto.CanonicalMIMEHeaderKey(hf.Name)] = true
				}
			}
			var se http2.StreamError
			if err != nil && !errors.As(err, &se) {
				return sent
			}
		}
	}
	tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(in)))
	for {
		if _, err := tp.ReadLine(); err != nil {
			return sent
		}
		h, err := tp.ReadMIMEHeader()
		for k := range h {
			sent[k] = true
		}
		if err != nil {
			return sent
		}
	}
}
