package h2client

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/braidmesh/braid/proxy/internal/polltest"
)

// echoHandler answers with the request's method, path, selected headers and body.
var echoHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("X-Method", r.Method)
	w.Header().Set("X-Path", r.URL.RequestURI())
	w.Header().Set("X-Host", r.Host)
	w.Header().Set("X-Proto", r.Proto)
	w.Header().Set("X-Te", r.Header.Get("Te"))
	w.Header().Set("X-Keep", r.Header.Get("Keep-Alive")+r.Header.Get("X-Hop")+r.Header.Get("Upgrade"))
	w.Header().Set("X-Content-Length", fmt.Sprint(r.ContentLength))
	w.Header()["X-Multi"] = r.Header["X-Multi"]
	w.WriteHeader(http.StatusCreated)
	_, _ = w.Write(body)
})

func TestRoundTrip(t *testing.T) {
	servers(t, echoHandler, func(t *testing.T, ts *testServer) {
		tr := ts.transport(t)

		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, ts.url("/a/b?c=d"), strings.NewReader("hello"))
		req.Header.Set("Connection", "X-Hop")
		req.Header.Set("X-Hop", "dropped")
		req.Header.Set("Keep-Alive", "dropped")
		req.Header.Set("Upgrade", "dropped")
		req.Header.Set("Te", "trailers")
		req.Header["X-Multi"] = []string{"1", "2"}
		req.Host = "example.test"
		resp, body := do(t, tr, req) //nolint:bodyclose // closed by the helper
		want := map[string]string{
			"X-Method": "POST", "X-Path": "/a/b?c=d", "X-Host": "example.test", "X-Proto": "HTTP/2.0",
			"X-Te": "trailers", "X-Keep": "", "X-Content-Length": "5",
		}
		for k, v := range want {
			if got := resp.Header.Get(k); got != v {
				t.Errorf("%s = %q, want %q", k, got, v)
			}
		}
		if got := resp.Header["X-Multi"]; len(got) != 2 {
			t.Errorf("X-Multi = %q, want two values", got)
		}
		if resp.StatusCode != http.StatusCreated || resp.Proto != "HTTP/2.0" || resp.ProtoMajor != 2 || resp.Request != req {
			t.Errorf("status %d proto %q %d request %p", resp.StatusCode, resp.Proto, resp.ProtoMajor, resp.Request)
		}
		if body != "hello" || resp.ContentLength != -1 && resp.ContentLength != 5 {
			t.Errorf("body %q, ContentLength %d", body, resp.ContentLength)
		}

		req = mustGet(t, ts.url("/"))
		req.Header.Set("Te", "gzip")
		resp, body = do(t, tr, req) //nolint:bodyclose // closed by the helper
		if body != "" || resp.Header.Get("X-Method") != "GET" || resp.Header.Get("X-Te") != "" {
			t.Errorf("GET: body %q method %q te %q", body, resp.Header.Get("X-Method"), resp.Header.Get("X-Te"))
		}
		if n := ts.accepted.Load(); n != 1 {
			t.Errorf("accepted %d connections, want 1", n)
		}
	})
}

func TestInvalidRequestRefusedBeforeSending(t *testing.T) {
	ts := startNetHTTP(t, echoHandler, nil)
	tr := ts.transport(t)
	for name, mutate := range map[string]func(*http.Request){
		"header name":  func(r *http.Request) { r.Header["Bad Name"] = []string{"x"} },
		"header value": func(r *http.Request) { r.Header.Set("X-Bad", "a\nb") },
		"host":         func(r *http.Request) { r.Host = "bad host\n" },
	} {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, ts.url("/"), nil)
		mutate(req)
		if _, err := tr.RoundTrip(req); err == nil { //nolint:bodyclose // no response expected
			t.Errorf("%s: RoundTrip succeeded", name)
		}
	}
	if n := ts.accepted.Load(); n != 0 {
		t.Errorf("accepted %d connections for invalid requests, want 0", n)
	}
}

func TestLargeBodies(t *testing.T) {
	const size = 4 << 20
	big := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			sum := sha256.New()
			n, err := io.Copy(sum, r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			_, _ = fmt.Fprintf(w, "%d %x", n, sum.Sum(nil))
			return
		}
		_, _ = w.Write(big)
	})
	servers(t, h, func(t *testing.T, ts *testServer) {
		tr := ts.transport(t)
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, ts.url("/"), bytes.NewReader(big))
		_, body := do(t, tr, req) //nolint:bodyclose // closed by the helper
		if want := fmt.Sprintf("%d %x", size, sha256.Sum256(big)); body != want {
			t.Errorf("upload: server saw %q, want %q", body, want)
		}
		_, body = get(t, tr, ts.url("/")) //nolint:bodyclose // closed by the helper
		if body != string(big) {
			t.Errorf("download: got %d bytes, want %d identical", len(body), size)
		}
	})
}

func TestFullDuplexStreaming(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		_ = rc.EnableFullDuplex()
		w.WriteHeader(http.StatusOK)
		_ = rc.Flush()
		sc := bufio.NewScanner(r.Body)
		for sc.Scan() {
			_, _ = fmt.Fprintf(w, "echo %s\n", sc.Text())
			_ = rc.Flush()
		}
	})
	servers(t, h, func(t *testing.T, ts *testServer) {
		tr := ts.transport(t)
		pr, pw := io.Pipe()
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, ts.url("/"), pr)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close() //nolint:errcheck // test
		lines := bufio.NewReader(resp.Body)
		for i := range 5 {
			if _, err := fmt.Fprintf(pw, "line %d\n", i); err != nil {
				t.Fatal(err)
			}
			got, err := lines.ReadString('\n')
			if want := fmt.Sprintf("echo line %d\n", i); err != nil || got != want {
				t.Fatalf("read %q, %v; want %q", got, err, want)
			}
		}
		_ = pw.Close()
		if rest, err := io.ReadAll(lines); err != nil || len(rest) != 0 {
			t.Errorf("after close: %q, %v", rest, err)
		}
	})
}

func TestTrailers(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Trailer", "X-Declared")
		_, _ = w.Write([]byte("body"))
		w.Header().Set("X-Declared", "d")
		w.Header().Set(http.TrailerPrefix+"X-Undeclared", "u")
		w.Header().Set("X-Request-Trailer", r.Trailer.Get("X-Req"))
		w.Header().Set(http.TrailerPrefix+"X-Request-Trailer", r.Trailer.Get("X-Req"))
	})
	servers(t, h, func(t *testing.T, ts *testServer) {
		tr := ts.transport(t)
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, ts.url("/"), io.NopCloser(strings.NewReader("abc")))
		req.Trailer = http.Header{"X-Req": nil}
		req.Body = &trailerSetter{ReadCloser: req.Body, tr: req.Trailer}
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close() //nolint:errcheck // test
		if _, ok := resp.Trailer["X-Declared"]; !ok {
			t.Errorf("declared trailer not pre-created: %v", resp.Trailer)
		}
		if _, err := io.ReadAll(resp.Body); err != nil {
			t.Fatal(err)
		}
		for k, v := range map[string]string{"X-Declared": "d", "X-Undeclared": "u", "X-Request-Trailer": "rt"} {
			if got := resp.Trailer.Get(k); got != v {
				t.Errorf("trailer %s = %q, want %q (all: %v)", k, got, v, resp.Trailer)
			}
		}
	})
}

// trailerSetter fills the request trailer when its body ends, as a streaming caller would.
type trailerSetter struct {
	io.ReadCloser
	tr http.Header
}

func (b *trailerSetter) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if errors.Is(err, io.EOF) {
		b.tr.Set("X-Req", "rt")
	}
	return n, err
}

// blockingHandler blocks until its request's context ends and reports that on ended.
func blockingHandler(started chan<- struct{}, ended chan<- error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/headers" {
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write([]byte("partial"))
			http.NewResponseController(w).Flush() //nolint:errcheck // test
		}
		started <- struct{}{}
		<-r.Context().Done()
		ended <- r.Context().Err()
	}
}

func TestCancellation(t *testing.T) {
	started, ended := make(chan struct{}, 1), make(chan error, 1)
	servers(t, blockingHandler(started, ended), func(t *testing.T, ts *testServer) {
		tr := ts.transport(t)
		t.Run("before headers", func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.url("/"), nil)
			go func() { <-started; cancel() }()
			if _, err := tr.RoundTrip(req); !errors.Is(err, context.Canceled) { //nolint:bodyclose // no response expected
				t.Errorf("RoundTrip error %v, want context.Canceled", err)
			}
			awaitHandlerEnd(t, ended)
		})
		t.Run("after headers", func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.url("/headers"), nil)
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close() //nolint:errcheck // test
			<-started
			cancel()
			if _, err := io.ReadAll(resp.Body); !errors.Is(err, context.Canceled) {
				t.Errorf("body error %v, want context.Canceled", err)
			}
			awaitHandlerEnd(t, ended)
		})
		t.Run("body closed", func(t *testing.T) {
			resp, err := tr.RoundTrip(mustGet(t, ts.url("/headers")))
			if err != nil {
				t.Fatal(err)
			}
			<-started
			if err := resp.Body.Close(); err != nil {
				t.Fatal(err)
			}
			awaitHandlerEnd(t, ended)
			if _, err := resp.Body.Read(make([]byte, 1)); err == nil {
				t.Error("Read after Close succeeded")
			}
		})
	})
}

func mustGet(tb testing.TB, url string) *http.Request {
	req, err := http.NewRequestWithContext(tb.Context(), http.MethodGet, url, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return req
}

func awaitHandlerEnd(t *testing.T, ended <-chan error) {
	t.Helper()
	select {
	case err := <-ended:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("handler context ended with %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("handler's context was not cancelled: the server saw no reset")
	}
}

func TestConcurrentRequestsShareOneConnection(t *testing.T) {
	const n = 100
	barrier := func() http.Handler {
		var arrived sync.WaitGroup
		arrived.Add(n)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/warm" {
				arrived.Done()
				arrived.Wait() // every request is in flight at once
			}
			_, _ = w.Write([]byte("ok"))
		})
	}
	for name, start := range map[string]func(testing.TB, http.Handler) *testServer{
		"net-http": func(tb testing.TB, h http.Handler) *testServer { return startNetHTTP(tb, h, nil) },
		"h2server": startH2,
	} {
		t.Run(name, func(t *testing.T) {
			ts := start(t, barrier())
			tr := ts.transport(t)
			get(t, tr, ts.url("/warm")) //nolint:bodyclose // closed by the helper
			runConcurrently(t, n, func() error { return roundTripErr(t, tr, ts.url("/")) })
			if got := ts.accepted.Load(); got != 1 {
				t.Errorf("accepted %d connections, want 1", got)
			}
		})
	}
}

func runConcurrently(t *testing.T, n int, fn func() error) {
	t.Helper()
	errs := make(chan error, n)
	for range n {
		go func() { errs <- fn() }()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

func TestMoreRequestsThanMaxConcurrentStreams(t *testing.T) {
	const n = 12
	var inFlight, peak atomic.Int32
	release := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		cur := inFlight.Add(1)
		for p := peak.Load(); cur > p && !peak.CompareAndSwap(p, cur); p = peak.Load() {
		}
		if cur == n {
			close(release)
		}
		<-release
		inFlight.Add(-1)
		_, _ = w.Write([]byte("ok"))
	})
	ts := startNetHTTP(t, h, func(s *http.Server) { s.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: 4} })
	tr := ts.transport(t)
	runConcurrently(t, n, func() error { return roundTripErr(t, tr, ts.url("/")) })
	if got := ts.accepted.Load(); got < 3 {
		t.Errorf("accepted %d connections for %d concurrent requests at 4 streams each, want >= 3", got, n)
	}
}

func TestOneWritePerRequest(t *testing.T) {
	answer := bytes.Repeat([]byte("x"), 1024)
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(answer) })
	servers(t, h, func(t *testing.T, ts *testServer) {
		var writes atomic.Int64
		tr := newTransport(t, ts.clientTLS, func(c net.Conn) net.Conn { return countingConn{Conn: c, writes: &writes} })
		get(t, tr, ts.url("/")) //nolint:bodyclose // connection set-up; get closes it
		writes.Store(0)
		const n = 100
		for range n {
			if _, body := get(t, tr, ts.url("/")); len(body) != len(answer) { //nolint:bodyclose // get closes it
				t.Fatalf("body of %d bytes", len(body))
			}
		}
		if got := writes.Load(); got != n {
			t.Errorf("%d writes for %d requests, want exactly one each", got, n)
		}
	})
}

// Requests that start while others are in flight leave together: their HEADERS share
// a write (and a TLS record), where a request alone takes one write (above).
func TestRequestsStartingTogetherShareWrites(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1)) // as the proxy runs: on one core
	const n = 8
	var arrived atomic.Int32
	release := make(chan struct{})
	ts := startNetHTTP(t, http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/warm" {
			arrived.Add(1)
			<-release
		}
	}), nil)
	var writes atomic.Int64
	tr := newTransport(t, ts.clientTLS, func(c net.Conn) net.Conn { return countingConn{Conn: c, writes: &writes} })
	get(t, tr, ts.url("/warm")) //nolint:bodyclose // connection set-up; get closes it
	var done sync.WaitGroup
	done.Go(func() { _ = roundTripErr(t, tr, ts.url("/held")) }) // in flight throughout
	polltest.Until(t, func() bool { return arrived.Load() == 1 })
	writes.Store(0)
	for range n {
		done.Go(func() { _ = roundTripErr(t, tr, ts.url("/burst")) })
	}
	polltest.Until(t, func() bool { return arrived.Load() == 1+n })
	got := writes.Load()
	close(release)
	done.Wait()
	if got >= n {
		t.Errorf("%d requests that started together took %d writes, want fewer", n, got)
	}
	t.Logf("%d requests that started together took %d writes", n, got)
}

func TestIdleConnections(t *testing.T) {
	ts := startNetHTTP(t, echoHandler, nil)
	t.Run("CloseIdleConnections", func(t *testing.T) {
		tr := ts.transport(t)
		before := ts.accepted.Load()
		get(t, tr, ts.url("/")) //nolint:bodyclose // closed by the helper
		tr.CloseIdleConnections()
		get(t, tr, ts.url("/")) //nolint:bodyclose // closed by the helper
		if got := ts.accepted.Load() - before; got != 2 {
			t.Errorf("%d connections, want 2 (a new one after CloseIdleConnections)", got)
		}
	})
	t.Run("IdleConnTimeout", func(t *testing.T) {
		var closed atomic.Int32
		done := make(chan struct{})
		tr := newTransport(t, ts.clientTLS, func(c net.Conn) net.Conn {
			return closeNotifier{Conn: c, closed: &closed, done: done}
		})
		tr.IdleConnTimeout = 50 * time.Millisecond
		get(t, tr, ts.url("/")) //nolint:bodyclose // closed by the helper
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("idle connection was not closed")
		}
	})
}

// closeNotifier closes done when the connection is closed.
type closeNotifier struct {
	net.Conn
	closed *atomic.Int32
	done   chan struct{}
}

func (c closeNotifier) Close() error {
	if c.closed.Add(1) == 1 {
		close(c.done)
	}
	return c.Conn.Close()
}

// dialError is what a failing DialTLS returns.
type dialError struct{ addr string }

func (e *dialError) Error() string { return "cannot dial " + e.addr }

func TestDialErrorsAndSharedDials(t *testing.T) {
	ts := startNetHTTP(t, echoHandler, nil)
	t.Run("error returned", func(t *testing.T) {
		tr := &Transport{DialTLS: func(_ context.Context, addr string) (net.Conn, error) { return nil, &dialError{addr} }}
		_, err := tr.RoundTrip(mustGet(t, ts.url("/"))) //nolint:bodyclose // no response expected
		var de *dialError
		if !errors.As(err, &de) {
			t.Errorf("error %v, want the dial error", err)
		}
	})
	t.Run("one dial for concurrent first requests", func(t *testing.T) {
		var dials atomic.Int32
		tr := ts.transport(t)
		dial := tr.DialTLS
		tr.DialTLS = func(ctx context.Context, addr string) (net.Conn, error) {
			dials.Add(1)
			return dial(ctx, addr)
		}
		runConcurrently(t, 20, func() error { return roundTripErr(t, tr, ts.url("/")) })
		if n := dials.Load(); n != 1 {
			t.Errorf("%d dials, want 1", n)
		}
	})
}

var errBoom = errors.New("boom")

// failingBody returns some bytes, then an error.
type failingBody struct{ sent bool }

func (b *failingBody) Read(p []byte) (int, error) {
	if !b.sent {
		b.sent = true
		return copy(p, "some"), nil
	}
	return 0, errBoom
}

func (*failingBody) Close() error { return nil }

func TestRequestBodyErrorResetsStream(t *testing.T) {
	serverErr := make(chan error, 1)
	h := http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		serverErr <- err
	})
	servers(t, h, func(t *testing.T, ts *testServer) {
		tr := ts.transport(t)
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, ts.url("/"), &failingBody{})
		if _, err := tr.RoundTrip(req); !errors.Is(err, errBoom) { //nolint:bodyclose // no response expected
			t.Errorf("RoundTrip error %v, want the body's error", err)
		}
		select {
		case err := <-serverErr:
			if err == nil {
				t.Error("server read the whole body: the stream was not reset")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("server handler did not finish")
		}
	})
}

func TestBodilessPostSendsContentLengthZero(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = fmt.Fprintf(w, "%q", r.Header["Content-Length"])
	})
	servers(t, h, func(t *testing.T, ts *testServer) {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, ts.url("/"), http.NoBody)
		_, body := do(t, ts.transport(t), req) //nolint:bodyclose // closed by the helper
		if body != `["0"]` {
			t.Errorf("server saw content-length %s, want [\"0\"]", body)
		}
	})
}

// TestOptionsAsterisk runs against h2server only: net/http's server answers OPTIONS *
// itself, without the handler.
func TestOptionsAsterisk(t *testing.T) {
	ts := startH2(t, echoHandler)
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodOptions, ts.url(""), nil)
	req.URL.Opaque = "*"
	resp, _ := do(t, ts.transport(t), req) //nolint:bodyclose // closed by the helper
	if got := resp.Header.Get("X-Path"); got != "*" {
		t.Errorf("server saw path %q, want *", got)
	}
}
