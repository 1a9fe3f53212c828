package h2server

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/braidmesh/braid/proxy/internal/polltest"
)

// countingConn counts the writes on the socket under TLS.
type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// TestResponseIsOneWrite checks the point of the package: a response that fits the
// connection's write buffer leaves in one write on the socket (one TLS record): HEADERS,
// DATA and END_STREAM together. (Measured with Go 1.26: net/http's HTTP/2 server also
// manages one write for the 1 KB response in this test, and needs three for the 6 KB one.)
func TestResponseIsOneWrite(t *testing.T) {
	sizes := map[string]int{"/1k": 1024, "/6k": 6000, "/warm": 256 << 10}
	srv := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = w.Write(bytes.Repeat([]byte("x"), sizes[r.URL.Path]))
	})}
	var writes atomic.Int64
	h := startServer(t, srv, func(c net.Conn) net.Conn { return &countingConn{Conn: c, writes: &writes} })
	client := h.client(t, nil)
	get := func(path string) {
		res := fetch(t, client, getRequest(t, h.url+path))
		if len(res.body) != sizes[path] {
			t.Fatalf("%s: response body of %d bytes, want %d", path, len(res.body), sizes[path])
		}
	}
	// The handshake, the SETTINGS exchange, and TLS's small first records (crypto/tls
	// keeps records small for the first 128 KB of a connection).
	get("/warm")
	for _, path := range []string{"/1k", "/6k"} {
		for i := range 5 {
			before := writes.Load()
			get(path)
			if n := writes.Load() - before; n != 1 {
				t.Fatalf("%s, request %d: the response took %d writes, want 1", path, i, n)
			}
		}
	}
}

// A handler with work left after its answer ends the response with EndResponse: the
// peer gets the whole answer, in one write, while the handler still runs.
func TestEndResponseSendsTheAnswerBeforeTheHandlerReturns(t *testing.T) {
	release := make(chan struct{})
	var afterEnd atomic.Value
	srv := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", "1024")
		_, _ = w.Write(bytes.Repeat([]byte("x"), 1024))
		ender, ok := w.(interface{ EndResponse() error })
		if !ok {
			t.Errorf("the ResponseWriter (%T) has no EndResponse", w)
			return
		}
		if err := ender.EndResponse(); err != nil {
			t.Errorf("EndResponse: %v", err)
		}
		_, err := w.Write([]byte("late"))
		afterEnd.Store(fmt.Sprint(err))
		<-release // the handler's own work after its answer
	})}
	var writes atomic.Int64
	h := startServer(t, srv, func(c net.Conn) net.Conn { return &countingConn{Conn: c, writes: &writes} })
	defer close(release)
	client := h.client(t, nil)
	fetch(t, client, getRequest(t, h.url+"/warm")) // the handshake and SETTINGS
	got := make(chan int, 1)
	before := writes.Load()
	go func() {
		res := fetch(t, client, getRequest(t, h.url+"/"))
		got <- len(res.body)
	}()
	select {
	case n := <-got:
		if n != 1024 {
			t.Errorf("the answer had %d bytes, want 1024", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the answer waited for the handler to return")
	}
	if n := writes.Load() - before; n != 1 {
		t.Errorf("the ended answer took %d writes, want 1", n)
	}
	if err, _ := afterEnd.Load().(string); err == "<nil>" {
		t.Error("a write after EndResponse succeeded")
	}
}

// Answers that end together leave together: they share a write (and a TLS record),
// where an answer alone takes one write (TestResponseIsOneWrite).
func TestAnswersEndingTogetherShareWrites(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1)) // as the proxy runs: on one core
	const n = 8
	var arrived atomic.Int32
	release := make(chan struct{})
	srv := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/warm" {
			arrived.Add(1)
			<-release
		}
		_, _ = w.Write([]byte("answer"))
	})}
	var writes atomic.Int64
	h := startServer(t, srv, func(c net.Conn) net.Conn { return &countingConn{Conn: c, writes: &writes} })
	client := h.client(t, nil)
	fetch(t, client, getRequest(t, h.url+"/warm")) // the handshake and SETTINGS
	var done sync.WaitGroup
	for range n {
		done.Go(func() {
			if res := fetch(t, client, getRequest(t, h.url+"/")); string(res.body) != "answer" {
				t.Errorf("answer %q", res.body)
			}
		})
	}
	polltest.Until(t, func() bool { return arrived.Load() == n })
	time.Sleep(10 * time.Millisecond) // the server's WINDOW_UPDATEs and acknowledgements
	before := writes.Load()
	close(release)
	done.Wait()
	got := writes.Load() - before
	if got >= n {
		t.Errorf("%d answers that ended together took %d writes, want fewer", n, got)
	}
	t.Logf("%d answers that ended together took %d writes", n, got)
}
