package h2server

import (
	"errors"
	"io"
	"net/http"
	"sync"
)

var (
	errBodyLength  = errors.New("h2server: request body length does not match its content-length")
	errBadTrailers = errors.New("h2server: trailing HEADERS without END_STREAM or with pseudo-headers")
	errBodyClosed  = errors.New("h2server: read on closed request body")
)

// requestBody is a request's body as DATA frames bring it: the reader appends, the
// handler reads, and what it reads goes back to the peer's windows. It never holds more
// than the stream's receive window.
type requestBody struct {
	st *stream

	mu      sync.Mutex
	cond    sync.Cond // on mu: data, the end, or a failure arrived
	buf     []byte
	off     int         // read offset in buf
	err     error       // io.EOF after END_STREAM, or why the stream failed
	trailer http.Header // request trailers, until a Read hands them over
	closed  bool
}

// Read reads the request body, waiting for DATA.
func (b *requestBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	for b.off == len(b.buf) && b.err == nil && !b.closed {
		b.cond.Wait()
	}
	if b.closed {
		b.mu.Unlock()
		return 0, errBodyClosed
	}
	if b.off < len(b.buf) {
		n := copy(p, b.buf[b.off:])
		b.off += n
		if b.off == len(b.buf) {
			b.buf, b.off = b.buf[:0], 0
		}
		b.mu.Unlock()
		b.st.c.creditRead(b.st, n)
		return n, nil
	}
	err := b.err
	if err == io.EOF && b.trailer != nil { //nolint:errorlint // io.EOF is returned as it is
		b.handTrailers()
	}
	b.mu.Unlock()
	return 0, err
}

// handTrailers puts the trailers into the request, as net/http does when the body reaches
// its end.
func (b *requestBody) handTrailers() {
	r := b.st.req
	if r.Trailer == nil {
		r.Trailer = make(http.Header, len(b.trailer))
	}
	for k, v := range b.trailer {
		r.Trailer[k] = v
	}
	b.trailer = nil
}

// Close stops the body: what arrives from now on is dropped.
func (b *requestBody) Close() error {
	if n := b.close(); n > 0 {
		b.st.c.creditConn(int64(n))
	}
	return nil
}

// close marks the body closed and returns how many bytes it dropped.
func (b *requestBody) close() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := len(b.buf) - b.off
	b.closed = true
	b.buf, b.off = nil, 0
	b.cond.Broadcast()
	return n
}

// push appends a DATA payload; end means END_STREAM came with it. It reports false when
// the body was closed or failed and data was dropped.
func (b *requestBody) push(data []byte, end bool) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed || b.err != nil {
		return false
	}
	if len(data) > 0 {
		if b.off > 0 && len(b.buf)+len(data) > cap(b.buf) {
			b.buf = b.buf[:copy(b.buf, b.buf[b.off:])]
			b.off = 0
		}
		b.buf = append(b.buf, data...)
	}
	if end {
		b.err = io.EOF
	}
	b.cond.Broadcast()
	return true
}

// end ends the body with trailers.
func (b *requestBody) end(trailer http.Header) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == nil {
		b.err, b.trailer = io.EOF, trailer
	}
	b.cond.Broadcast()
}

// fail makes reads past the received data fail with err.
func (b *requestBody) fail(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == nil {
		b.err = err
	}
	b.cond.Broadcast()
}
