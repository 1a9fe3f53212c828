package h2client

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/net/http2/hpack"
)

const (
	defaultIdleTimeout     = 90 * time.Second
	defaultMaxHeaderBytes  = 64 << 10
	maxAttempts            = 4  // sends of one request that the server did not process
	maxDialRounds          = 64 // pool look-ups of one request that found no capacity
	settingsTimeout        = 10 * time.Second
	streamRecvWindow       = 4 << 20
	connRecvWindow         = 1 << 30
	maxPeerStreamsDefault  = 1000 // when the server sets no MAX_CONCURRENT_STREAMS
	bodyBufSize            = 64 << 10
	dataBufSize            = 16 << 10 // a response data buffer: one DATA frame at our SETTINGS_MAX_FRAME_SIZE
	maxPooledDataBuf       = 64 << 10 // larger (grown) data buffers are left to the GC
	defaultWriteTimeout    = 30 * time.Second
	defaultReadIdleTimeout = 10 * time.Second
	defaultPingTimeout     = 5 * time.Second
	headerBlockInitialSize = 512
)

// Transport is an http.RoundTripper speaking HTTP/2 over connections DialTLS opens.
// Its fields must not change after the first RoundTrip.
type Transport struct {
	// DialTLS opens a connection to addr (host:port) whose TLS handshake is done and
	// negotiated "h2" (the caller verifies the peer's identity). Its errors are returned
	// from RoundTrip wrapped with %w.
	DialTLS func(ctx context.Context, addr string) (net.Conn, error)
	// IdleConnTimeout closes a connection with no stream for this long (default 90 s).
	IdleConnTimeout time.Duration
	// MaxResponseHeaderBytes bounds a response's header list (default 64 KiB).
	MaxResponseHeaderBytes uint32
	// ReadIdleTimeout and PingTimeout find a connection whose server is gone without a
	// word (its node lost, a network partition): TCP would keep the requests on it
	// waiting for many minutes. A connection with streams open that has read nothing
	// over a whole ReadIdleTimeout period (default 10 s, checked once a period;
	// negative: never) is sent a PING, and fails, with its streams, when nothing comes
	// back within PingTimeout (default 5 s).
	ReadIdleTimeout, PingTimeout time.Duration
	// Log receives connection errors at V(1).
	Log logr.Logger

	writeTimeoutOverride time.Duration // a write blocked this long fails its connection (tests shorten it)

	mu    sync.Mutex
	pools map[string]*pool
	bufs  sync.Pool // *[]byte of bodyBufSize: request body buffers
	// fieldLists holds *[]hpack.HeaderField: a request's header list, checked once
	// (checkRequest) and encoded on each attempt, lives in one for the RoundTrip.
	fieldLists sync.Pool
	// dataBufs holds *[]byte response data buffers (capacity dataBufSize to
	// maxPooledDataBuf), so that a stream's buffered DATA needs no new array.
	dataBufs sync.Pool
}

// pool is the connections to one address.
type pool struct {
	conns   []*conn
	dialing *dialCall
}

// dialCall is one dial that callers for the same address share.
type dialCall struct {
	done chan struct{}
	err  error
}

// ErrNotProcessed matches (errors.Is) the error of a request the server did not process:
// refused (REFUSED_STREAM), above the last stream a GOAWAY admitted, or never sent on a
// connection that was closing. Nothing of such a request reached the application, so even
// a request that is not idempotent may be sent again, if its body can be.
var ErrNotProcessed = errors.New("h2client: request not processed by the server")

// unprocessedError reports a request the server did not process: it can be sent again.
type unprocessedError struct{ cause error }

// Is makes the error match ErrNotProcessed.
func (e *unprocessedError) Is(target error) bool { return target == ErrNotProcessed }

func (e *unprocessedError) Error() string {
	return "h2client: request not processed by the server: " + e.cause.Error()
}

func (e *unprocessedError) Unwrap() error { return e.cause }

func isUnprocessed(err error) bool {
	var u *unprocessedError
	return errors.As(err, &u)
}

// positiveOr returns v when it is positive, else def.
func positiveOr[T time.Duration | uint32](v, def T) T {
	if v > 0 {
		return v
	}
	return def
}

func (t *Transport) idleTimeout() time.Duration {
	return positiveOr(t.IdleConnTimeout, defaultIdleTimeout)
}

func (t *Transport) writeTimeout() time.Duration {
	return positiveOr(t.writeTimeoutOverride, defaultWriteTimeout)
}

// readIdleTimeout is negative when health checks are off.
func (t *Transport) readIdleTimeout() time.Duration {
	return cmp.Or(t.ReadIdleTimeout, defaultReadIdleTimeout)
}

func (t *Transport) pingTimeout() time.Duration {
	return positiveOr(t.PingTimeout, defaultPingTimeout)
}

func (t *Transport) maxHeaderBytes() uint32 {
	return positiveOr(t.MaxResponseHeaderBytes, defaultMaxHeaderBytes)
}

func (t *Transport) getBuf() *[]byte {
	if b, ok := t.bufs.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, bodyBufSize)
	return &b
}

func (t *Transport) getFieldList() *[]hpack.HeaderField {
	if l, ok := t.fieldLists.Get().(*[]hpack.HeaderField); ok {
		return l
	}
	l := make([]hpack.HeaderField, 0, 16)
	return &l
}

func (t *Transport) getDataBuf() *[]byte {
	if b, ok := t.dataBufs.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, 0, dataBufSize)
	return &b
}

// RoundTrip sends req to req.URL.Host and returns the response once its headers arrive.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	list := t.getFieldList()
	defer t.fieldLists.Put(list)
	fields, err := checkRequest(req, (*list)[:0])
	if cap(fields) > cap(*list) {
		*list = fields[:0] // keep the grown array for the next request
	}
	if err != nil {
		closeBody(req)
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		resp, err := t.roundTripOnce(req, fields)
		if err == nil || !isUnprocessed(err) || attempt == maxAttempts || req.Context().Err() != nil {
			return resp, err
		}
		next, rerr := rewind(req)
		if rerr != nil {
			return nil, fmt.Errorf("%w (not retried: %w)", err, rerr)
		}
		t.Log.V(1).Info("Retrying request the server did not process", "addr", req.URL.Host, "attempt", attempt, "reason", err.Error())
		req = next
	}
}

func (t *Transport) roundTripOnce(req *http.Request, fields []hpack.HeaderField) (*http.Response, error) {
	if err := req.Context().Err(); err != nil {
		closeBody(req)
		return nil, err
	}
	cc, err := t.getConn(req.Context(), req.URL.Host)
	if err != nil {
		closeBody(req)
		return nil, err
	}
	return cc.roundTrip(req, fields)
}

// rewind returns req ready to be sent again, or an error when its body cannot be.
func rewind(req *http.Request) (*http.Request, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return req, nil
	}
	if req.GetBody == nil {
		return nil, errors.New("request body cannot be sent again (no GetBody)")
	}
	body, err := req.GetBody()
	if err != nil {
		return nil, fmt.Errorf("getting request body again: %w", err)
	}
	next := *req
	next.Body = body
	return &next, nil
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

// getConn returns a connection to addr with a stream reserved on it, dialling one when
// none has capacity.
func (t *Transport) getConn(ctx context.Context, addr string) (*conn, error) {
	for range maxDialRounds {
		t.mu.Lock()
		p := t.poolLocked(addr)
		if cc := p.reserve(); cc != nil {
			t.mu.Unlock()
			return cc, nil
		}
		d := p.dialing
		if d == nil {
			d = &dialCall{done: make(chan struct{})}
			p.dialing = d
			go t.dial(context.WithoutCancel(ctx), addr, p, d)
		}
		t.mu.Unlock()
		select {
		case <-d.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if d.err != nil {
			return nil, d.err
		}
	}
	return nil, fmt.Errorf("h2client: no connection to %s with stream capacity after %d dials", addr, maxDialRounds)
}

func (t *Transport) poolLocked(addr string) *pool {
	if t.pools == nil {
		t.pools = map[string]*pool{}
	}
	p := t.pools[addr]
	if p == nil {
		p = &pool{}
		t.pools[addr] = p
	}
	return p
}

// reserve reserves a stream on the first connection with capacity.
func (p *pool) reserve() *conn {
	for _, cc := range p.conns {
		if cc.tryReserve() {
			return cc
		}
	}
	return nil
}

// dial opens a connection for the callers waiting on d and adds it to p.
func (t *Transport) dial(ctx context.Context, addr string, p *pool, d *dialCall) {
	cc, err := t.connect(ctx, addr)
	t.mu.Lock()
	p.dialing = nil
	if err == nil && !cc.isClosed() {
		p.conns = append(p.conns, cc)
	}
	t.mu.Unlock()
	d.err = err
	close(d.done)
}

func (t *Transport) connect(ctx context.Context, addr string) (*conn, error) {
	if t.DialTLS == nil {
		return nil, errors.New("h2client: Transport.DialTLS is not set")
	}
	nc, err := t.DialTLS(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("h2client: dialing %s: %w", addr, err)
	}
	if err := checkALPN(nc); err != nil {
		_ = nc.Close()
		return nil, fmt.Errorf("h2client: connection to %s: %w", addr, err)
	}
	cc, err := newConn(t, addr, nc)
	if err != nil {
		return nil, fmt.Errorf("h2client: starting HTTP/2 with %s: %w", addr, err)
	}
	return cc, nil
}

// removeConn drops cc from its address's pool.
func (t *Transport) removeConn(cc *conn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.pools[cc.addr]
	if p == nil {
		return
	}
	for i, c := range p.conns {
		if c == cc {
			p.conns = append(p.conns[:i], p.conns[i+1:]...)
			break
		}
	}
	if len(p.conns) == 0 && p.dialing == nil {
		delete(t.pools, cc.addr)
	}
}

// CloseIdleConnections closes the connections that carry no stream.
func (t *Transport) CloseIdleConnections() {
	var idle []*conn
	t.mu.Lock()
	for _, p := range t.pools {
		for _, cc := range p.conns {
			if cc.markClosedIfIdle() {
				idle = append(idle, cc)
			}
		}
	}
	t.mu.Unlock()
	for _, cc := range idle {
		t.removeConn(cc)
		cc.closeConn()
	}
}

// checkRequest refuses what cannot be sent, before anything is, and returns the header
// fields to send.
func checkRequest(req *http.Request, fields []hpack.HeaderField) ([]hpack.HeaderField, error) {
	if req.URL == nil || req.URL.Host == "" {
		return nil, errors.New("h2client: request has no URL host")
	}
	if req.Method == http.MethodConnect {
		return nil, errors.New("h2client: CONNECT is not supported")
	}
	if req.ContentLength > 0 && !hasBody(req) {
		return nil, fmt.Errorf("%w: %d declared, no body", errBodyTooShort, req.ContentLength)
	}
	return appendRequestFields(fields, req)
}
