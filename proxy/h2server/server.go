package h2server

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/go-logr/logr"
)

// Defaults for the Server's zero fields.
const (
	DefaultMaxConcurrentStreams = 250
	DefaultMaxHeaderListSize    = 64 << 10
	DefaultInitialWindow        = 1 << 20
	DefaultIdleTimeout          = 5 * time.Minute
	DefaultWriteTimeout         = 30 * time.Second
)

// workerIdle is how long a handler goroutine waits for another stream before it exits.
const workerIdle = 30 * time.Second

// Server serves HTTP/2 connections whose TLS handshake is done. Its exported fields must
// not change once ServeConn has been called. Request contexts carry
// http.ServerContextKey (a stand-in *http.Server: proxy/forward, like
// httputil.ReverseProxy, needs it to abort a response whose upstream broke off) and
// http.LocalAddrContextKey.
type Server struct {
	Handler http.Handler
	// ConnContext, when set, derives each connection's base context (the inbound server
	// stores the peer's verified SPIFFE ID there); every request's context descends from it.
	ConnContext func(ctx context.Context, c net.Conn) context.Context
	// MaxConcurrentStreams bounds the streams whose handler runs at once, per connection
	// (default 250); further streams get RST_STREAM(REFUSED_STREAM).
	MaxConcurrentStreams uint32
	// MaxHeaderListSize bounds a request's header list (default 64 KiB): a list beyond it
	// is answered 431; one field beyond it, or a header block more than twice it, ends
	// the connection (x/net's Framer's rules: COMPRESSION_ERROR, PROTOCOL_ERROR).
	MaxHeaderListSize uint32
	// InitialStreamWindow and InitialConnWindow are the receive windows (default 1 MiB
	// each); the connection's cannot go below the protocol's 65535.
	InitialStreamWindow, InitialConnWindow uint32
	// IdleTimeout closes a connection with no open stream for this long (default 5 min).
	IdleTimeout time.Duration
	// WriteTimeout ends a connection when a write to it cannot complete in half to all of
	// this long (default 30 s; the deadline moves on once half has passed): a peer that stops reading its socket must not hold the handlers of
	// its streams, and the application connections behind them, for ever.
	WriteTimeout time.Duration
	// Log receives handler panics at V(0) and connection errors at V(1).
	Log logr.Logger

	initOnce sync.Once
	std      *http.Server // what requests find under http.ServerContextKey
	pool     *workerPool
	bufs     sync.Pool // *[]byte of bodyBufSize: response body buffers

	mu       sync.Mutex
	conns    map[*conn]struct{}
	shutdown bool
	wg       sync.WaitGroup // one per connection being served
}

// ServeConn serves c, a handshaken *tls.Conn that negotiated "h2", until the peer closes
// it, an error ends it, or Shutdown drains it. It returns nil when the connection ended
// normally, http.ErrServerClosed after Shutdown, and the protocol or I/O error otherwise.
func (s *Server) ServeConn(c net.Conn) error {
	s.initOnce.Do(s.init)
	cn := newConn(s, c)
	if !s.track(cn) {
		_ = c.Close()
		return http.ErrServerClosed
	}
	defer s.untrack(cn)
	return cn.serve()
}

// Shutdown sends GOAWAY on every connection, refuses new streams, and waits for the
// streams in flight to finish and their connections to close. When ctx ends first it
// closes the connections left and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.initOnce.Do(s.init)
	s.mu.Lock()
	s.shutdown = true
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	s.pool.stop()
	for _, c := range conns {
		c.goAwayGracefully()
	}
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	for c := range s.conns {
		c.closeNow()
	}
	s.mu.Unlock()
	return fmt.Errorf("shutting down the HTTP/2 server: %w", ctx.Err())
}

func (s *Server) init() {
	// proxy/forward (like httputil.ReverseProxy) panics with http.ErrAbortHandler when an
	// upstream response breaks off only when it finds a server under this key; otherwise
	// it ends the response as if it were complete, and the client gets a truncated body.
	s.std = &http.Server{Handler: s.Handler, IdleTimeout: s.idleTimeout(), MaxHeaderBytes: int(s.maxHeaderList())}
	s.pool = newWorkerPool(workerIdle)
	s.conns = map[*conn]struct{}{}
}

func (s *Server) getBuf() *[]byte {
	if p, ok := s.bufs.Get().(*[]byte); ok {
		return p
	}
	b := make([]byte, 0, bodyBufSize)
	return &b
}

func (s *Server) track(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

func (s *Server) maxStreams() uint32 {
	return orDefault(s.MaxConcurrentStreams, DefaultMaxConcurrentStreams)
}

func (s *Server) maxHeaderList() uint32 {
	return orDefault(s.MaxHeaderListSize, DefaultMaxHeaderListSize)
}

func (s *Server) streamWindow() uint32 {
	return min(orDefault(s.InitialStreamWindow, DefaultInitialWindow), maxWindow)
}

func (s *Server) connWindow() uint32 {
	return min(max(orDefault(s.InitialConnWindow, DefaultInitialWindow), defaultWindow), maxWindow)
}

func (s *Server) idleTimeout() time.Duration {
	if s.IdleTimeout <= 0 {
		return DefaultIdleTimeout
	}
	return s.IdleTimeout
}

func (s *Server) writeTimeout() time.Duration {
	if s.WriteTimeout <= 0 {
		return DefaultWriteTimeout
	}
	return s.WriteTimeout
}

func orDefault(v, d uint32) uint32 {
	if v == 0 {
		return d
	}
	return v
}

// connState returns c's TLS state when it is a TLS connection.
func connState(c net.Conn) *tls.ConnectionState {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return nil
	}
	cs := tc.ConnectionState()
	return &cs
}

// workerPool runs handlers on reused goroutines: one that finished a stream waits up to
// idle for the next before it exits, so its grown stack serves again.
type workerPool struct {
	idle time.Duration
	work chan *stream
	quit chan struct{}
	once sync.Once
}

func newWorkerPool(idle time.Duration) *workerPool {
	return &workerPool{idle: idle, work: make(chan *stream), quit: make(chan struct{})}
}

// run serves st on an idle worker, or on a new one when none waits.
func (p *workerPool) run(st *stream) {
	select {
	case p.work <- st:
	default:
		go p.worker(st)
	}
}

func (p *workerPool) worker(st *stream) {
	t := time.NewTimer(p.idle)
	defer t.Stop()
	for {
		st.serve()
		t.Reset(p.idle)
		select {
		case st = <-p.work:
		case <-t.C:
			return
		case <-p.quit:
			return
		}
	}
}

// stop lets idle workers exit at once; busy ones exit when their stream ends.
func (p *workerPool) stop() { p.once.Do(func() { close(p.quit) }) }
