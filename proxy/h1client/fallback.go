package h1client

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"sync"
)

// FallbackDialer wraps dial, the DialContext of a Transport's Fallback (net/http's
// Transport), so that the Transport can read again the head of an answer the Fallback
// read: net/http's Transport changes an answer's header as ReadResponse does (see
// asSent). The connections it opens record what they read only while a
// request of the Transport is waiting for its answer.
func FallbackDialer(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &recordingConn{Conn: c}, nil
	}
}

// recordingConn is a connection of the Fallback that keeps what it reads while a
// request of the Transport waits for its answer.
type recordingConn struct {
	net.Conn
	mu  sync.Mutex // Read runs on net/http's reading goroutine
	rec recorder
}

var errNoCloseWrite = errors.New("the connection cannot half-close")

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.mu.Lock()
		c.rec.add(p[:n])
		c.mu.Unlock()
	}
	return n, err //nolint:wrapcheck // net/http reads through it: io.EOF must stay itself
}

// CloseWrite half-closes the connection, when the one it wraps can.
func (c *recordingConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite() //nolint:wrapcheck // as the wrapped connection says
	}
	return errNoCloseWrite
}

func (c *recordingConn) record() {
	c.mu.Lock()
	c.rec.start(nil)
	c.mu.Unlock()
}

// with calls fn with what the connection recorded so far, which fn must not keep.
func (c *recordingConn) with(fn func(recorded []byte)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fn(c.rec.buf)
}

// stop ends the recording and returns what it kept, which the connection does not touch
// until it records again (for its next request: after this one's answer is read).
func (c *recordingConn) stop() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rec.stop()
}

// roundTripFallback sends req through Fallback. When Fallback's connection came from a
// FallbackDialer, it records the answers' heads, so that what net/http changed in their
// headers is undone (asSent), in the final answer and in informational ones (which reach
// the request's trace after this one's hook).
func (t *Transport) roundTripFallback(req *http.Request) (*http.Response, error) {
	var rc *recordingConn
	informational := 0
	trace := &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) {
			if rc != nil {
				rc.stop() // a connection that failed before the request was sent on another
			}
			rc, _ = info.Conn.(*recordingConn)
			if rc != nil {
				rc.record()
			}
			informational = 0
		},
		Got1xxResponse: func(_ int, h textproto.MIMEHeader) error {
			if rc != nil {
				rc.with(func(recorded []byte) { asSent(http.Header(h), recorded, informational) })
			}
			informational++
			return nil
		},
	}
	resp, err := t.Fallback.RoundTrip(req.WithContext(httptrace.WithClientTrace(req.Context(), trace)))
	if rc == nil {
		return resp, err //nolint:wrapcheck // Fallback's answer, as it is
	}
	if recorded := rc.stop(); err == nil && mayDiffer(resp) {
		asSent(resp.Header, recorded, informational)
	}
	return resp, err //nolint:wrapcheck // as above
}
