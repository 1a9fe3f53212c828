package forward_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/braidmesh/braid/proxy/bufpool"
	"github.com/braidmesh/braid/proxy/forward"
)

// exchange forwards to one upstream over a real http.Transport, and notes what the
// proxy reported.
type exchange struct {
	fwd       forward.Request
	transport http.RoundTripper
	upstream  *url.URL
	mu        sync.Mutex
	failed    error
}

func (x *exchange) RoundTrip(out *http.Request) (*http.Response, error) {
	out.URL.Scheme, out.URL.Host = x.upstream.Scheme, x.upstream.Host
	return x.transport.RoundTrip(out)
}

func (x *exchange) ModifyResponse(res *http.Response) error {
	if res.Header.Get("X-Refuse") != "" {
		return errors.New("refused by ModifyResponse")
	}
	res.Header.Set("X-Modified", "yes")
	return nil
}

func (x *exchange) Failed(w http.ResponseWriter, _ *http.Request, err error) {
	x.mu.Lock()
	x.failed = err
	x.mu.Unlock()
	w.WriteHeader(http.StatusBadGateway)
	_, _ = io.WriteString(w, "proxy: "+err.Error())
}

func (x *exchange) failure() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.failed
}

// setup starts app behind a proxy built on forward, and returns the proxy's URL and the
// last exchange it made.
func setup(t *testing.T, app http.HandlerFunc) (string, func() *exchange) {
	t.Helper()
	upstream := httptest.NewServer(app)
	t.Cleanup(upstream.Close)
	u, err := url.Parse(upstream.URL)
	if err != nil {
		t.Fatal(err)
	}
	transport := &http.Transport{DisableCompression: true}
	t.Cleanup(transport.CloseIdleConnections)
	bufs := &bufpool.Pool{}
	var mu sync.Mutex
	var last *exchange
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		x := &exchange{transport: transport, upstream: u}
		mu.Lock()
		last = x
		mu.Unlock()
		out, err := x.fwd.Outgoing(r.Context(), w, r)
		if err != nil {
			x.Failed(w, r, err)
			return
		}
		x.fwd.Forward(w, r, out, x, bufs)
	}))
	t.Cleanup(front.Close)
	return front.URL, func() *exchange {
		mu.Lock()
		defer mu.Unlock()
		return last
	}
}

// rawExchange writes raw to addr and returns the answer read from the connection.
func rawExchange(t *testing.T, proxyURL, raw string) (*http.Response, *bufio.Reader, net.Conn) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(proxyURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	return res, br, c
}

func TestHopByHopHeadersStopBothWays(t *testing.T) {
	seen := make(chan http.Header, 1)
	proxy, _ := setup(t, func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Clone()
		w.Header().Set("Connection", "X-Answer-Hop")
		w.Header().Set("X-Answer-Hop", "no")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("X-Answer", "yes")
	})
	res, _, _ := rawExchange(t, proxy, "GET / HTTP/1.1\r\nHost: app\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\n"+
		"Proxy-Authorization: Basic c2VjcmV0\r\nKeep-Alive: 5\r\nTE: trailers, deflate\r\nX-Kept: a\r\nX-Kept: b\r\n\r\n")
	_ = res.Body.Close()
	got := <-seen
	for _, h := range []string{"Connection", "X-Hop", "Proxy-Authorization", "Keep-Alive"} {
		if v, ok := got[h]; ok {
			t.Errorf("hop-by-hop header %s reached the upstream: %q", h, v)
		}
	}
	if te := got.Values("Te"); len(te) != 1 || te[0] != "trailers" {
		t.Errorf("TE reached the upstream as %q, want just trailers", te)
	}
	if kept := got.Values("X-Kept"); len(kept) != 2 || kept[0] != "a" || kept[1] != "b" {
		t.Errorf("an end-to-end header reached the upstream as %q, want [a b]", kept)
	}
	if ua, ok := got["User-Agent"]; ok {
		t.Errorf("the upstream saw a User-Agent the client did not send: %q", ua)
	}
	for _, h := range []string{"X-Answer-Hop", "Keep-Alive"} {
		if v := res.Header.Get(h); v != "" {
			t.Errorf("hop-by-hop header %s of the answer reached the client: %q", h, v)
		}
	}
	if res.Header.Get("X-Answer") != "yes" || res.Header.Get("X-Modified") != "yes" {
		t.Errorf("the answer's headers reached the client as %v", res.Header)
	}
}

func TestRequestBodyAndQueryPass(t *testing.T) {
	type saw struct {
		query, body string
		length      int64
	}
	seen := make(chan saw, 1)
	proxy, _ := setup(t, func(_ http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		seen <- saw{r.URL.RawQuery, string(b), r.ContentLength}
	})
	res, err := http.Post(proxy+"/p?a=1;b=2&c=%zz", "text/plain", strings.NewReader("hello"))
	if err != nil {
		t.Fatal(err)
	}
	_ = res.Body.Close()
	if got := <-seen; got != (saw{"a=1;b=2&c=%zz", "hello", 5}) {
		t.Errorf("the upstream saw %+v", got)
	}
}

func TestInformationalAnswersComeFirst(t *testing.T) {
	proxy, _ := setup(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		w.Header().Set("X-Final", "yes")
		_, _ = io.WriteString(w, "done")
	})
	var hints []string
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			hints = append(hints, http.StatusText(code)+": "+h.Get("Link"))
			return nil
		},
	})
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, proxy, nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	_ = res.Body.Close()
	if len(hints) != 1 || hints[0] != "Early Hints: </style.css>; rel=preload" {
		t.Errorf("informational answers = %q, want the 103 with its Link", hints)
	}
	if res.Header.Get("Link") != "" || res.Header.Get("X-Final") != "yes" || string(body) != "done" {
		t.Errorf("final answer = %v %q", res.Header, body)
	}
}

func TestTrailersFollowTheBody(t *testing.T) {
	proxy, _ := setup(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Trailer", "Grpc-Status")
		_, _ = io.WriteString(w, "body")
		w.Header().Set("Grpc-Status", "0")
		w.Header().Set(http.TrailerPrefix+"X-Late", "unannounced")
	})
	res, err := http.Get(proxy)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	_ = res.Body.Close()
	if string(body) != "body" || res.Trailer.Get("Grpc-Status") != "0" || res.Trailer.Get("X-Late") != "unannounced" {
		t.Errorf("body %q, trailers %v; want both trailers", body, res.Trailer)
	}
}

// A body of unknown length streams: the client gets each part as the upstream sends it.
func TestStreamsAreFlushedAsTheyCome(t *testing.T) {
	next := make(chan struct{})
	proxy, _ := setup(t, func(w http.ResponseWriter, _ *http.Request) {
		for _, part := range []string{"one\n", "two\n"} {
			_, _ = io.WriteString(w, part)
			http.NewResponseController(w).Flush() //nolint:errcheck // the test reads what arrives
			<-next
		}
	})
	res, err := http.Get(proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = res.Body.Close() }()
	br := bufio.NewReader(res.Body)
	for _, want := range []string{"one\n", "two\n"} {
		line, err := br.ReadString('\n')
		if err != nil || line != want {
			t.Fatalf("read %q, %v while the upstream held the rest; want %q", line, err, want)
		}
		next <- struct{}{}
	}
}

// An upstream that breaks off its answer breaks off the client's: the client must not
// take a short body for a whole one.
func TestAnUpstreamFailingMidAnswerAbortsTheClients(t *testing.T) {
	proxy, _ := setup(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", "100")
		_, _ = io.WriteString(w, "only part")
		http.NewResponseController(w).Flush() //nolint:errcheck // then the connection breaks
		panic(http.ErrAbortHandler)
	})
	res, err := http.Get(proxy)
	if err != nil {
		return // broken off before the header: no answer at all
	}
	body, err := io.ReadAll(res.Body)
	_ = res.Body.Close()
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("reading the broken answer: %q, %v; want io.ErrUnexpectedEOF", body, err)
	}
}

func TestFailuresReachTheExchange(t *testing.T) {
	proxy, last := setup(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("X-Refuse", "1")
	})
	res, err := http.Get(proxy)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	_ = res.Body.Close()
	if res.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), "refused by ModifyResponse") || last().failure() == nil {
		t.Errorf("a response ModifyResponse refused answered %d %q", res.StatusCode, body)
	}
}

// HTTP servers refuse control characters in headers; Outgoing does not rely on it.
func TestAnUpgradeToAnInvalidProtocolIsRefused(t *testing.T) {
	in := httptest.NewRequest(http.MethodGet, "/", nil)
	in.Header.Set("Connection", "Upgrade")
	in.Header.Set("Upgrade", "\x01bad")
	var r forward.Request
	if _, err := r.Outgoing(t.Context(), httptest.NewRecorder(), in); err == nil || !strings.Contains(err.Error(), "invalid protocol") {
		t.Errorf("Outgoing = %v, want an invalid protocol error", err)
	}
}

func TestUpgradeBecomesATwoWayCopy(t *testing.T) {
	proxy, last := setup(t, func(w http.ResponseWriter, r *http.Request) {
		proto := r.Header.Get("Upgrade")
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijacking: %v", err)
			return
		}
		defer func() { _ = conn.Close() }()
		if proto == "wrong" {
			proto = "other"
		}
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + proto + "\r\n\r\n")
		_ = brw.Flush()
		_, _ = io.Copy(conn, brw)
	})
	// The client's first bytes travel with the upgrade request itself.
	res, br, c := rawExchange(t, proxy, "GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nearly ")
	defer func() { _ = res.Body.Close() }()
	if res.StatusCode != http.StatusSwitchingProtocols || res.Header.Get("Upgrade") != "echo" {
		t.Fatalf("upgrade answered %d %v", res.StatusCode, res.Header)
	}
	if _, err := io.WriteString(c, "ping"); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len("early ping"))
	if _, err := io.ReadFull(br, got); err != nil || string(got) != "early ping" {
		t.Fatalf("echo = %q, %v; want %q", got, err, "early ping")
	}

	res, _, _ = rawExchange(t, proxy, "GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: wrong\r\n\r\n")
	_ = res.Body.Close()
	if err := last().failure(); res.StatusCode != http.StatusBadGateway || err == nil || !strings.Contains(err.Error(), `"other"`) {
		t.Errorf("an upstream switching to another protocol answered %d, failure %v", res.StatusCode, err)
	}
}

// The server passes an answer without a Content-Type on without one: net/http's server
// would sniff one from the body, and the application said nothing of the kind.
func TestNoContentTypeIsGuessed(t *testing.T) {
	proxy, _ := setup(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header()["Content-Type"] = nil // no Content-Type, and none sniffed by the upstream's server
		_, _ = io.WriteString(w, "<html>plain words</html>")
	})
	res, err := http.Get(proxy)
	if err != nil {
		t.Fatal(err)
	}
	_ = res.Body.Close()
	if ct, ok := res.Header["Content-Type"]; ok {
		t.Errorf("the client got Content-Type %q, which the application did not send", ct)
	}
}

// A whole answer reaches the client before the handler that forwarded it returns: the
// handler's work after Forward (metrics) must not delay it.
func TestTheAnswerLeavesBeforeTheHandlerReturns(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", "5")
		_, _ = io.WriteString(w, "whole")
	}))
	defer upstream.Close()
	u, _ := url.Parse(upstream.URL)
	transport := &http.Transport{}
	defer transport.CloseIdleConnections()
	release := make(chan struct{})
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		x := &exchange{transport: transport, upstream: u}
		out, err := x.fwd.Outgoing(r.Context(), w, r)
		if err != nil {
			t.Error(err)
			return
		}
		x.fwd.Forward(w, r, out, x, &bufpool.Pool{})
		<-release // the handler's own work after its answer
	}))
	defer front.Close()
	defer close(release)
	c, err := net.Dial("tcp", strings.TrimPrefix(front.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: app\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer while the handler still ran: %v", err)
	}
	body, err := io.ReadAll(io.LimitReader(res.Body, 5))
	_ = res.Body.Close()
	if err != nil || string(body) != "whole" {
		t.Fatalf("the answer was %q, %v while the handler still ran", body, err)
	}
}

// h2Request is a request as an HTTP/2 server hands it over.
func h2Request(t *testing.T, h http.Header) *http.Request {
	t.Helper()
	in := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "https://app/x", nil)
	in.Proto, in.ProtoMajor, in.ProtoMinor, in.Header = "HTTP/2.0", 2, 0, h
	return in
}

// With Once, an HTTP/2 request's header passes on without a copy, "TE: trailers" and
// all; an HTTP/1.1 request still loses its hop-by-hop fields, and without Once the
// server's request is left as it was.
func TestOnceForwardsAnHTTP2HeaderWithoutCopying(t *testing.T) {
	w := httptest.NewRecorder()
	fields := func() http.Header {
		return http.Header{"Te": {"trailers"}, "X-Kept": {"a", "b"}, "User-Agent": {"grpc-go/1.79"}, "Content-Type": {"application/grpc"}}
	}
	var once forward.Request
	once.Once = true
	in := h2Request(t, fields())
	out, err := once.Outgoing(t.Context(), w, in)
	if err != nil {
		t.Fatal(err)
	}
	if !equalHeader(out.Header, fields()) {
		t.Errorf("the outgoing header is %v, want %v", out.Header, fields())
	}
	out.Header.Set("X-Added", "1")
	if in.Header.Get("X-Added") == "" {
		t.Error("with Once, the HTTP/2 request's header was copied")
	}

	var fresh forward.Request
	in = h2Request(t, fields())
	out, err = fresh.Outgoing(t.Context(), w, in)
	if err != nil {
		t.Fatal(err)
	}
	out.Header.Set("X-Added", "1")
	if in.Header.Get("X-Added") != "" {
		t.Error("without Once, the server's request's header changed with the outgoing one")
	}

	var h1 forward.Request
	h1.Once = true
	in = httptest.NewRequestWithContext(t.Context(), http.MethodGet, "http://app/x", nil)
	in.Header = http.Header{"Connection": {"X-Hop"}, "X-Hop": {"secret"}, "Keep-Alive": {"5"}, "X-Kept": {"a"}}
	out, err = h1.Outgoing(t.Context(), w, in)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"Connection", "X-Hop", "Keep-Alive"} {
		if _, ok := out.Header[k]; ok {
			t.Errorf("with Once, an HTTP/1.1 request's hop-by-hop field %s passed", k)
		}
	}
}

func equalHeader(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, vv := range a {
		if strings.Join(vv, "\x00") != strings.Join(b[k], "\x00") {
			return false
		}
	}
	return true
}

// A target whose query has whitespace (net/http's HTTP/2 server takes one) is refused:
// written on, it would end an HTTP/1.1 request line early.
func TestATargetWithWhitespaceIsRefused(t *testing.T) {
	for _, raw := range []string{"a=1 HTTP/1.0", "a=\t1", "a=\x7f"} {
		in := h2Request(t, http.Header{})
		in.URL.RawQuery = raw
		var r forward.Request
		if _, err := r.Outgoing(t.Context(), httptest.NewRecorder(), in); err == nil || !strings.Contains(err.Error(), "space or a control character") {
			t.Errorf("query %q: Outgoing = %v, want a refusal", raw, err)
		}
	}
	in := h2Request(t, http.Header{})
	in.URL.RawQuery = "q=a+b&r=%20"
	var r forward.Request
	if _, err := r.Outgoing(t.Context(), httptest.NewRecorder(), in); err != nil {
		t.Errorf("an escaped query: %v", err)
	}
}
