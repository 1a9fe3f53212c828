package h2client

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/testr"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/braidmesh/braid/proxy/h2server"
	"github.com/braidmesh/braid/proxy/internal/h2test"
)

// testServer is a TLS listener on loopback; accepted counts its connections.
type testServer struct {
	addr      string
	clientTLS *tls.Config
	accepted  atomic.Int32
}

// startNetHTTP serves h with net/http's HTTP/2 server; conf, when set, adjusts it.
func startNetHTTP(tb testing.TB, h http.Handler, conf func(*http.Server)) *testServer {
	tb.Helper()
	serverTLS, clientTLS := h2test.TLSConfigs(tb)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	ts := &testServer{addr: ln.Addr().String(), clientTLS: clientTLS}
	hs := &http.Server{Handler: h, TLSConfig: serverTLS, ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	hs.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			ts.accepted.Add(1)
		}
	}
	if conf != nil {
		conf(hs)
	}
	go func() { _ = hs.ServeTLS(ln, "", "") }()
	tb.Cleanup(func() { _ = hs.Close() })
	return ts
}

// startH2Server serves with the h2server.Server that current returns at each accept.
func startH2Server(tb testing.TB, current func() *h2server.Server) *testServer {
	tb.Helper()
	serverTLS, clientTLS := h2test.TLSConfigs(tb)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	ts := &testServer{addr: ln.Addr().String(), clientTLS: clientTLS}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			ts.accepted.Add(1)
			srv := current()
			wg.Go(func() {
				tc := tls.Server(c, serverTLS)
				if tc.HandshakeContext(context.Background()) != nil {
					_ = c.Close()
					return
				}
				_ = srv.ServeConn(tc)
			})
		}
	})
	tb.Cleanup(func() {
		_ = ln.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = current().Shutdown(ctx)
		wg.Wait()
	})
	return ts
}

// startH2 serves h with one h2server.Server.
func startH2(tb testing.TB, h http.Handler) *testServer {
	srv := &h2server.Server{Handler: h}
	return startH2Server(tb, func() *h2server.Server { return srv })
}

// servers runs fn against net/http's HTTP/2 server and against h2server.
func servers(t *testing.T, h http.Handler, fn func(t *testing.T, ts *testServer)) {
	t.Run("net-http", func(t *testing.T) { fn(t, startNetHTTP(t, h, nil)) })
	t.Run("h2server", func(t *testing.T) { fn(t, startH2(t, h)) })
}

// newTransport returns a Transport dialling with cfg; wrap, when set, wraps the TCP
// connection under TLS.
func newTransport(tb testing.TB, cfg *tls.Config, wrap func(net.Conn) net.Conn) *Transport {
	tr := &Transport{Log: logr.Discard()}
	if t, ok := tb.(*testing.T); ok {
		tr.Log = testr.New(t)
	}
	tr.DialTLS = func(ctx context.Context, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		if wrap != nil {
			c = wrap(c)
		}
		tc := tls.Client(c, cfg.Clone())
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = c.Close()
			return nil, err
		}
		return tc, nil
	}
	tb.Cleanup(tr.CloseIdleConnections)
	return tr
}

func (ts *testServer) transport(tb testing.TB) *Transport {
	return newTransport(tb, ts.clientTLS, nil)
}

func (ts *testServer) url(path string) string { return "https://" + ts.addr + path }

// get sends a GET through tr and returns the response with its body read.
func get(tb testing.TB, tr http.RoundTripper, url string) (*http.Response, string) {
	tb.Helper()
	req, err := http.NewRequestWithContext(tb.Context(), http.MethodGet, url, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return do(tb, tr, req)
}

func do(tb testing.TB, tr http.RoundTripper, req *http.Request) (*http.Response, string) {
	tb.Helper()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		tb.Fatalf("RoundTrip: %v", err)
	}
	defer resp.Body.Close() //nolint:errcheck // read fully below
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("reading body: %v", err)
	}
	return resp, string(b)
}

// countingConn counts the writes to a connection.
type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// rawServer is a TLS server speaking HTTP/2 through a bare Framer, one connection at a
// time, each handled by script.
type rawServer struct {
	addr      string
	clientTLS *tls.Config
}

// rawConn is the server side of one raw connection.
type rawConn struct {
	fr *http2.Framer
	bw *bufio.Writer
	nc net.Conn
}

func startRaw(tb testing.TB, settings []http2.Setting, script func(rc *rawConn)) *rawServer {
	tb.Helper()
	serverTLS, clientTLS := h2test.TLSConfigs(tb)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close() //nolint:errcheck // test server
				tc := tls.Server(c, serverTLS)
				if tc.HandshakeContext(context.Background()) != nil {
					return
				}
				rc := newRawConn(tc, settings)
				if rc != nil {
					script(rc)
				}
			})
		}
	})
	tb.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
	})
	return &rawServer{addr: ln.Addr().String(), clientTLS: clientTLS}
}

func newRawConn(tc net.Conn, settings []http2.Setting) *rawConn {
	br := bufio.NewReader(tc)
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(br, preface); err != nil || string(preface) != http2.ClientPreface {
		return nil
	}
	rc := &rawConn{nc: tc, bw: bufio.NewWriter(tc)}
	rc.fr = http2.NewFramer(rc.bw, br)
	rc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	_ = rc.fr.WriteSettings(settings...)
	rc.flush()
	return rc
}

func (rc *rawConn) flush() { _ = rc.bw.Flush() }

// awaitRequest reads frames until a request's HEADERS and returns its stream id, or 0
// when the connection ends.
func (rc *rawConn) awaitRequest() uint32 {
	for {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			return 0
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			return f.StreamID
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = rc.fr.WriteSettingsAck()
				rc.flush()
			}
		}
	}
}

// awaitEnd reads frames until RST_STREAM or the end of the connection.
func (rc *rawConn) awaitEnd() {
	for {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			return
		}
		switch f.(type) {
		case *http2.RSTStreamFrame, *http2.GoAwayFrame:
			return
		}
	}
}

// headers writes a header block of name/value pairs.
func (rc *rawConn) headers(id uint32, end bool, pairs ...string) {
	var buf strings.Builder
	enc := hpack.NewEncoder(&buf)
	for i := 0; i+1 < len(pairs); i += 2 {
		_ = enc.WriteField(hpack.HeaderField{Name: pairs[i], Value: pairs[i+1]})
	}
	_ = rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: []byte(buf.String()), EndStream: end, EndHeaders: true})
	rc.flush()
}

// roundTripErr sends a GET and returns RoundTrip's or the body's error.
func roundTripErr(tb testing.TB, tr *Transport, url string) error {
	ctx, cancel := context.WithTimeout(tb.Context(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		tb.Fatal(err)
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close() //nolint:errcheck // test
	if _, err := io.ReadAll(resp.Body); err != nil {
		return err
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return ctx.Err()
	}
	return nil
}

// headerBlock writes a header block split into HEADERS and CONTINUATION frames.
func (rc *rawConn) headerBlock(id uint32, pairs ...string) {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for i := 0; i+1 < len(pairs); i += 2 {
		_ = enc.WriteField(hpack.HeaderField{Name: pairs[i], Value: pairs[i+1]})
	}
	block := buf.Bytes()
	for first := true; len(block) > 0; first = false {
		chunk := block[:min(len(block), 16384)]
		block = block[len(chunk):]
		if first {
			_ = rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: chunk, EndStream: true, EndHeaders: len(block) == 0})
		} else {
			_ = rc.fr.WriteContinuation(id, len(block) == 0, chunk)
		}
	}
	rc.flush()
}
