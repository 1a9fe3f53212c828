// Package h1client is the server proxy's HTTP/1.1 client to its own application.
//
// net/http's Transport gives every connection a reading and a writing goroutine, and
// hands each request and each answer between them and the caller over channels: for a
// sidecar that forwards small requests on loopback, those hand-offs cost more than the
// work. Here the caller's goroutine writes the request and reads the answer itself, on
// connections kept alive in a pool. net/http's ReadResponse reads the answer; the
// request's head is written here (head), as net/http's Request.Write would but
// without its formatting and allocations. It carries requests without a body, which
// are most of a mesh's; the others
// (a body, a protocol upgrade, Expect, a scheme other than http) go to Fallback, which
// streams a body while reading the answer.
//
// A connection waiting in the pool has no reader, so one the application closed is not
// noticed by itself: it is checked (sockio.CheckIdle, a peek that does not wait) before
// reuse, and a request that still meets a connection closing under it is sent again on a
// new one when nothing of it can have been processed.
package h1client

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"sync"
	"syscall"
	"time"

	"github.com/braidmesh/braid/proxy/sockio"
)

// Defaults of the Transport's limits.
const (
	DefaultIdleConnTimeout     = 90 * time.Second
	DefaultMaxIdleConnsPerHost = 64
	// DefaultMaxResponseHeaderBytes bounds an answer's status line and header.
	DefaultMaxResponseHeaderBytes = 1 << 20
	// max1xx bounds the informational answers before the final one.
	max1xx = 5
)

// Transport is an http.RoundTripper for plaintext HTTP/1.1.
type Transport struct {
	// DialContext opens connections.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Fallback carries the requests this transport does not.
	Fallback http.RoundTripper
	// IdleConnTimeout, MaxIdleConnsPerHost and MaxResponseHeaderBytes are limits; zero
	// means the default.
	IdleConnTimeout        time.Duration
	MaxIdleConnsPerHost    int
	MaxResponseHeaderBytes int64
	// Now is the clock idle times are measured with; nil means time.Now.
	Now func() time.Time

	mu     sync.Mutex
	idle   map[string][]*conn // by address; the most recently used last
	closed bool
}

// RoundTrip sends req and returns its answer, whose Body the caller must read to the end
// or close so that the connection can serve another request.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !t.carries(req) {
		return t.roundTripFallback(req)
	}
	var h head
	if err := h.prepare(req); err != nil {
		return nil, err // before taking a connection: no connection can carry it
	}
	fresh := false
	for {
		c, reused, err := t.get(req.Context(), req.URL.Host, fresh)
		if err != nil {
			return nil, err
		}
		resp, err := c.roundTrip(req, &h)
		if err == nil {
			return resp, nil
		}
		if !reused || !c.mayRetry(req, err) || req.Context().Err() != nil {
			return nil, err
		}
		fresh = true // the application closed a kept-alive connection as the request went out
	}
}

// carries reports whether the transport sends req itself.
func (t *Transport) carries(req *http.Request) bool {
	return req.URL.Scheme == "http" && (req.Body == nil || req.Body == http.NoBody) &&
		len(req.Header["Upgrade"]) == 0 && len(req.Header["Expect"]) == 0
}

// CloseIdleConnections closes the connections in the pool, and any put back later.
func (t *Transport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle, t.closed = nil, true
	t.mu.Unlock()
	for _, conns := range idle {
		for _, c := range conns {
			_ = c.nc.Close()
		}
	}
	if f, ok := t.Fallback.(interface{ CloseIdleConnections() }); ok {
		f.CloseIdleConnections()
	}
}

// get returns an idle connection to addr that is still open, or a new one (always new
// when fresh); reused says which.
func (t *Transport) get(ctx context.Context, addr string, fresh bool) (*conn, bool, error) {
	for !fresh {
		c := t.popIdle(addr)
		if c == nil {
			break
		}
		if c.br.Buffered() == 0 && sockio.CheckIdle(c.nc) == nil {
			return c, true, nil
		}
		_ = c.nc.Close()
	}
	nc, err := t.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, false, err
	}
	c := &conn{t: t, addr: addr, nc: nc}
	c.br = bufio.NewReader(c)
	c.bw = bufio.NewWriter(nc)
	return c, false, nil
}

// popIdle takes the most recently used idle connection to addr, closing those idle for
// too long on the way.
func (t *Transport) popIdle(addr string) *conn {
	t.mu.Lock()
	defer t.mu.Unlock()
	conns := t.idle[addr]
	for len(conns) > 0 {
		c := conns[len(conns)-1]
		conns[len(conns)-1] = nil
		conns = conns[:len(conns)-1]
		t.idle[addr] = conns
		if t.now().Sub(c.idleSince) <= cmp.Or(t.IdleConnTimeout, DefaultIdleConnTimeout) {
			return c
		}
		_ = c.nc.Close()
	}
	return nil
}

// put keeps c for another request, unless the pool is full or closed; idle connections
// past their timeout go on the way.
func (t *Transport) put(c *conn) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	conns := t.idle[c.addr]
	for len(conns) > 0 && now.Sub(conns[0].idleSince) > cmp.Or(t.IdleConnTimeout, DefaultIdleConnTimeout) {
		_ = conns[0].nc.Close()
		conns = conns[1:]
	}
	if t.closed || len(conns) >= cmp.Or(t.MaxIdleConnsPerHost, DefaultMaxIdleConnsPerHost) {
		t.idle[c.addr] = conns
		_ = c.nc.Close()
		return
	}
	if t.idle == nil {
		t.idle = map[string][]*conn{}
	}
	c.idleSince = now
	t.idle[c.addr] = append(conns, c)
}

func (t *Transport) now() time.Time {
	if t.Now != nil {
		return t.Now()
	}
	return time.Now()
}

// conn is one connection to the application, serving one request at a time.
type conn struct {
	t         *Transport
	addr      string
	nc        net.Conn
	br        *bufio.Reader // reads through the conn itself, which counts and limits
	bw        *bufio.Writer
	idleSince time.Time
	// limit is what may still be read: the header budget while an answer's head is
	// read, unlimited for its body. got counts the bytes read for the current request.
	limit int64
	got   int64
	// wrote says the request left whole (Flush returned).
	wrote bool
	// rec keeps what is read while an answer's heads are, for asSent.
	rec recorder
}

// Read reads from the connection for br, within the limit.
func (c *conn) Read(p []byte) (int, error) {
	if c.limit <= 0 {
		return 0, errHeaderTooLarge
	}
	if int64(len(p)) > c.limit {
		p = p[:c.limit]
	}
	n, err := c.nc.Read(p)
	c.limit -= int64(n)
	c.got += int64(n)
	c.rec.add(p[:n])
	return n, err //nolint:wrapcheck // bufio passes it on: io.EOF must stay itself
}

var errHeaderTooLarge = errors.New("the application's answer has a header larger than the limit")

// roundTrip writes req, whose head h is, and reads its answer's head; the answer's body
// then reads from c and gives it back to the pool at its end.
func (c *conn) roundTrip(req *http.Request, h *head) (*http.Response, error) {
	c.got, c.wrote, c.limit = 0, false, cmp.Or(c.t.MaxResponseHeaderBytes, DefaultMaxResponseHeaderBytes)
	stop := context.AfterFunc(req.Context(), c.interrupt)
	if err := c.write(h); err != nil {
		stop()
		_ = c.nc.Close()
		return nil, ended(req.Context(), err)
	}
	resp, err := c.readHead(req)
	if err != nil {
		stop()
		_ = c.nc.Close()
		return nil, ended(req.Context(), err)
	}
	c.limit = math.MaxInt64
	b := &body{c: c, ctx: req.Context(), rc: resp.Body, stop: stop, reuse: !resp.Close && !req.Close}
	if resp.Body == http.NoBody {
		b.finish(true)
		return resp, nil
	}
	resp.Body = b
	return resp, nil
}

// interrupt unblocks the connection's reads and writes when the request's context ends.
func (c *conn) interrupt() { _ = c.nc.SetDeadline(time.Unix(1, 0)) }

// ended returns err, or, when ctx ended (which interrupted the connection), an error
// that says so first: callers tell a client that went away (context.Canceled) from a
// failing application.
func ended(ctx context.Context, err error) error {
	if ctx.Err() == nil {
		return err
	}
	return fmt.Errorf("%w (%w)", ctx.Err(), err)
}

func (c *conn) write(h *head) error {
	if err := h.write(c.bw); err != nil {
		return fmt.Errorf("writing the request to the application at %s: %w", c.addr, err)
	}
	if err := c.bw.Flush(); err != nil {
		return fmt.Errorf("writing the request to the application at %s: %w", c.addr, err)
	}
	c.wrote = true
	return nil
}

// readHead reads the answer's head, passing informational answers (but 100 Continue,
// which nobody asked for) to the request's trace.
func (c *conn) readHead(req *http.Request) (*http.Response, error) {
	buffered, _ := c.br.Peek(c.br.Buffered()) // within Buffered, Peek cannot fail
	c.rec.start(buffered)
	defer c.rec.stop()
	for n := 0; ; n++ {
		start := len(c.rec.buf) - c.br.Buffered() // where this answer's head begins
		resp, err := http.ReadResponse(c.br, req)
		if err == nil && mayDiffer(resp) && c.rec.on {
			asSent(resp.Header, c.rec.buf[start:], 0)
		}
		switch {
		case err != nil:
			return nil, fmt.Errorf("reading the answer of the application at %s: %w", c.addr, err)
		case resp.StatusCode == http.StatusSwitchingProtocols:
			return nil, fmt.Errorf("the application at %s switched protocols unasked", c.addr)
		case resp.StatusCode >= 200:
			return resp, nil
		case n >= max1xx:
			return nil, fmt.Errorf("the application at %s sent more than %d informational answers", c.addr, max1xx)
		case resp.StatusCode == http.StatusContinue:
			continue
		}
		trace := httptrace.ContextClientTrace(req.Context())
		if trace != nil && trace.Got1xxResponse != nil {
			if err := trace.Got1xxResponse(resp.StatusCode, textproto.MIMEHeader(resp.Header)); err != nil {
				return nil, fmt.Errorf("passing on an informational answer: %w", err)
			}
		}
	}
}

// mayRetry reports whether req, which failed with err on a reused connection, may be sent
// again: nothing of it left whole, or the application closed the connection without
// answering and req is safe to repeat.
func (c *conn) mayRetry(req *http.Request, err error) bool {
	if !c.wrote {
		return true // an incomplete request cannot have been processed
	}
	closed := errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
	return closed && c.got == 0 && replayable(req)
}

// replayable reports whether a request without a body may be sent twice, by the rule
// net/http's Transport applies.
func replayable(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return len(req.Header["Idempotency-Key"]) > 0 || len(req.Header["X-Idempotency-Key"]) > 0
}

// body is an answer's body: at its end the connection goes back to the pool, or is
// closed when it cannot serve another request.
type body struct {
	c     *conn
	ctx   context.Context
	rc    io.ReadCloser
	stop  func() bool
	reuse bool
	once  sync.Once
}

func (b *body) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	switch {
	case err == io.EOF:
		b.finish(true)
	case err != nil:
		b.finish(false)
		return n, ended(b.ctx, fmt.Errorf("reading the answer of the application at %s: %w", b.c.addr, err))
	}
	return n, err //nolint:wrapcheck // io.EOF must stay itself
}

// Close ends the body; before its end, the connection cannot serve another request and
// is closed (rather than read to the end).
func (b *body) Close() error {
	b.finish(false)
	return nil
}

// finish ends the exchange once: the connection goes back to the pool when the body was
// read whole, the answer allows it and the request's context never interrupted it.
func (b *body) finish(whole bool) {
	b.once.Do(func() {
		if b.stop() && whole && b.reuse {
			b.c.t.put(b.c)
			return
		}
		_ = b.c.nc.Close()
	})
}
