package h2server

import (
	"context"
	"fmt"
	"net/http"
	"runtime/debug"

	"golang.org/x/net/http2"
)

// stream is one request and its response.
type stream struct {
	c      *conn
	id     uint32
	ctx    context.Context
	cancel context.CancelFunc
	req    *http.Request
	rw     responseWriter
	body   requestBody

	// Reader goroutine only.
	declaredLen int64 // the request's content-length, -1 when absent
	received    int64

	// Under c.mu.
	sendWindow   int64
	recvWindow   int64
	recvCredit   int64 // consumed bytes not yet returned to the peer
	remoteClosed bool  // END_STREAM received, or the stream was reset
	localClosed  bool  // END_STREAM or RST_STREAM sent
	reset        bool  // reset by either side
}

func newStream(c *conn, id uint32) *stream {
	st := &stream{c: c, id: id, declaredLen: -1}
	st.ctx, st.cancel = context.WithCancel(c.ctx)
	st.rw.st = st
	st.body.st = st
	st.body.cond.L = &st.body.mu
	return st
}

// serve runs the handler on a pool goroutine, then ends the stream (also when the
// handler called runtime.Goexit, which ends the goroutine too).
func (st *stream) serve() {
	defer st.c.handlers.Done()
	ok := false
	defer func() { st.finish(ok) }()
	ok = st.runHandler()
}

// runHandler calls the handler; ok is false when it panicked.
func (st *stream) runHandler() (ok bool) {
	defer func() {
		v := recover()
		if v == nil {
			return
		}
		if v != http.ErrAbortHandler { //nolint:errorlint // the sentinel is panicked with as it is
			st.c.srv.Log.Info("HTTP/2 handler panicked", "peer", st.c.remoteAddr, "stream", st.id,
				"method", st.req.Method, "path", st.req.URL.Path, "value", fmt.Sprint(v), "stack", string(debug.Stack()))
		}
	}()
	h := st.c.srv.Handler
	if h == nil {
		h = http.NotFoundHandler()
	}
	h.ServeHTTP(&st.rw, st.req)
	return true
}

// finish sends what the handler left (or resets the stream when it panicked or its body
// fell short of its Content-Length), returns the request body's unread bytes to the
// connection window, and forgets the stream.
func (st *stream) finish(ok bool) {
	c := st.c
	if ok && !st.rw.wroteHeader {
		st.rw.WriteHeader(http.StatusOK)
	}
	unread := st.body.close()
	c.lockToFlush()
	err := errAborted
	if ok {
		err = st.rw.endLocked()
	}
	if err != nil && !st.localClosed && !st.reset {
		c.writeResetLocked(st, http2.ErrCodeInternal)
	}
	if !st.remoteClosed && !st.reset {
		// The response is complete before the request: stop the peer sending it.
		c.writeResetLocked(st, http2.ErrCodeNo)
	}
	c.creditLocked(nil, int64(unread))
	c.forgetLocked(st)
	_ = c.unlockFlushing()
	st.rw.release()
	st.cancel()
}

// abort ends the stream for its handler: its context is cancelled and its body fails.
func (st *stream) abort(err error) {
	st.cancel()
	st.body.fail(err)
}

// writeResetLocked sends RST_STREAM(code) for st and closes it.
func (c *conn) writeResetLocked(st *stream, code http2.ErrCode) {
	if c.werr != nil || c.closed {
		c.markResetLocked(st)
		return
	}
	if err := c.wfr.WriteRSTStream(st.id, code); err != nil {
		_ = c.writeFailedLocked(err)
	}
	st.localClosed = true
	c.markResetLocked(st)
}

// forgetLocked removes a finished stream; with none left, the idle timeout starts (or the
// grace period of a connection going away).
func (c *conn) forgetLocked(st *stream) {
	delete(c.streams, st.id)
	c.refused = 0
	if len(c.streams) > 0 || c.closed {
		return
	}
	wait := c.srv.idleTimeout()
	if c.goingAway {
		wait = goAwayGrace
	}
	_ = c.nc.SetReadDeadline(nowPlus(wait))
}
