package h2client

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

var errBodyClosed = errors.New("h2client: read on closed response body")

// stream is one request and its response. Fields after mu's comment are guarded by the
// connection's mu.
type stream struct {
	cc            *conn
	req           *http.Request
	fields        []hpack.HeaderField // the request's header list, checked (checkRequest), until sent
	trace         *httptrace.ClientTrace
	ctxDone       <-chan struct{} // the request context's Done
	readable      chan struct{}   // signalled when the response, data, the end or a failure arrives
	body          responseBody
	response      http.Response // the final response, built by the read loop: resp points here
	wclosed       atomic.Bool   // no more frames may be written (END_STREAM or RST_STREAM sent); set under wmu
	rst           atomic.Bool   // RST_STREAM sent or received
	closeReqBody  sync.Once
	informational int  // read loop only
	headed        bool // read loop only: the final response headers arrived

	// guarded by cc.mu
	id           uint32
	inMap        bool
	resp         *http.Response
	err          error // why the stream failed
	done         bool  // failed, or both sides ended
	remoteClosed bool
	localClosed  bool
	bufp         *[]byte // from the transport's pool, with buf's array; nil when buf is nil
	buf          []byte
	off          int
	trailer      http.Header
	sendWindow   int64
	recvWindow   int64
	unacked      int64 // stream credit consumed and not yet returned
	wantLen      int64 // the response's content-length, -1 when unknown or not checked
	received     int64 // response body bytes received
}

// roundTrip sends req on a stream reserved by getConn and waits for the response headers.
func (cc *conn) roundTrip(req *http.Request, fields []hpack.HeaderField) (*http.Response, error) {
	st := &stream{
		cc: cc, req: req, fields: fields, trace: httptrace.ContextClientTrace(req.Context()),
		ctxDone: req.Context().Done(), readable: make(chan struct{}, 1),
	}
	st.body.st = st
	body := hasBody(req)
	if err := cc.writeHeaders(st, !body); err != nil {
		closeBody(req)
		return nil, err
	}
	if body {
		go st.sendBody()
	}
	return st.awaitResponse()
}

// awaitResponse waits for the response headers, or for the stream to fail. When the
// request's context ends first, the stream is reset (CANCEL).
func (st *stream) awaitResponse() (*http.Response, error) {
	cc := st.cc
	for {
		cc.mu.Lock()
		resp, err, done := st.resp, st.err, st.done
		cc.mu.Unlock()
		if resp != nil {
			return resp, nil
		}
		if done {
			return nil, err
		}
		select {
		case <-st.readable:
		case <-st.ctxDone:
			st.cancel()
		}
	}
}

// cancel resets the stream because the request's context ended.
func (st *stream) cancel() {
	st.cc.resetStream(st, http2.ErrCodeCancel, st.req.Context().Err())
}

// cancelledLocked reports whether the request's context ended while the stream is open;
// the caller holds cc.mu.
func (st *stream) cancelledLocked() bool {
	if !st.inMap {
		return false
	}
	select {
	case <-st.ctxDone:
		return true
	default:
		return false
	}
}

// writeHeaders opens the stream and writes its HEADERS (and CONTINUATION) frames.
func (cc *conn) writeHeaders(st *stream, endStream bool) error {
	cc.lockWrite()
	cc.mu.Lock()
	if cc.closed || cc.goAway || cc.nextID > maxWindow {
		cc.releaseLocked()
		err := cc.err
		cc.mu.Unlock()
		cc.wmu.Unlock()
		if err == nil {
			err = errors.New("connection closing")
		}
		return &unprocessedError{cause: fmt.Errorf("connection to %s: %w", cc.addr, err)}
	}
	st.id = cc.nextID
	cc.nextID += 2
	cc.streams[st.id] = st
	st.inMap = true
	st.sendWindow = int64(cc.peerWindow)
	st.recvWindow = streamRecvWindow
	st.localClosed = endStream
	maxFrame := int(cc.maxFrame)
	// On a busy connection other requests are about to start too: the flusher then
	// writes their headers and these together.
	together := cc.used >= batchStreams
	cc.mu.Unlock()
	if endStream {
		st.wclosed.Store(true)
	}
	err := cc.encodeHeaders(st.id, maxFrame, endStream, st.fields)
	st.fields = nil // the RoundTrip's, pooled once it returns
	if err == nil {
		if together {
			cc.flusher.Soon()
		} else {
			err = cc.bw.Flush()
		}
	}
	cc.wmu.Unlock()
	if err != nil {
		err = fmt.Errorf("h2client: writing request headers to %s: %w", cc.addr, err)
		cc.fail(err)
	}
	return err
}

// encodeHeaders encodes a header block and writes it as HEADERS and CONTINUATION
// frames into the write buffer. The caller holds wmu, and flushes.
func (cc *conn) encodeHeaders(id uint32, maxFrame int, endStream bool, fields []hpack.HeaderField) error {
	cc.hbuf.Reset()
	for _, f := range fields {
		_ = cc.henc.WriteField(f) // writes to hbuf, a bytes.Buffer: cannot fail
	}
	block := cc.hbuf.Bytes()
	first := true
	var err error
	for first || len(block) > 0 {
		chunk := block[:min(len(block), maxFrame)]
		block = block[len(chunk):]
		if first {
			err = cc.fr.WriteHeaders(http2.HeadersFrameParam{
				StreamID: id, BlockFragment: chunk, EndStream: endStream, EndHeaders: len(block) == 0,
			})
			first = false
		} else {
			err = cc.fr.WriteContinuation(id, len(block) == 0, chunk)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// resetStream ends st with err and, if it is still open, sends RST_STREAM with code.
func (cc *conn) resetStream(st *stream, code http2.ErrCode, err error) {
	cc.mu.Lock()
	if st.done && !st.inMap {
		cc.mu.Unlock()
		return
	}
	bothEnded := st.localClosed && st.remoteClosed
	credit := cc.failLocked(st, err)
	cc.mu.Unlock()
	cc.lockWrite()
	st.wclosed.Store(true)
	if !bothEnded && !st.rst.Swap(true) {
		if cc.fr.WriteRSTStream(st.id, code) == nil {
			_ = cc.bw.Flush()
		}
	}
	cc.wmu.Unlock()
	cc.returnCredit(0, 0, credit)
}

// failLocked ends st with err: a waiting RoundTrip returns err, a body not yet fully
// received fails with it, and the body sender stops. It returns the connection credit
// of the data dropped.
func (cc *conn) failLocked(st *stream, err error) int64 {
	var credit int64
	if !st.done {
		st.done = true
		st.err = err
		if !st.remoteClosed {
			credit = cc.consumedLocked(int64(len(st.buf) - st.off))
			cc.releaseBufLocked(st)
		}
		st.signal()
		if hasBody(st.req) {
			go st.closeReqBody.Do(func() { _ = st.req.Body.Close() }) // unblocks sendBody
		}
	}
	cc.forgetLocked(st)
	return credit
}

// remoteEndLocked records the end of the response, with its trailers if any.
func (cc *conn) remoteEndLocked(st *stream, trailer http.Header) {
	st.remoteClosed = true
	st.trailer = trailer
	st.signal()
	if st.localClosed {
		st.done = true
		cc.forgetLocked(st)
	}
}

// localEnd records that the request is fully sent.
func (cc *conn) localEnd(st *stream) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	st.localClosed = true
	if st.remoteClosed {
		st.done = true
		cc.forgetLocked(st)
	}
}

// forgetLocked removes a finished stream from the connection.
func (cc *conn) forgetLocked(st *stream) {
	if !st.inMap {
		return
	}
	st.inMap = false
	delete(cc.streams, st.id)
	cc.cond.Broadcast()
	cc.releaseLocked()
}

func (st *stream) signal() {
	select {
	case st.readable <- struct{}{}:
	default:
	}
}

// push appends received data to a buffer from the transport's pool; the caller holds
// cc.mu.
func (st *stream) push(p []byte) {
	if len(p) == 0 {
		st.signal()
		return
	}
	if st.bufp == nil {
		st.bufp = st.cc.t.getDataBuf()
		st.buf, st.off = (*st.bufp)[:0], 0
	}
	if st.off > 0 && st.off >= len(st.buf)/2 {
		n := copy(st.buf, st.buf[st.off:])
		st.buf, st.off = st.buf[:n], 0
	}
	st.buf = append(st.buf, p...)
	st.signal()
}

// releaseBufLocked gives the stream's data buffer back to the transport's pool, once its
// data is read or dropped: the buffer is only touched under cc.mu, so no reader can see
// it afterwards. The caller holds cc.mu.
func (cc *conn) releaseBufLocked(st *stream) {
	if st.bufp != nil && cap(st.buf) <= maxPooledDataBuf {
		*st.bufp = st.buf[:0]
		cc.t.dataBufs.Put(st.bufp)
	}
	st.bufp, st.buf, st.off = nil, nil, 0
}

// responseBody is a response's Body: it reads what the read loop buffered and returns
// flow-control credit as it is consumed.
type responseBody struct {
	st     *stream
	closed atomic.Bool
}

func (b *responseBody) Read(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, errBodyClosed
	}
	st, cc := b.st, b.st.cc
	for {
		cc.mu.Lock()
		if st.cancelledLocked() {
			cc.mu.Unlock()
			st.cancel()
			cc.mu.Lock()
		}
		if st.off < len(st.buf) {
			n := copy(p, st.buf[st.off:])
			st.off += n
			if st.off == len(st.buf) {
				cc.releaseBufLocked(st)
			}
			inc, connInc := cc.creditLocked(st, int64(n))
			cc.mu.Unlock()
			cc.returnCredit(st.id, inc, connInc)
			return n, nil
		}
		if st.remoteClosed {
			b.setTrailers()
			cc.mu.Unlock()
			return 0, io.EOF
		}
		if st.done {
			err := st.err
			cc.mu.Unlock()
			return 0, err
		}
		cc.mu.Unlock()
		select {
		case <-st.readable:
		case <-st.ctxDone:
			st.cancel()
		}
	}
}

// setTrailers copies the received trailers into the response, in the reader's goroutine
// as net/http does; the caller holds cc.mu.
func (b *responseBody) setTrailers() {
	tr := b.st.trailer
	if len(tr) == 0 {
		return
	}
	resp := b.st.resp
	if resp.Trailer == nil {
		resp.Trailer = make(http.Header, len(tr))
	}
	for k, vv := range tr {
		resp.Trailer[k] = vv
	}
	b.st.trailer = nil
}

// creditLocked counts n bytes read from st and returns the stream and connection credit
// to send back, each once half its window is consumed.
func (cc *conn) creditLocked(st *stream, n int64) (inc, connInc int64) {
	st.unacked += n
	if st.unacked >= streamRecvWindow/2 && !st.remoteClosed {
		inc = st.unacked
		st.unacked = 0
		st.recvWindow += inc
	}
	return inc, cc.consumedLocked(n)
}

// Close ends the body; before the end of the response it resets the stream.
func (b *responseBody) Close() error {
	if b.closed.Swap(true) {
		return nil
	}
	st, cc := b.st, b.st.cc
	cc.mu.Lock()
	open := st.inMap
	credit := cc.consumedLocked(int64(len(st.buf) - st.off))
	cc.releaseBufLocked(st)
	cc.mu.Unlock()
	cc.returnCredit(0, 0, credit)
	if open {
		cc.resetStream(st, http2.ErrCodeCancel, errBodyClosed)
	}
	return nil
}
