package h1client_test

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
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/braidmesh/braid/proxy/h1client"
	"github.com/braidmesh/braid/proxy/internal/polltest"
	"github.com/braidmesh/braid/proxy/sockio"
)

// app is an application behind the transport that counts the connections it accepted.
type app struct {
	*httptest.Server
	conns atomic.Int64
}

func startApp(t *testing.T, h http.HandlerFunc) *app {
	t.Helper()
	a := &app{Server: httptest.NewUnstartedServer(h)}
	a.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			a.conns.Add(1)
		}
	}
	a.Start()
	t.Cleanup(a.Close)
	return a
}

// fallback counts the requests it carries, over net/http's Transport.
type fallback struct {
	http.Transport
	n atomic.Int64
}

func (f *fallback) RoundTrip(r *http.Request) (*http.Response, error) {
	f.n.Add(1)
	return f.Transport.RoundTrip(r)
}

func newTransport(t *testing.T) (*h1client.Transport, *fallback) {
	t.Helper()
	fb := &fallback{}
	tr := &h1client.Transport{DialContext: sockio.DialContext(&net.Dialer{Timeout: time.Second}), Fallback: fb}
	t.Cleanup(tr.CloseIdleConnections)
	return tr, fb
}

// answer is what a test reads of a response, whose body is read and closed.
type answer struct {
	StatusCode    int
	ContentLength int64
	Trailer       http.Header
}

func get(t *testing.T, tr http.RoundTripper, url string) (answer, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return roundTrip(t, tr, req)
}

func roundTrip(t *testing.T, tr http.RoundTripper, req *http.Request) (answer, string) {
	t.Helper()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		t.Fatalf("reading the answer to %s %s: %v", req.Method, req.URL, err)
	}
	return answer{resp.StatusCode, resp.ContentLength, resp.Trailer}, string(body)
}

// Answers of every framing come back whole, and the connection serves the next request.
func TestOneConnectionServesEveryFraming(t *testing.T) {
	a := startApp(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/length":
			w.Header().Set("Content-Length", "5")
			_, _ = io.WriteString(w, "hello")
		case "/chunked":
			w.Header().Set("Trailer", "X-Sum")
			_, _ = io.WriteString(w, "part one, ")
			http.NewResponseController(w).Flush() //nolint:errcheck // chunked from here
			_, _ = io.WriteString(w, "part two")
			w.Header().Set("X-Sum", "42")
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		default:
			_, _ = io.WriteString(w, r.Method+" "+r.Host+" "+r.URL.RequestURI())
		}
	})
	tr, fb := newTransport(t)
	for range 3 {
		if _, body := get(t, tr, a.URL+"/length"); body != "hello" {
			t.Errorf("/length = %q", body)
		}
		resp, body := get(t, tr, a.URL+"/chunked")
		if body != "part one, part two" || resp.Trailer.Get("X-Sum") != "42" {
			t.Errorf("/chunked = %q, trailers %v", body, resp.Trailer)
		}
		if resp, body := get(t, tr, a.URL+"/empty"); resp.StatusCode != http.StatusNoContent || body != "" {
			t.Errorf("/empty = %d %q", resp.StatusCode, body)
		}
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodHead, a.URL+"/length", nil)
		if resp, body := roundTrip(t, tr, req); resp.ContentLength != 5 || body != "" {
			t.Errorf("HEAD /length = %d bytes announced, body %q", resp.ContentLength, body)
		}
		req, _ = http.NewRequestWithContext(t.Context(), http.MethodGet, a.URL+"/q?a=1;b", nil)
		req.Host = "reviews.shop"
		if _, body := roundTrip(t, tr, req); body != "GET reviews.shop /q?a=1;b" {
			t.Errorf("the application saw %q", body)
		}
	}
	if n := a.conns.Load(); n != 1 {
		t.Errorf("15 requests one after another took %d connections, want 1", n)
	}
	if n := fb.n.Load(); n != 0 {
		t.Errorf("%d requests without a body went to the fallback", n)
	}
}

// A request that cannot be written (a field value that would split its header) fails
// before taking a connection: the kept-alive one serves the next request, and the
// application never sees the field.
func TestAnUnsendableRequestFailsAndKeepsTheConnection(t *testing.T) {
	var seen atomic.Int64
	a := startApp(t, func(w http.ResponseWriter, r *http.Request) {
		if len(r.Header["X-Injected"]) > 0 {
			seen.Add(1)
		}
		_, _ = io.WriteString(w, "ok")
	})
	tr, fb := newTransport(t)
	get(t, tr, a.URL)
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, a.URL, nil)
	req.Header["X-A"] = []string{"1\r\nX-Injected: 1"}
	if resp, err := tr.RoundTrip(req); err == nil {
		_ = resp.Body.Close()
		t.Fatal("a request with CR LF in a field value was sent")
	} else if !strings.Contains(err.Error(), `invalid value for header field "X-A"`) {
		t.Errorf("the error %q does not name the field", err)
	}
	get(t, tr, a.URL)
	if n := a.conns.Load(); n != 1 {
		t.Errorf("the application accepted %d connections, want the one kept alive", n)
	}
	if seen.Load() != 0 || fb.n.Load() != 0 {
		t.Errorf("the field reached the application (%d) or the fallback carried the request (%d)", seen.Load(), fb.n.Load())
	}
}

// Requests with a body, upgrades and Expect go to the fallback.
func TestRequestsWithABodyGoToTheFallback(t *testing.T) {
	a := startApp(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		_, _ = w.Write(b)
	})
	tr, fb := newTransport(t)
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, a.URL, strings.NewReader("payload"))
	if _, body := roundTrip(t, tr, req); body != "payload" {
		t.Errorf("the body came back as %q", body)
	}
	req, _ = http.NewRequestWithContext(t.Context(), http.MethodGet, a.URL, nil)
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Connection", "Upgrade")
	roundTrip(t, tr, req)
	if n := fb.n.Load(); n != 2 {
		t.Errorf("the fallback carried %d requests, want the one with a body and the upgrade", n)
	}
	req, _ = http.NewRequestWithContext(t.Context(), http.MethodDelete, a.URL, nil)
	roundTrip(t, tr, req)
	if n := fb.n.Load(); n != 2 {
		t.Errorf("a DELETE without a body went to the fallback")
	}
}

func TestInformationalAnswersReachTheTrace(t *testing.T) {
	a := startApp(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Link", "</a.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		_, _ = io.WriteString(w, "final")
	})
	tr, _ := newTransport(t)
	var got []string
	ctx := httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		got = append(got, http.StatusText(code)+" "+h.Get("Link"))
		return nil
	}})
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, a.URL, nil)
	if _, body := roundTrip(t, tr, req); body != "final" || len(got) != 1 || got[0] != "Early Hints </a.css>; rel=preload" {
		t.Errorf("body %q, informational answers %q", body, got)
	}
}

// An answer whose Connection header holds "close" keeps that header, which ReadResponse
// removes: the fields it lists are the connection's, and the proxy must see the list to
// remove them. The head arrives in pieces, after an informational answer, and larger
// than a buffer, so it is read again from more than one read.
func TestAClosingAnswerKeepsItsConnectionHeader(t *testing.T) {
	long := strings.Repeat("v", 5000)
	url, _ := rawApp(t, func(c net.Conn, br *bufio.Reader, _ int64) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		for _, piece := range []string{
			"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nX-Long: " + long[:100],
			long[100:] + "\r\nConnection: X-Hop,",
			" close\r\nX-Hop: 1\r\nContent-Length: 2\r\n\r\nok",
		} {
			_, _ = io.WriteString(c, piece)
			time.Sleep(10 * time.Millisecond)
		}
	})
	tr, _ := newTransport(t)
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if got := resp.Header.Values("Connection"); len(got) != 1 || got[0] != "X-Hop, close" || !resp.Close {
		t.Errorf("Connection %q (Close %v), want the application's \"X-Hop, close\"", got, resp.Close)
	}
	if string(body) != "ok" || resp.Header.Get("X-Long") != long || resp.Header.Get("X-Hop") != "1" {
		t.Errorf("body %q, X-Hop %q, X-Long of %d bytes", body, resp.Header.Get("X-Hop"), len(resp.Header.Get("X-Long")))
	}
}

// A head larger than a recorder keeps, after an informational answer: the answer comes
// through whole, with its header as net/http read it (the Connection header is then
// lost, as before h1client kept heads).
func TestAClosingAnswerPastTheRecordingLimit(t *testing.T) {
	long := strings.Repeat("v", 100<<10)
	url, _ := rawApp(t, func(c net.Conn, br *bufio.Reader, _ int64) {
		if _, err := http.ReadRequest(br); err == nil {
			_, _ = io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"+
				"HTTP/1.1 200 OK\r\nX-Long: "+long+"\r\nConnection: X-Hop, close\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	tr, _ := newTransport(t)
	if a, body := get(t, tr, url); a.StatusCode != http.StatusOK || body != "ok" {
		t.Errorf("status %d, body %q", a.StatusCode, body)
	}
}

// The same for a request with a body, which net/http's Transport carries: its
// connections come from FallbackDialer, so the Connection header comes back too.
func TestAClosingAnswerToAFallbackRequestKeepsItsConnectionHeader(t *testing.T) {
	url, _ := rawApp(t, func(c net.Conn, br *bufio.Reader, _ int64) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, req.Body)
		_, _ = io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
		time.Sleep(10 * time.Millisecond)
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: X-Hop, close\r\nX-Hop: 1\r\nContent-Length: 2\r\n\r\nok")
	})
	fb := &fallback{}
	fb.DialContext = h1client.FallbackDialer(sockio.DialContext(&net.Dialer{Timeout: time.Second}))
	tr := &h1client.Transport{DialContext: sockio.DialContext(&net.Dialer{Timeout: time.Second}), Fallback: fb}
	t.Cleanup(tr.CloseIdleConnections)
	for i := range 2 { // a new connection each time: the application closes it
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, url, strings.NewReader("body"))
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if got := resp.Header.Values("Connection"); len(got) != 1 || got[0] != "X-Hop, close" || string(body) != "ok" || fb.n.Load() != int64(i+1) {
			t.Errorf("request %d: Connection %q, body %q, %d requests through the fallback", i, got, body, fb.n.Load())
		}
	}
}

// rawApp serves each connection with serve, on a plain TCP listener.
func rawApp(t *testing.T, serve func(c net.Conn, br *bufio.Reader, n int64)) (url string, accepted *atomic.Int64) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted = &atomic.Int64{}
	var conns sync.WaitGroup
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			n := accepted.Add(1)
			conns.Go(func() {
				defer func() { _ = c.Close() }()
				serve(c, bufio.NewReader(c), n)
			})
		}
	}()
	t.Cleanup(func() {
		_ = lis.Close()
		<-done // no connection is added once the accepting loop ended
		conns.Wait()
	})
	return "http://" + lis.Addr().String(), accepted
}

const okAnswer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

// An application that closes kept-alive connections after a while: the next request finds
// the closed connection before it writes to it, and takes a new one. (A POST, which would
// not be sent again after meeting a closed connection.)
func TestAClosedIdleConnectionIsNotUsed(t *testing.T) {
	url, accepted := rawApp(t, func(c net.Conn, br *bufio.Reader, _ int64) {
		if _, err := http.ReadRequest(br); err == nil {
			_, _ = io.WriteString(c, okAnswer)
		}
		// and close, without saying so in the answer
	})
	tr, _ := newTransport(t)
	for i := range 3 {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, url, nil)
		if _, body := roundTrip(t, tr, req); body != "ok" {
			t.Fatalf("request %d: %q", i, body)
		}
		polltest.Until(t, func() bool { return accepted.Load() == int64(i+1) })
		time.Sleep(20 * time.Millisecond) // the FIN crosses loopback
	}
	if n := accepted.Load(); n != 3 {
		t.Errorf("3 requests took %d connections", n)
	}
}

// The application closes a kept-alive connection just as a request goes out on it: a GET
// is sent again on a new connection; a POST, which the application may have processed,
// is not (TestANonIdempotentRequestIsNotSentTwice).
func TestARequestMeetingAClosingConnection(t *testing.T) {
	url, accepted := rawApp(t, func(c net.Conn, br *bufio.Reader, n int64) {
		for served := 0; ; served++ {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			if n == 1 && served == 1 {
				return // read the second request, answer nothing, close
			}
			_, _ = io.WriteString(c, okAnswer)
		}
	})
	tr, _ := newTransport(t)
	get(t, tr, url) // the connection is now in the pool
	if _, body := get(t, tr, url); body != "ok" {
		t.Errorf("the GET answered %q", body)
	}
	if n := accepted.Load(); n != 2 {
		t.Fatalf("the GET took %d connections in all, want 2 (sent again on a new one)", n)
	}
}

func TestANonIdempotentRequestIsNotSentTwice(t *testing.T) {
	var posts atomic.Int64
	url, _ := rawApp(t, func(c net.Conn, br *bufio.Reader, n int64) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.Method == http.MethodPost {
				posts.Add(1)
				if n == 1 {
					return // processed, then the connection closed before the answer
				}
			}
			_, _ = io.WriteString(c, okAnswer)
		}
	})
	tr, _ := newTransport(t)
	get(t, tr, url)
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, url, nil)
	if resp, err := tr.RoundTrip(req); err == nil {
		_ = resp.Body.Close()
		t.Fatal("a POST whose connection closed without an answer succeeded")
	}
	if n := posts.Load(); n != 1 {
		t.Errorf("the application got the POST %d times, want once", n)
	}
}

// A cancelled request stops waiting for its answer, and for its body.
func TestCancellationUnblocksTheRequest(t *testing.T) {
	release := make(chan struct{})
	a := startApp(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/body" {
			w.Header().Set("Content-Length", "10")
			_, _ = io.WriteString(w, "12345")
			http.NewResponseController(w).Flush() //nolint:errcheck // then hold the rest
		}
		<-release
	})
	t.Cleanup(func() { close(release) }) // before the app closes: cleanups run last first
	tr, _ := newTransport(t)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, a.URL+"/head", nil)
	if resp, err := tr.RoundTrip(req); err == nil {
		_ = resp.Body.Close()
		t.Fatal("a request whose context ended got an answer")
	}
	ctx2, cancel2 := context.WithCancel(t.Context())
	req, _ = http.NewRequestWithContext(ctx2, http.MethodGet, a.URL+"/body", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	time.AfterFunc(50*time.Millisecond, cancel2)
	if _, err := io.ReadAll(resp.Body); !errors.Is(err, context.Canceled) {
		t.Fatalf("reading a body whose request was cancelled: %v, want context.Canceled", err)
	}
}

func TestAHeaderLargerThanTheLimitIsRefused(t *testing.T) {
	a := startApp(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("X-Big", strings.Repeat("x", 8<<10))
	})
	tr, _ := newTransport(t)
	tr.MaxResponseHeaderBytes = 4 << 10
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, a.URL, nil)
	if resp, err := tr.RoundTrip(req); err == nil || !strings.Contains(err.Error(), "larger than the limit") {
		if resp != nil {
			_ = resp.Body.Close()
		}
		t.Fatalf("an 8 KB header under a 4 KB limit: %v", err)
	}
}

// A body closed before its end, or broken off by the application, takes its connection
// with it; one read to the end leaves it for the next request.
func TestOnlyWholeAnswersLeaveTheirConnection(t *testing.T) {
	a := startApp(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/broken" {
			w.Header().Set("Content-Length", "100")
			_, _ = io.WriteString(w, "short")
			http.NewResponseController(w).Flush() //nolint:errcheck // then break off
			panic(http.ErrAbortHandler)
		}
		_, _ = io.WriteString(w, strings.Repeat("x", 64<<10))
	})
	tr, _ := newTransport(t)
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, a.URL+"/big", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = resp.Body.Read(make([]byte, 10))
	_ = resp.Body.Close()
	get(t, tr, a.URL+"/big")
	if n := a.conns.Load(); n != 2 {
		t.Errorf("after a body closed early, the next request took %d connections in all, want 2", n)
	}
	req, _ = http.NewRequestWithContext(t.Context(), http.MethodGet, a.URL+"/broken", nil)
	resp, err = tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("reading a broken-off body: %v, want io.ErrUnexpectedEOF", err)
	}
}

// Connections idle for longer than IdleConnTimeout are closed, not used.
func TestIdleConnectionsExpire(t *testing.T) {
	a := startApp(t, func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	tr, _ := newTransport(t)
	var mu sync.Mutex
	now := time.Unix(1000, 0)
	tr.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); defer mu.Unlock(); now = now.Add(d) }
	tr.IdleConnTimeout = time.Minute
	get(t, tr, a.URL)
	advance(59 * time.Second)
	get(t, tr, a.URL)
	if n := a.conns.Load(); n != 1 {
		t.Fatalf("a connection idle for 59 s was not reused (%d connections)", n)
	}
	advance(61 * time.Second)
	get(t, tr, a.URL)
	if n := a.conns.Load(); n != 2 {
		t.Errorf("a connection idle for 61 s was reused (%d connections)", n)
	}
}

// A request whose client went away fails with context.Canceled, as net/http's Transport
// does: the proxies tell it from a failing application by that.
func TestACancelledRequestSaysSo(t *testing.T) {
	arrived := make(chan struct{})
	a := startApp(t, func(_ http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-r.Context().Done()
	})
	tr, _ := newTransport(t)
	ctx, cancel := context.WithCancel(t.Context())
	go func() { <-arrived; cancel() }()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, a.URL, nil)
	resp, err := tr.RoundTrip(req)
	if err == nil {
		_ = resp.Body.Close()
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("RoundTrip = %v, want context.Canceled", err)
	}
}
