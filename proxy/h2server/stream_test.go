package h2server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
)

// bigBody is 4 MB of varied bytes.
func bigBody() []byte {
	b := make([]byte, 4<<20)
	for i := range b {
		b[i] = byte(i*7 + i>>12)
	}
	return b
}

func TestLargeBodiesBothWays(t *testing.T) {
	body := bigBody()
	sum := sha256.Sum256(body)
	for _, tc := range []struct {
		name   string
		srv    *Server
		client *http.HTTP2Config
	}{
		{name: "default windows", srv: &Server{}},
		{
			name:   "tiny windows",
			srv:    &Server{InitialStreamWindow: 1024, InitialConnWindow: 1024},
			client: &http.HTTP2Config{MaxReceiveBufferPerStream: 1024, MaxReceiveBufferPerConnection: 65535},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := tc.srv
			srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodPost {
					h := sha256.New()
					n, err := io.Copy(h, r.Body)
					if err != nil {
						t.Errorf("reading the request body after %d bytes: %v", n, err)
					}
					_, _ = fmt.Fprintf(w, "%d %x", n, h.Sum(nil))
					return
				}
				_, _ = w.Write(body)
			})
			h := startServer(t, srv, nil)
			client := h.client(t, tc.client)
			req, _ := http.NewRequest(http.MethodPost, h.url+"/up", bytes.NewReader(body))
			check(t, fetch(t, client, req), http.StatusOK, nil, fmt.Sprintf("%d %x", len(body), sum))

			req, _ = http.NewRequest(http.MethodGet, h.url+"/down", nil)
			res := fetch(t, client, req)
			if !bytes.Equal(res.body, body) {
				t.Fatalf("response body of %d bytes differs from the %d sent", len(res.body), len(body))
			}
			if res.header.Get("Content-Length") != "" {
				t.Errorf("a streamed response got Content-Length %s", res.header.Get("Content-Length"))
			}
		})
	}
}

func TestFullDuplexStreaming(t *testing.T) {
	srv := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		if err := rc.Flush(); err != nil {
			t.Errorf("flushing the headers: %v", err)
		}
		sc := bufio.NewScanner(r.Body)
		for sc.Scan() {
			_, _ = fmt.Fprintf(w, "echo %s\n", sc.Text())
			if err := rc.Flush(); err != nil {
				t.Errorf("flushing: %v", err)
				return
			}
		}
	})}
	h := startServer(t, srv, nil)
	client := h.client(t, nil)
	pr, pw := io.Pipe()
	defer pw.CloseWithError(io.ErrUnexpectedEOF)
	req, _ := http.NewRequest(http.MethodPost, h.url+"/duplex", pr)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close() //nolint:errcheck // read whole below
	lines := bufio.NewReader(resp.Body)
	for i := range 5 {
		if _, err := fmt.Fprintf(pw, "line %d\n", i); err != nil {
			t.Fatal(err)
		}
		got, err := lines.ReadString('\n')
		if err != nil {
			t.Fatalf("reading echo %d: %v", i, err)
		}
		if want := fmt.Sprintf("echo line %d\n", i); got != want {
			t.Fatalf("echo %q, want %q", got, want)
		}
	}
	_ = pw.Close()
	if rest, err := io.ReadAll(resp.Body); err != nil || len(rest) != 0 {
		t.Fatalf("after the last echo: %q, %v", rest, err)
	}
}

func TestTrailers(t *testing.T) {
	srv := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("reading the body: %v", err)
		}
		w.Header().Set("Trailer", "X-Declared")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(body)
		w.Header().Set("X-Declared", "declared-value")
		w.Header().Set(http.TrailerPrefix+"X-Prefixed", "prefixed-value")
		w.Header().Set("X-Request-Trailer", r.Trailer.Get("X-Req-Trailer")) // not a trailer: ignored
		w.Header().Set(http.TrailerPrefix+"X-Echo-Trailer", r.Trailer.Get("X-Req-Trailer"))
	})}
	h := startServer(t, srv, nil)
	client := h.client(t, nil)
	req, _ := http.NewRequest(http.MethodPost, h.url+"/trailers", io.NopCloser(strings.NewReader("abc")))
	req.Trailer = http.Header{"X-Req-Trailer": nil}
	req.Body = &trailerBody{r: strings.NewReader("abc"), set: func() { req.Trailer.Set("X-Req-Trailer", "from-client") }}
	res := fetch(t, client, req)
	check(t, res, http.StatusOK, nil, "abc")
	want := map[string]string{"X-Declared": "declared-value", "X-Prefixed": "prefixed-value", "X-Echo-Trailer": "from-client"}
	for k, v := range want {
		if got := res.trailer.Get(k); got != v {
			t.Errorf("trailer %s = %q, want %q (trailers %v)", k, got, v, res.trailer)
		}
	}
	if res.header.Get("X-Declared") != "" {
		t.Errorf("the declared trailer was sent in the headers too")
	}
}

// trailerBody sets the request trailers when its body ends, as a gRPC client would.
type trailerBody struct {
	r   io.Reader
	set func()
}

func (b *trailerBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if errors.Is(err, io.EOF) && b.set != nil {
		b.set()
		b.set = nil
	}
	return n, err
}

func (b *trailerBody) Close() error { return nil }

func TestClientCancelCancelsHandlerContext(t *testing.T) {
	started, cancelled := make(chan struct{}), make(chan error, 1)
	srv := &Server{Handler: http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		close(started)
		select {
		case <-r.Context().Done():
			cancelled <- r.Context().Err()
		case <-time.After(10 * time.Second):
			cancelled <- errors.New("the handler's context was not cancelled")
		}
	})}
	h := startServer(t, srv, nil)
	client := h.client(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.url+"/wait", nil)
	errc := make(chan error, 1)
	go func() {
		resp, err := client.Do(req)
		if err == nil {
			_ = resp.Body.Close()
		}
		errc <- err
	}()
	<-started
	cancel()
	if err := <-cancelled; !errors.Is(err, context.Canceled) {
		t.Fatalf("handler context: %v", err)
	}
	if err := <-errc; err == nil {
		t.Fatal("the cancelled request succeeded")
	}
}

func TestHandlerPanicsResetTheStreamOnly(t *testing.T) {
	var logged sync.Map
	slowGo := make(chan struct{})
	srv := &Server{
		Log: funcr.New(func(_, args string) { logged.Store(args, true) }, funcr.Options{}),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch r.URL.Path {
			case "/abort":
				_, _ = io.WriteString(w, "partial")
				w.(http.Flusher).Flush()
				panic(http.ErrAbortHandler)
			case "/panic":
				panic("boom")
			case "/slow":
				<-slowGo
				_, _ = io.WriteString(w, "slow done")
			}
		}),
	}
	h := startServer(t, srv, nil)
	client := h.client(t, nil)
	// A request that waits on the same connection while others fail.
	fetch(t, client, getRequest(t, h.url+"/warm"))
	slow := make(chan string, 1)
	go func() {
		resp, err := client.Get(h.url + "/slow")
		if err != nil {
			slow <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		slow <- string(b)
	}()

	resp, err := client.Get(h.url + "/abort")
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		_ = resp.Body.Close()
	}
	if err == nil {
		t.Fatal("an aborted response read without error")
	}
	if resp, err := client.Get(h.url + "/panic"); err == nil {
		_ = resp.Body.Close()
		t.Fatal("a panicking handler's request succeeded")
	}
	close(slowGo)
	if got := <-slow; got != "slow done" {
		t.Fatalf("the other stream on the connection: %q", got)
	}
	if h.conns.Load() != 1 {
		t.Errorf("%d connections, want 1", h.conns.Load())
	}
	var panics, aborts int
	logged.Range(func(k, _ any) bool {
		s := k.(string)
		if strings.Contains(s, "boom") && strings.Contains(s, "stack") {
			panics++
		}
		if strings.Contains(s, "abort handler") {
			aborts++
		}
		return true
	})
	if panics != 1 || aborts != 0 {
		t.Errorf("logged %d panics with their stack (want 1) and %d aborts (want 0)", panics, aborts)
	}
}

func getRequest(t *testing.T, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func TestHundredConcurrentStreamsOnOneConnection(t *testing.T) {
	const n = 100
	var arrived sync.WaitGroup
	arrived.Add(n)
	all := make(chan struct{})
	go func() { arrived.Wait(); close(all) }()
	srv := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/warm" {
			return
		}
		arrived.Done()
		select {
		case <-all: // every request is in a handler at once
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, r.URL.Path)
	})}
	h := startServer(t, srv, nil)
	client := h.client(t, nil)
	fetch(t, client, getRequest(t, h.url+"/warm"))
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			path := fmt.Sprintf("/r%d", i)
			resp, err := client.Get(h.url + path)
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close() //nolint:errcheck // read whole below
			b, err := io.ReadAll(resp.Body)
			if err == nil && string(b) != path {
				err = fmt.Errorf("request %s got %q", path, b)
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if h.conns.Load() != 1 {
		t.Errorf("%d connections, want 1", h.conns.Load())
	}
}
