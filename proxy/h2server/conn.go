package h2server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/braidmesh/braid/proxy/internal/flushlater"
	"github.com/braidmesh/braid/proxy/internal/h2hdr"
)

const (
	defaultWindow   = 65535 // every flow-control window before SETTINGS or WINDOW_UPDATE
	maxWindow       = 1<<31 - 1
	defaultMaxFrame = 16384   // SETTINGS_MAX_FRAME_SIZE until the peer says otherwise
	readBufSize     = 8 << 10 // buffered reads under the framer
	writeBufSize    = 16 << 10
	// lingerTimeout bounds how long a connection being closed after a GOAWAY waits for the
	// peer to close its side, so that the peer reads the GOAWAY before a TCP reset.
	lingerTimeout = time.Second
	// goAwayGrace is how long a connection that sent a graceful GOAWAY and has no stream
	// left waits for the peer to close it.
	goAwayGrace = time.Second
)

// connError is a connection error found by this package (the framer reports its own as
// http2.ConnectionError): a GOAWAY with code ends the connection.
type connError struct {
	code   http2.ErrCode
	reason string
}

func (e connError) Error() string {
	return fmt.Sprintf("HTTP/2 connection error %v: %s", e.code, e.reason)
}

var (
	errConnClosed  = errors.New("h2server: connection closed")
	errStreamReset = errors.New("h2server: stream reset")
	errStreamEnded = errors.New("h2server: stream already ended")
)

// conn is one HTTP/2 connection. The goroutine in serve reads frames; handlers write
// their own frames under mu.
type conn struct {
	srv        *Server
	nc         net.Conn
	ctx        context.Context
	cancel     context.CancelFunc
	tlsState   *tls.ConnectionState
	remoteAddr string
	br         *bufio.Reader
	rfr        *http2.Framer
	blocks     *blockReader // reader goroutine only
	handlers   sync.WaitGroup

	// Read by handlers, written once before the first stream.
	streamWindow, connWindow int64 // our receive windows, as configured

	// Reader goroutine only.
	sawSettings bool

	flushers atomic.Int32        // writers in lockToFlush..unlockFlushing
	flusher  *flushlater.Flusher // flushes answers on a busy connection

	mu             sync.Mutex
	cond           sync.Cond // on mu: a send window grew, or a stream or the conn ended
	bw             *bufio.Writer
	wfr            *http2.Framer
	enc            *hpack.Encoder
	hbuf           bytes.Buffer
	lower          h2hdr.NameCache // canonical key → wire name
	streams        map[uint32]*stream
	maxSeen        uint32 // highest stream ID the peer opened
	refused        uint32 // streams refused since a stream last finished
	sendWindow     int64  // the peer's connection window
	peerInitWindow int64
	peerMaxFrame   uint32
	recvWindow     int64 // what the peer may still send on the connection
	recvCredit     int64 // consumed connection bytes not yet returned
	recvInitWindow int64 // the stream receive window the peer knows of
	settingsAcked  bool
	lastLen        int64  // the last implied content-length, and
	lastLenString  string // its decimal form: answers of one size format it once
	needFlush      bool   // frames from the reader wait in bw
	windowWaiters  int    // writers waiting in awaitWindowLocked
	goingAway      bool
	closed         bool
	werr           error
}

func newConn(s *Server, nc net.Conn) *conn {
	base := context.WithValue(context.Background(), http.ServerContextKey, s.std)
	base = context.WithValue(base, http.LocalAddrContextKey, nc.LocalAddr())
	if s.ConnContext != nil {
		if ctx := s.ConnContext(base, nc); ctx != nil {
			base = ctx
		}
	}
	c := &conn{
		srv:            s,
		nc:             nc,
		tlsState:       connState(nc),
		remoteAddr:     nc.RemoteAddr().String(),
		br:             bufio.NewReaderSize(nc, readBufSize),
		streamWindow:   int64(s.streamWindow()),
		connWindow:     int64(s.connWindow()),
		lower:          h2hdr.NewNameCache(h2hdr.Lower),
		streams:        map[uint32]*stream{},
		sendWindow:     defaultWindow,
		peerInitWindow: defaultWindow,
		peerMaxFrame:   defaultMaxFrame,
		recvInitWindow: defaultWindow,
		flusher:        flushlater.New(),
	}
	c.ctx, c.cancel = context.WithCancel(base)
	c.cond.L = &c.mu
	c.rfr = http2.NewFramer(nil, c.br)
	c.blocks = newBlockReader(s.maxHeaderList())
	c.rfr.SetMaxReadFrameSize(defaultMaxFrame) // what our SETTINGS leave it at
	c.rfr.SetReuseFrames()                     // DATA payloads are copied before the next read
	c.bw = bufio.NewWriterSize(&deadlineWriter{nc: nc, timeout: s.writeTimeout()}, writeBufSize)
	c.wfr = http2.NewFramer(c.bw, nil)
	c.enc = hpack.NewEncoder(&c.hbuf)
	return c
}

// deadlineWriter keeps a write deadline on the connection, so that a write the peer does
// not let through fails instead of blocking its writers for ever. It moves the deadline on
// only once half of it has passed: every write has at least half the timeout, and most
// writes leave the connection's timer alone. Writes hold the connection's lock.
type deadlineWriter struct {
	nc        net.Conn
	timeout   time.Duration
	refreshAt time.Time
}

func (w *deadlineWriter) Write(p []byte) (int, error) {
	if now := time.Now(); now.After(w.refreshAt) {
		if err := w.nc.SetWriteDeadline(now.Add(w.timeout)); err != nil {
			return 0, fmt.Errorf("setting the write deadline: %w", err)
		}
		w.refreshAt = now.Add(w.timeout / 2)
	}
	return w.nc.Write(p)
}

func (c *conn) serve() error {
	go c.flusher.Run(c.flush)
	err := c.run()
	c.teardown()
	c.flusher.Stop()
	return err
}

func (c *conn) run() error {
	_ = c.nc.SetReadDeadline(time.Now().Add(c.srv.idleTimeout()))
	if err := c.writeServerPreface(); err != nil {
		return err
	}
	if err := c.readClientPreface(); err != nil {
		c.closeWithGoAway(http2.ErrCodeProtocol, "bad client preface")
		return err
	}
	for {
		c.flushPending()
		f, err := c.rfr.ReadFrame()
		if err == nil {
			err = c.handleFrame(f)
		}
		if err == nil {
			continue
		}
		if done, rerr := c.handleError(err); done {
			return rerr
		}
	}
}

func (c *conn) writeServerPreface() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.wfr.WriteSettings(
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: c.srv.maxStreams()},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: uint32(c.streamWindow)},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: c.srv.maxHeaderList()},
	)
	if err == nil && c.connWindow > defaultWindow {
		err = c.wfr.WriteWindowUpdate(0, uint32(c.connWindow-defaultWindow))
	}
	c.recvWindow = c.connWindow
	if err != nil {
		return c.writeFailedLocked(err)
	}
	return c.flushLocked()
}

func (c *conn) readClientPreface() error {
	buf := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c.br, buf); err != nil {
		return fmt.Errorf("reading the HTTP/2 client preface: %w", err)
	}
	if string(buf) != http2.ClientPreface {
		return fmt.Errorf("reading the HTTP/2 client preface: got %q", buf)
	}
	return nil
}

// handleError acts on an error from reading or handling a frame: a stream error resets
// the stream and reading goes on; anything else ends the connection (done), with nil
// when it ended normally.
func (c *conn) handleError(err error) (done bool, _ error) {
	var se http2.StreamError
	var ce http2.ConnectionError
	var le connError
	switch {
	case errors.As(err, &se):
		c.resetStream(se.StreamID, se.Code, se)
		return false, nil
	case errors.As(err, &le):
		c.closeWithGoAway(le.code, le.reason)
		return true, le
	case errors.As(err, &ce):
		reason := "invalid frame"
		if d := c.rfr.ErrorDetail(); d != nil {
			reason = d.Error()
		}
		c.closeWithGoAway(http2.ErrCode(ce), reason)
		return true, connError{code: http2.ErrCode(ce), reason: reason}
	case errors.Is(err, http2.ErrFrameTooLarge):
		c.closeWithGoAway(http2.ErrCodeFrameSize, "frame larger than SETTINGS_MAX_FRAME_SIZE")
		return true, connError{code: http2.ErrCodeFrameSize, reason: err.Error()}
	case errors.Is(err, os.ErrDeadlineExceeded):
		c.closeIdle()
		return true, nil
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), c.isClosing():
		return true, c.writeErr()
	}
	return true, fmt.Errorf("reading HTTP/2 frames: %w", err)
}

// closeIdle ends a connection whose read deadline passed: no stream was open for the idle
// timeout, or a graceful GOAWAY was sent and the peer did not close.
func (c *conn) closeIdle() {
	c.mu.Lock()
	sent := c.goingAway
	c.mu.Unlock()
	if sent {
		return
	}
	c.closeWithGoAway(http2.ErrCodeNo, "idle")
}

// writeErr is the error that failed a write, which closed the connection, or nil.
func (c *conn) writeErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.werr
}

func (c *conn) isClosing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.werr != nil || c.closed
}

// closeWithGoAway sends GOAWAY with code, then closes the writing side and waits a little
// for the peer to close, so that it reads the GOAWAY rather than a TCP reset.
func (c *conn) closeWithGoAway(code http2.ErrCode, reason string) {
	c.mu.Lock()
	c.goingAway = true
	var debug []byte
	if code != http2.ErrCodeNo {
		debug = []byte(reason)
	}
	if err := c.wfr.WriteGoAway(c.maxSeen, code, debug); err != nil {
		_ = c.writeFailedLocked(err)
	}
	err := c.flushLocked()
	c.mu.Unlock()
	if code != http2.ErrCodeNo {
		c.srv.Log.V(1).Info("Closing HTTP/2 connection on error", "peer", c.remoteAddr, "code", code.String(), "reason", reason)
	}
	if err != nil {
		return
	}
	if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(lingerTimeout))
	_, _ = io.Copy(io.Discard, c.br)
}

// goAwayGracefully tells the peer no new stream will be served; the connection closes once
// its streams finish.
func (c *conn) goAwayGracefully() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.goingAway || c.closed {
		return
	}
	c.goingAway = true
	if err := c.wfr.WriteGoAway(c.maxSeen, http2.ErrCodeNo, nil); err != nil {
		_ = c.writeFailedLocked(err)
		return
	}
	_ = c.flushLocked()
	if len(c.streams) == 0 {
		_ = c.nc.SetReadDeadline(time.Now().Add(goAwayGrace))
	}
}

// closeNow closes the connection under any write in progress.
func (c *conn) closeNow() {
	if tc, ok := c.nc.(*tls.Conn); ok {
		_ = tc.NetConn().Close()
		return
	}
	_ = c.nc.Close()
}

// teardown ends every stream once reading stopped, and waits for their handlers.
func (c *conn) teardown() {
	_ = c.nc.Close()
	c.cancel()
	c.mu.Lock()
	c.closed = true
	streams := make([]*stream, 0, len(c.streams))
	for _, st := range c.streams {
		streams = append(streams, st)
	}
	c.cond.Broadcast()
	c.mu.Unlock()
	for _, st := range streams {
		st.body.fail(errConnClosed)
	}
	c.handlers.Wait()
}

// flushPending writes out frames the reader queued (SETTINGS and PING acknowledgements,
// resets, window updates) once no more input is buffered, so a burst of frames is
// answered with one write.
func (c *conn) flushPending() {
	if c.br.Buffered() > 0 {
		return
	}
	c.mu.Lock()
	if c.needFlush {
		_ = c.flushLocked()
	}
	c.mu.Unlock()
}

// lengthStringLocked formats n as a content-length, reusing the last one's string.
func (c *conn) lengthStringLocked(n int64) string {
	if n != c.lastLen || c.lastLenString == "" {
		c.lastLen, c.lastLenString = n, strconv.FormatInt(n, 10)
	}
	return c.lastLenString
}
