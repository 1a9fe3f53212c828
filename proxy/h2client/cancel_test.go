package h2client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// TestCancellationSendsCancel checks what the server sees when a request's context ends:
// RST_STREAM(CANCEL) while the client waits for the headers, while it reads the body,
// and, at its next Read, after it stopped reading; a response already complete is still
// read to its end.
func TestCancellationSendsCancel(t *testing.T) {
	cases := []cancelCase{
		{"waiting for headers", false, false, nil, true},
		{"reading the body", true, false, func(t *testing.T, resp *http.Response, cancel func()) {
			buf := make([]byte, 5)
			if _, err := io.ReadFull(resp.Body, buf); err != nil {
				t.Fatal(err)
			}
			time.AfterFunc(20*time.Millisecond, cancel)
			if _, err := resp.Body.Read(buf); !errors.Is(err, context.Canceled) {
				t.Errorf("blocked Read returned %v, want context.Canceled", err)
			}
		}, true},
		{"not reading the body", true, false, func(t *testing.T, resp *http.Response, cancel func()) {
			cancel()
			if _, err := io.ReadAll(resp.Body); !errors.Is(err, context.Canceled) {
				t.Errorf("Read after cancel returned %v, want context.Canceled", err)
			}
		}, true},
		{"response complete", true, true, func(t *testing.T, resp *http.Response, cancel func()) {
			time.Sleep(20 * time.Millisecond) // the whole response arrives
			cancel()
			if b, err := io.ReadAll(resp.Body); err != nil || string(b) != "hello" {
				t.Errorf("body %q, %v; want hello", b, err)
			}
		}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, tc.test)
	}
}

type cancelCase struct {
	name       string
	headers    bool // the server answers with headers and some data
	ended      bool // the server ends the response
	use        func(t *testing.T, resp *http.Response, cancel func())
	wantCancel bool
}

func (tc cancelCase) test(t *testing.T) {
	reset := make(chan *http2.RSTStreamFrame, 1)
	rs := startRaw(t, nil, func(rc *rawConn) {
		id := rc.awaitRequest()
		if id == 0 {
			return
		}
		if tc.headers {
			rc.headers(id, false, ":status", "200")
			_ = rc.fr.WriteData(id, tc.ended, []byte("hello"))
			rc.flush()
		}
		reset <- awaitReset(rc)
	})
	tr := newTransport(t, rs.clientTLS, nil)
	tc.roundTrip(t, tr, "https://"+rs.addr+"/")
	tr.CloseIdleConnections()
	got := <-reset
	switch {
	case tc.wantCancel && (got == nil || got.ErrCode != http2.ErrCodeCancel):
		t.Errorf("server saw %v, want RST_STREAM(CANCEL)", got)
	case !tc.wantCancel && got != nil:
		t.Errorf("server saw %v, want no RST_STREAM", got)
	}
}

// roundTrip sends the request, cancelled while it waits for headers or as tc.use says.
func (tc cancelCase) roundTrip(t *testing.T, tr *Transport, url string) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if tc.use == nil {
		time.AfterFunc(20*time.Millisecond, cancel)
	}
	resp, err := tr.RoundTrip(req)
	if tc.use == nil {
		if !errors.Is(err, context.Canceled) {
			t.Errorf("RoundTrip error %v, want context.Canceled", err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close() //nolint:errcheck // test
	tc.use(t, resp, cancel)
}

// awaitReset reads frames until RST_STREAM (returned) or the end of the connection (nil).
func awaitReset(rc *rawConn) *http2.RSTStreamFrame {
	for {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			return nil
		}
		if rf, ok := f.(*http2.RSTStreamFrame); ok {
			return rf
		}
	}
}

// TestPooledDataBuffersKeepBodiesApart reads many concurrent responses, each of its own
// bytes and several DATA frames, in small reads and with some bodies closed early: data
// buffers go back to the pool and serve other streams, and no body may see another's
// bytes or lose its own.
func TestPooledDataBuffersKeepBodiesApart(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fill := r.URL.Query().Get("fill")[0]
		chunk := bytes.Repeat([]byte{fill}, 3000)
		for range 10 {
			_, _ = w.Write(chunk)
			http.NewResponseController(w).Flush() //nolint:errcheck // the client may be gone
		}
	})
	ts := startH2(t, h)
	tr := ts.transport(t)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 64 {
		wg.Go(func() {
			fill := byte('a' + i%26)
			resp, err := tr.RoundTrip(mustGet(t, ts.url(fmt.Sprintf("/?fill=%c", fill))))
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close() //nolint:errcheck // test
			errs <- checkBody(resp.Body, fill, i%4 == 0)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

// checkBody reads a body of 30000 bytes of fill in small reads; early stops half-way and
// closes it, then expects reads to fail.
func checkBody(body io.ReadCloser, fill byte, early bool) error {
	buf := make([]byte, 700)
	n := 0
	for {
		m, err := body.Read(buf)
		for _, b := range buf[:m] {
			if b != fill {
				return fmt.Errorf("body of %q got byte %q at %d", fill, b, n)
			}
		}
		n += m
		if early && n >= 15000 {
			_ = body.Close()
			if _, err := body.Read(buf); err == nil {
				return errors.New("Read after Close succeeded")
			}
			return nil
		}
		if errors.Is(err, io.EOF) {
			if n != 30000 {
				return fmt.Errorf("body of %q: %d bytes, want 30000", fill, n)
			}
			return nil
		}
		if err != nil {
			return err
		}
	}
}
