package h2client

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/braidmesh/braid/proxy/internal/flushlater"
	"github.com/braidmesh/braid/proxy/internal/h2hdr"
)

const maxWindow = 1<<31 - 1

// conn is one HTTP/2 connection to a server. Lock order: wmu, then mu.
type conn struct {
	t      *Transport
	addr   string
	nc     net.Conn
	log    logr.Logger
	fr     *http2.Framer  // written under wmu, read by readLoop only
	blocks *h2hdr.Decoder // readLoop only

	wmu          sync.Mutex
	bw           *bufio.Writer
	flusher      *flushlater.Flusher // flushes request headers on a busy connection
	henc         *hpack.Encoder
	hbuf         bytes.Buffer
	writeTimeout time.Duration
	refreshAt    time.Time // when the write deadline is next moved on

	ready     chan struct{} // closed at the server's first SETTINGS or at failure
	readyOnce sync.Once
	closeOnce sync.Once
	idleTimer *time.Timer
	// health checks that a connection with streams open still hears from its server
	// (checkHealth); never started when Transport.ReadIdleTimeout is negative.
	health *time.Timer
	reads  atomic.Uint64 // frames read, counted by readLoop

	mu         sync.Mutex
	cond       *sync.Cond // send windows grew, or streams or the connection ended
	streams    map[uint32]*stream
	nextID     uint32
	used       int // streams reserved or open
	maxStreams int
	maxFrame   int32
	peerWindow int32 // the server's SETTINGS_INITIAL_WINDOW_SIZE
	sendWindow int64
	recvWindow int64
	unacked    int64 // connection credit consumed and not yet returned
	goAway     bool
	lastID     uint32 // from GOAWAY
	closed     bool
	err        error
	idleAt     time.Time
	// readsSeen is reads at the last health check; pinged says that check sent a PING.
	readsSeen uint64
	pinged    bool
}

func newConn(t *Transport, addr string, nc net.Conn) (*conn, error) {
	cc := &conn{
		t: t, addr: addr, nc: nc, log: t.Log.WithValues("addr", addr),
		ready: make(chan struct{}), streams: map[uint32]*stream{}, nextID: 1,
		maxStreams: maxPeerStreamsDefault, maxFrame: 16384, peerWindow: 65535,
		sendWindow: 65535, recvWindow: connRecvWindow, writeTimeout: t.writeTimeout(),
		flusher: flushlater.New(),
	}
	cc.cond = sync.NewCond(&cc.mu)
	cc.bw = bufio.NewWriterSize(nc, 16<<10)
	cc.fr = http2.NewFramer(cc.bw, bufio.NewReaderSize(nc, 16<<10))
	cc.blocks = h2hdr.NewDecoder(t.maxHeaderBytes(), nil)
	cc.fr.SetMaxReadFrameSize(16384)
	cc.fr.SetReuseFrames()
	cc.henc = hpack.NewEncoder(&cc.hbuf)
	cc.hbuf.Grow(headerBlockInitialSize)
	cc.idleTimer = time.AfterFunc(time.Hour, cc.onIdleTimer)
	cc.idleTimer.Stop()
	cc.health = time.AfterFunc(time.Hour, cc.checkHealth)
	cc.health.Stop()
	if err := cc.writePreface(); err != nil {
		_ = nc.Close()
		return nil, err
	}
	go cc.readLoop()
	go cc.flusher.Run(cc.flush)
	if err := cc.awaitSettings(); err != nil {
		return cc, err
	}
	if every := t.readIdleTimeout(); every > 0 {
		cc.health.Reset(every)
	}
	return cc, nil
}

// checkHealth runs every ReadIdleTimeout, or PingTimeout after it sent a PING. A
// connection with streams open that read no frame since the last check is sent a PING;
// one that read nothing since the PING fails.
func (cc *conn) checkHealth() {
	reads := cc.reads.Load()
	cc.mu.Lock()
	if cc.closed {
		cc.mu.Unlock()
		return
	}
	quiet := reads == cc.readsSeen
	if cc.pinged && quiet {
		cc.mu.Unlock()
		timeout := cc.t.pingTimeout()
		cc.log.V(1).Info("Closing connection: the server did not answer a PING", "timeout", timeout.String())
		cc.fail(fmt.Errorf("h2client: no answer from %s to a PING within %v", cc.addr, timeout))
		return
	}
	cc.readsSeen = reads
	cc.pinged = quiet && len(cc.streams) > 0
	ping := cc.pinged
	cc.mu.Unlock()
	if !ping {
		cc.health.Reset(cc.t.readIdleTimeout())
		return
	}
	payload := [8]byte{'b', 'r', 'a', 'i', 'd', 'h', 'c', 'k'}
	if cc.write(func() error { return cc.fr.WritePing(false, payload) }) == nil {
		cc.health.Reset(cc.t.pingTimeout())
	}
}

func (cc *conn) writePreface() error {
	cc.refreshWriteDeadline()
	if _, err := cc.bw.WriteString(http2.ClientPreface); err != nil {
		return fmt.Errorf("writing preface: %w", err)
	}
	err := cc.fr.WriteSettings(
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: streamRecvWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: cc.t.maxHeaderBytes()},
	)
	if err == nil {
		err = cc.fr.WriteWindowUpdate(0, connRecvWindow-65535)
	}
	if err == nil {
		err = cc.bw.Flush()
	}
	if err != nil {
		return fmt.Errorf("writing preface: %w", err)
	}
	return nil
}

// awaitSettings waits for the server's SETTINGS, which tell the stream capacity.
func (cc *conn) awaitSettings() error {
	timer := time.NewTimer(settingsTimeout)
	defer timer.Stop()
	select {
	case <-cc.ready:
	case <-timer.C:
		cc.fail(errors.New("no SETTINGS from the server"))
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.err
}

func (cc *conn) isClosed() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.closed
}

// tryReserve reserves a stream if the connection can take one more.
func (cc *conn) tryReserve() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.closed || cc.goAway || cc.used >= cc.maxStreams || cc.nextID > maxWindow {
		return false
	}
	cc.used++
	cc.idleTimer.Stop()
	return true
}

// releaseLocked gives back one reservation.
func (cc *conn) releaseLocked() {
	cc.used--
	if cc.used > 0 {
		return
	}
	if cc.goAway {
		go cc.closeConn()
		return
	}
	cc.idleAt = time.Now()
	cc.idleTimer.Reset(cc.t.idleTimeout())
}

func (cc *conn) onIdleTimer() {
	cc.mu.Lock()
	if cc.used > 0 || cc.closed {
		cc.mu.Unlock()
		return
	}
	if left := cc.t.idleTimeout() - time.Since(cc.idleAt); left > 0 {
		cc.idleTimer.Reset(left)
		cc.mu.Unlock()
		return
	}
	cc.closed = true
	cc.mu.Unlock()
	cc.log.V(1).Info("Closed idle connection")
	cc.t.removeConn(cc)
	cc.closeConn()
}

// markClosedIfIdle marks the connection closed when it has no stream.
func (cc *conn) markClosedIfIdle() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.used > 0 || cc.closed {
		return false
	}
	cc.closed = true
	return true
}

func (cc *conn) closeConn() {
	cc.closeOnce.Do(func() {
		cc.idleTimer.Stop()
		cc.health.Stop()
		cc.flusher.Stop()
		_ = cc.nc.Close()
	})
}

// fail ends the connection with err: every open stream fails and the connection leaves
// the pool.
func (cc *conn) fail(err error) {
	cc.mu.Lock()
	if cc.err == nil {
		cc.err = err
	}
	cc.closed = true
	streams := make([]*stream, 0, len(cc.streams))
	for _, st := range cc.streams {
		streams = append(streams, st)
	}
	for _, st := range streams {
		cc.failLocked(st, cc.streamErrorLocked(st, err))
	}
	cc.cond.Broadcast()
	cc.mu.Unlock()
	cc.readyOnce.Do(func() { close(cc.ready) })
	cc.t.removeConn(cc)
	cc.closeConn()
}

// streamErrorLocked is the error a stream gets when the connection ends with err.
func (cc *conn) streamErrorLocked(st *stream, err error) error {
	e := fmt.Errorf("h2client: connection to %s lost: %w", cc.addr, err)
	if cc.goAway && st.id > cc.lastID {
		return &unprocessedError{cause: e}
	}
	return e
}

// readLoop reads and handles frames until the connection fails.
func (cc *conn) readLoop() {
	first := true
	for {
		f, err := cc.fr.ReadFrame()
		cc.reads.Add(1)
		if err == nil && first {
			if _, ok := f.(*http2.SettingsFrame); !ok {
				err = http2.ConnectionError(http2.ErrCodeProtocol)
			}
			first = false
		}
		if err == nil {
			err = cc.handleFrame(f)
		}
		if err == nil {
			continue
		}
		if se, ok := asStreamError(err); ok {
			cc.onStreamError(se)
			continue
		}
		cc.connectionError(err)
		return
	}
}

// asStreamError finds a stream error in err; only called for an error, since its target
// escapes to the heap.
func asStreamError(err error) (http2.StreamError, bool) {
	var se http2.StreamError
	ok := errors.As(err, &se)
	return se, ok
}

// connectionError tells the server about a protocol error, if it is one, and fails the
// connection.
func (cc *conn) connectionError(err error) {
	code, isProto := protocolCode(err)
	if isProto {
		cc.log.V(1).Info("Closing connection after protocol error", "code", code.String(), "error", err.Error())
		cc.wmu.Lock()
		_ = cc.nc.SetWriteDeadline(time.Now().Add(time.Second))
		if cc.fr.WriteGoAway(0, code, nil) == nil {
			_ = cc.bw.Flush()
		}
		cc.wmu.Unlock()
		err = fmt.Errorf("protocol error from server: %w", err)
	} else if !cc.isClosed() {
		cc.log.V(1).Info("Connection failed", "error", err.Error())
	}
	cc.fail(err)
}

func protocolCode(err error) (http2.ErrCode, bool) {
	var ce http2.ConnectionError
	var he h2hdr.ConnError
	switch {
	case errors.As(err, &ce):
		return http2.ErrCode(ce), true
	case errors.As(err, &he):
		return he.Code, true
	case errors.Is(err, http2.ErrFrameTooLarge):
		return http2.ErrCodeFrameSize, true
	}
	return 0, false
}

func (cc *conn) onStreamError(se http2.StreamError) {
	cc.mu.Lock()
	st := cc.streams[se.StreamID]
	cc.mu.Unlock()
	if st != nil {
		cc.resetStream(st, se.Code, fmt.Errorf("h2client: stream error from server: %w", se))
	}
}

// lockWrite takes the write lock and makes sure a write can take writeTimeout: a server
// that stops reading must not hold writers, and their callers, for ever.
func (cc *conn) lockWrite() {
	cc.wmu.Lock()
	cc.refreshWriteDeadline()
}

// refreshWriteDeadline moves the write deadline on once half of it has passed, so that
// most writes do not touch it. The caller holds wmu.
func (cc *conn) refreshWriteDeadline() {
	if now := time.Now(); now.After(cc.refreshAt) {
		_ = cc.nc.SetWriteDeadline(now.Add(cc.writeTimeout))
		cc.refreshAt = now.Add(cc.writeTimeout / 2)
	}
}

// batchStreams is how many requests in flight make a connection busy enough that a
// request's HEADERS wait for the flusher. With fewer, a request alone or nearly, latency
// comes first: they are flushed at once. (Deferring whenever another request was in
// flight cost the tail at 1000 qps in three bench-proxy A/B pairs: added p99 0.81 ->
// 1.03 ms on average, on a drifting host; a deferred flush can wait behind goroutines
// that write nothing to this connection.)
const batchStreams = 4

// flush writes out what writeHeaders left buffered for the flusher; a write error fails
// the connection.
func (cc *conn) flush() error {
	cc.lockWrite()
	err := cc.bw.Flush()
	cc.wmu.Unlock()
	if err != nil {
		err = fmt.Errorf("h2client: writing to %s: %w", cc.addr, err)
		cc.fail(err)
	}
	return err
}

// write runs fn under the write lock and flushes; a write error fails the connection.
func (cc *conn) write(fn func() error) error {
	cc.lockWrite()
	err := fn()
	if err == nil {
		err = cc.bw.Flush()
	}
	cc.wmu.Unlock()
	if err != nil {
		err = fmt.Errorf("h2client: writing to %s: %w", cc.addr, err)
		cc.fail(err)
	}
	return err
}

// returnCredit sends WINDOW_UPDATE for a stream (id > 0 and inc > 0) and for the
// connection (connInc > 0).
func (cc *conn) returnCredit(id uint32, inc, connInc int64) {
	if inc == 0 && connInc == 0 {
		return
	}
	_ = cc.write(func() error {
		if inc > 0 {
			if err := cc.fr.WriteWindowUpdate(id, uint32(inc)); err != nil {
				return err
			}
		}
		if connInc > 0 {
			return cc.fr.WriteWindowUpdate(0, uint32(connInc))
		}
		return nil
	})
}

// consumedLocked counts n bytes of connection window as consumed and returns the credit
// to send back, once half the window is used.
func (cc *conn) consumedLocked(n int64) int64 {
	cc.unacked += n
	if cc.unacked < connRecvWindow/2 {
		return 0
	}
	inc := cc.unacked
	cc.unacked = 0
	cc.recvWindow += inc
	return inc
}
