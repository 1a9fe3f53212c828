package h2server

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// TestStalledStreamDoesNotHoldOthers: a response waiting for its stream window (the client
// does not read it) must not keep other responses on the connection from being sent.
func TestStalledStreamDoesNotHoldOthers(t *testing.T) {
	big := bytes.Repeat([]byte("b"), 3000) // buffered, then sent when the handler returns
	srv := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/big" {
			_, _ = w.Write(big)
			return
		}
		_, _ = io.WriteString(w, "small")
	})}
	h := startServer(t, srv, nil)
	client := h.client(t, &http.HTTP2Config{MaxReceiveBufferPerStream: 1024})
	stalled, err := client.Get(h.url + "/big")
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Body.Close() //nolint:errcheck // read whole below
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.url+"/small", nil)
	check(t, fetch(t, client, req), http.StatusOK, nil, "small")
	got, err := io.ReadAll(stalled.Body)
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("the stalled response: %d bytes, %v", len(got), err)
	}
}

// TestHandlersRunOnReusedGoroutines: sequential streams reuse the goroutine that served
// the one before (so its grown stack serves again) rather than one goroutine each.
func TestHandlersRunOnReusedGoroutines(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]bool{}
	srv := &Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		buf := make([]byte, 64)
		id := strings.Fields(string(buf[:runtime.Stack(buf, false)]))[1] // "goroutine N [running]:"
		mu.Lock()
		seen[id] = true
		mu.Unlock()
	})}
	h := startServer(t, srv, nil)
	client := h.client(t, nil)
	const n = 50
	for range n {
		fetch(t, client, getRequest(t, h.url+"/"))
	}
	// A worker may still be on its way back when the next stream arrives: then a second
	// one starts, and the two take turns.
	if len(seen) > 3 {
		t.Fatalf("%d sequential streams ran on %d goroutines", n, len(seen))
	}
}

func TestInformationalResponses(t *testing.T) {
	srv := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.WriteHeader(http.StatusSwitchingProtocols) // refused: no upgrade over HTTP/2
		w.Header().Del("Link")
		w.WriteHeader(http.StatusAccepted)
		w.WriteHeader(http.StatusTeapot) // a second final status is ignored
		_, _ = io.WriteString(w, "final")
	})}
	h := startServer(t, srv, nil)
	client := h.client(t, nil)
	var mu sync.Mutex
	var infos []int
	var link string
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, hdr textproto.MIMEHeader) error {
		mu.Lock()
		defer mu.Unlock()
		infos = append(infos, code)
		link = hdr.Get("Link")
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, h.url+"/", nil)
	check(t, fetch(t, client, req), http.StatusAccepted, map[string]string{"Link": ""}, "final")
	mu.Lock()
	defer mu.Unlock()
	if len(infos) != 1 || infos[0] != http.StatusEarlyHints || link != "</style.css>; rel=preload" {
		t.Fatalf("informational responses %v with Link %q, want one 103 with the Link", infos, link)
	}
}

func TestBodyShorterThanContentLengthResetsStream(t *testing.T) {
	srv := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", "10")
		_, _ = io.WriteString(w, "abc")
	})}
	h := startServer(t, srv, nil)
	client := h.client(t, nil)
	resp, err := client.Get(h.url + "/")
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		_ = resp.Body.Close()
	}
	if err == nil {
		t.Fatal("a response shorter than its Content-Length read without error")
	}
}

// TestLargeResponseHeaders: a header block beyond the peer's frame size goes out as
// HEADERS and CONTINUATION frames.
func TestLargeResponseHeaders(t *testing.T) {
	big := strings.Repeat("v", 40<<10)
	srv := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("X-Big", big)
		_, _ = io.WriteString(w, "ok")
	})}
	h := startServer(t, srv, nil)
	check(t, fetch(t, h.client(t, nil), getRequest(t, h.url+"/")), http.StatusOK, map[string]string{"X-Big": big}, "ok")
}

// TestMixedTrafficWithCancellations runs uploads and downloads over small windows on one
// connection while some requests are cancelled midway: the others must complete, and
// the server must then shut down cleanly (the harness checks).
func TestMixedTrafficWithCancellations(t *testing.T) {
	payload := bytes.Repeat([]byte("0123456789abcdef"), 4<<10) // 64 KB
	srv := &Server{InitialStreamWindow: 4096, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(w, r.Body)
	})}
	h := startServer(t, srv, nil)
	client := h.client(t, &http.HTTP2Config{MaxReceiveBufferPerStream: 4096})
	fetch(t, client, getRequest(t, h.url+"/warm"))
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 16 {
		wg.Go(func() {
			for i := range 8 {
				ctx, cancel := context.WithCancel(context.Background())
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, h.url+"/echo", bytes.NewReader(payload))
				resp, err := client.Do(req)
				if err == nil {
					var got []byte
					if (g+i)%3 == 0 {
						_, _ = io.ReadFull(resp.Body, make([]byte, 1000))
						cancel() // walk away midway
					} else if got, err = io.ReadAll(resp.Body); err == nil && !bytes.Equal(got, payload) {
						err = io.ErrUnexpectedEOF
					}
					_ = resp.Body.Close()
				}
				if err != nil && ctx.Err() == nil {
					errs <- err
				}
				cancel()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	check(t, fetch(t, client, getRequest(t, h.url+"/after")), http.StatusOK, nil, "")
}

// TestStalledPeerEndsTheConnectionAfterWriteTimeout: a peer that opens its windows wide and
// then stops reading fills the socket's buffers; the handler's write must fail once a write
// has waited WriteTimeout, not block for ever.
func TestStalledPeerEndsTheConnectionAfterWriteTimeout(t *testing.T) {
	wrote := make(chan error, 1)
	srv := &Server{WriteTimeout: 200 * time.Millisecond, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		chunk := make([]byte, 32<<10)
		for range 2048 { // 64 MiB: far more than loopback's socket buffers hold
			if _, err := w.Write(chunk); err != nil {
				wrote <- err
				return
			}
		}
		wrote <- nil
	})}
	h := startServer(t, srv, nil)
	rc := h.dialRaw(t)
	if err := rc.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1}); err != nil {
		t.Fatal(err)
	}
	if err := rc.fr.WriteWindowUpdate(0, 1<<31-1-65535); err != nil {
		t.Fatal(err)
	}
	rc.get(1, "/big") // and never read again
	select {
	case err := <-wrote:
		if err == nil {
			t.Fatal("the handler wrote 64 MiB to a peer that reads nothing")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the handler's write still blocks on a peer that stopped reading")
	}
}
