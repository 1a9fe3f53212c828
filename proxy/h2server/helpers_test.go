package h2server

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/braidmesh/braid/proxy/internal/h2test"
)

// harness serves a Server on a loopback listener, handshaking TLS as the inbound
// server does.
type harness struct {
	srv       *Server
	url       string
	addr      string
	clientTLS *tls.Config
	conns     atomic.Int32
	wg        sync.WaitGroup

	mu   sync.Mutex
	errs []error // what ServeConn returned
}

// startServer serves srv; wrap, when set, wraps each accepted socket under TLS.
func startServer(tb testing.TB, srv *Server, wrap func(net.Conn) net.Conn) *harness {
	tb.Helper()
	serverTLS, clientTLS := h2test.TLSConfigs(tb)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	h := &harness{srv: srv, addr: ln.Addr().String(), url: "https://" + ln.Addr().String(), clientTLS: clientTLS}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.wg.Add(1)
			go func() {
				defer h.wg.Done()
				h.serve(c, serverTLS, wrap)
			}()
		}
	}()
	tb.Cleanup(func() {
		_ = ln.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			tb.Errorf("Shutdown: %v", err)
		}
		h.wg.Wait()
	})
	return h
}

func (h *harness) serve(c net.Conn, cfg *tls.Config, wrap func(net.Conn) net.Conn) {
	if wrap != nil {
		c = wrap(c)
	}
	tc := tls.Server(c, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		_ = c.Close()
		return
	}
	h.conns.Add(1)
	err = h.srv.ServeConn(tc)
	h.mu.Lock()
	h.errs = append(h.errs, err)
	h.mu.Unlock()
}

// client returns an HTTP/2-only net/http client for the harness; conf tunes its HTTP/2.
func (h *harness) client(tb testing.TB, conf *http.HTTP2Config) *http.Client {
	tr := &http.Transport{TLSClientConfig: h.clientTLS.Clone(), HTTP2: conf, Protocols: new(http.Protocols)}
	tr.Protocols.SetHTTP2(true)
	tb.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// rawClient speaks HTTP/2 frame by frame.
type rawClient struct {
	tb   testing.TB
	conn *tls.Conn
	fr   *http2.Framer
	enc  *hpack.Encoder
	hbuf bytes.Buffer
}

// dialRaw connects, sends the client preface and empty SETTINGS, and reads the server's
// SETTINGS.
func (h *harness) dialRaw(tb testing.TB) *rawClient {
	tb.Helper()
	rc := h.dialRawNoPreface(tb)
	if _, err := io.WriteString(rc.conn, http2.ClientPreface); err != nil {
		tb.Fatal(err)
	}
	if err := rc.fr.WriteSettings(); err != nil {
		tb.Fatal(err)
	}
	f := rc.readFrame()
	if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
		tb.Fatalf("first server frame is %v, want SETTINGS", f)
	}
	if err := rc.fr.WriteSettingsAck(); err != nil {
		tb.Fatal(err)
	}
	return rc
}

func (h *harness) dialRawNoPreface(tb testing.TB) *rawClient {
	tb.Helper()
	d := &tls.Dialer{Config: h.clientTLS}
	c, err := d.DialContext(context.Background(), "tcp", h.addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	rc := &rawClient{tb: tb, conn: c.(*tls.Conn)}
	rc.fr = http2.NewFramer(c, c)
	rc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	rc.enc = hpack.NewEncoder(&rc.hbuf)
	return rc
}

// headers sends a HEADERS frame with the given name/value pairs.
func (rc *rawClient) headers(id uint32, end bool, pairs ...string) {
	rc.tb.Helper()
	rc.hbuf.Reset()
	for i := 0; i+1 < len(pairs); i += 2 {
		if err := rc.enc.WriteField(hpack.HeaderField{Name: pairs[i], Value: pairs[i+1]}); err != nil {
			rc.tb.Fatal(err)
		}
	}
	err := rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: rc.hbuf.Bytes(), EndStream: end, EndHeaders: true})
	if err != nil {
		rc.tb.Fatal(err)
	}
}

// encode returns the header block of name/value pairs, from the connection's encoder.
func (rc *rawClient) encode(pairs ...string) []byte {
	rc.tb.Helper()
	rc.hbuf.Reset()
	for i := 0; i+1 < len(pairs); i += 2 {
		if err := rc.enc.WriteField(hpack.HeaderField{Name: pairs[i], Value: pairs[i+1]}); err != nil {
			rc.tb.Fatal(err)
		}
	}
	return bytes.Clone(rc.hbuf.Bytes())
}

// get opens stream id with a GET for path.
func (rc *rawClient) get(id uint32, path string) {
	rc.tb.Helper()
	rc.headers(id, true, ":method", "GET", ":scheme", "https", ":authority", "test", ":path", path)
}

// readFrame reads one frame, failing the test on error or after 10 s.
func (rc *rawClient) readFrame() http2.Frame {
	rc.tb.Helper()
	_ = rc.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := rc.fr.ReadFrame()
	if err != nil {
		rc.tb.Fatalf("reading a frame: %v", err)
	}
	return f
}

// until reads frames until one satisfies match, and returns it.
func (rc *rawClient) until(what string, match func(http2.Frame) bool) http2.Frame {
	rc.tb.Helper()
	for {
		_ = rc.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		f, err := rc.fr.ReadFrame()
		if err != nil {
			rc.tb.Fatalf("waiting for %s: %v", what, err)
		}
		if match(f) {
			return f
		}
	}
}

// expectReset waits for RST_STREAM on id and checks its code.
func (rc *rawClient) expectReset(id uint32, code http2.ErrCode) {
	rc.tb.Helper()
	f := rc.until("RST_STREAM", func(f http2.Frame) bool {
		_, ok := f.(*http2.RSTStreamFrame)
		if ga, isGoAway := f.(*http2.GoAwayFrame); isGoAway {
			rc.tb.Fatalf("got GOAWAY %v (%s), want RST_STREAM on stream %d", ga.ErrCode, ga.DebugData(), id)
		}
		return ok && f.Header().StreamID == id
	})
	if got := f.(*http2.RSTStreamFrame).ErrCode; got != code {
		rc.tb.Fatalf("RST_STREAM code %v, want %v", got, code)
	}
}

// expectGoAway waits for GOAWAY, checks its code, then expects the connection to close.
func (rc *rawClient) expectGoAway(code http2.ErrCode) *http2.GoAwayFrame {
	rc.tb.Helper()
	f := rc.until("GOAWAY", func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok })
	ga := f.(*http2.GoAwayFrame)
	if ga.ErrCode != code {
		rc.tb.Fatalf("GOAWAY code %v (%s), want %v", ga.ErrCode, ga.DebugData(), code)
	}
	return ga
}

// expectClosed reads until the server closes the connection.
func (rc *rawClient) expectClosed() {
	rc.tb.Helper()
	_ = rc.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		if _, err := rc.fr.ReadFrame(); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isReset(err) {
				return
			}
			rc.tb.Fatalf("waiting for the connection to close: %v", err)
		}
	}
}

func isReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) && !ne.Timeout()
}

// expectResponse waits for the response HEADERS on id and returns its status.
func (rc *rawClient) expectResponse(id uint32) string {
	rc.tb.Helper()
	f := rc.until("response HEADERS", func(f http2.Frame) bool {
		if rst, ok := f.(*http2.RSTStreamFrame); ok && rst.StreamID == id {
			rc.tb.Fatalf("stream %d reset: %v", id, rst.ErrCode)
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok && ga.ErrCode != http2.ErrCodeNo {
			rc.tb.Fatalf("GOAWAY %v (%s)", ga.ErrCode, ga.DebugData())
		}
		_, ok := f.(*http2.MetaHeadersFrame)
		return ok && f.Header().StreamID == id
	})
	return f.(*http2.MetaHeadersFrame).PseudoValue("status")
}
