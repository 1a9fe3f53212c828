package h2server

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// bodyBufSize is how much of a response body a handler's writes gather before they go to
// the connection: a body that fits is sent with its headers in one write.
const bodyBufSize = 4 << 10

var errHandlerDone = errors.New("h2server: write after the handler returned")

// responseWriter is a stream's http.ResponseWriter. It is used by the handler's goroutine
// only (as net/http's is); it takes the connection's lock to send.
type responseWriter struct {
	st          *stream
	header      http.Header
	status      int
	wroteHeader bool     // the final status is chosen
	sentHeader  bool     // its HEADERS frame is written
	noBody      bool     // the status or the method (HEAD) carries no body
	declared    int64    // Content-Length the handler set, -1 when none
	written     int64    // body bytes the handler wrote
	trailers    []string // keys declared in the Trailer header
	buf         []byte
	bufp        *[]byte // buf's pooled backing array
	done        bool
	// ended says the stream was ended before the handler returned (EndResponse), and
	// endErr how that went.
	ended  bool
	endErr error
}

var (
	_ http.Flusher                    = (*responseWriter)(nil)
	_ interface{ FlushError() error } = (*responseWriter)(nil)
)

// Header returns the response header, or the trailers once headers were sent.
func (rw *responseWriter) Header() http.Header {
	if rw.header == nil {
		rw.header = make(http.Header)
	}
	return rw.header
}

// WriteHeader sends an informational status at once, or chooses the final status; a
// second final status is ignored, as is 101 (no upgrade over HTTP/2).
func (rw *responseWriter) WriteHeader(code int) {
	if rw.wroteHeader || rw.done {
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("h2server: invalid WriteHeader code %d", code))
	}
	if code < 200 {
		rw.writeInformational(code)
		return
	}
	rw.wroteHeader, rw.status, rw.declared = true, code, -1
	rw.noBody = !bodyAllowed(code) || rw.st.req.Method == http.MethodHead
	h := rw.header // may be nil: reading it allocates nothing
	if v := h.Get("Content-Length"); v != "" {
		n, err := strconv.ParseUint(v, 10, 63)
		if err != nil {
			delete(h, "Content-Length") // net/http drops a bad one too
		} else {
			rw.declared = int64(n)
		}
	}
	for _, v := range h["Trailer"] {
		for k := range strings.SplitSeq(v, ",") {
			if k = http.CanonicalHeaderKey(strings.TrimSpace(k)); k != "" {
				rw.trailers = append(rw.trailers, k)
			}
		}
	}
}

func bodyAllowed(code int) bool {
	return code >= 200 && code != http.StatusNoContent && code != http.StatusNotModified
}

func (rw *responseWriter) writeInformational(code int) {
	if code == http.StatusSwitchingProtocols {
		rw.st.c.srv.Log.V(1).Info("HTTP/2 handler tried to switch protocols: ignored", "stream", rw.st.id)
		return
	}
	c := rw.st.c
	c.lockToFlush()
	defer c.unlockFlushing() //nolint:errcheck // a failed write ends the connection
	if c.streamWritableLocked(rw.st) == nil {
		_ = c.writeHeadersLocked(rw.st.id, code, rw.header, nil, "", false)
	}
}

// Write buffers p, sending what was buffered and p once the buffer is full.
func (rw *responseWriter) Write(p []byte) (int, error) {
	if rw.done {
		return 0, errHandlerDone
	}
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	if !bodyAllowed(rw.status) {
		return 0, http.ErrBodyNotAllowed
	}
	if rw.declared >= 0 && rw.written+int64(len(p)) > rw.declared {
		return 0, http.ErrContentLength
	}
	rw.written += int64(len(p))
	if rw.noBody || len(p) == 0 {
		return len(p), nil // HEAD
	}
	if len(rw.buf)+len(p) <= bodyBufSize {
		if rw.bufp == nil {
			rw.bufp = rw.st.c.srv.getBuf()
			rw.buf = (*rw.bufp)[:0]
		}
		rw.buf = append(rw.buf, p...)
		return len(p), nil
	}
	if err := rw.send(p, false); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush sends the headers and the buffered body to the peer now.
func (rw *responseWriter) Flush() { _ = rw.FlushError() }

// FlushError is Flush, with the error that ends the stream or the connection.
func (rw *responseWriter) FlushError() error {
	if rw.done {
		return errHandlerDone
	}
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	return rw.send(nil, true)
}

// EndResponse completes the response now, as the handler's return would: headers, the
// buffered body and END_STREAM, in one write when they fit. It is for a handler that has
// work left after its answer (metrics, logs), which then no longer delays the peer.
// Writes, headers and trailers after it are not sent.
func (rw *responseWriter) EndResponse() error {
	if rw.done {
		return errHandlerDone
	}
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	c := rw.st.c
	c.lockToFlush()
	err := rw.endLocked()
	return errors.Join(err, c.unlockFlushing())
}

// EnableFullDuplex is a no-op: an HTTP/2 handler may always read the request while it
// writes the response (http.ResponseController calls it).
func (rw *responseWriter) EnableFullDuplex() error { return nil }

// send writes the headers if not yet sent, the buffered body and p, and flushes the
// connection when flush is set.
func (rw *responseWriter) send(p []byte, flush bool) error {
	c := rw.st.c
	if !flush {
		c.mu.Lock()
		defer c.mu.Unlock()
		return rw.sendLocked(p)
	}
	c.lockToFlush()
	err := rw.sendLocked(p)
	return errors.Join(err, c.unlockFlushing())
}

func (rw *responseWriter) sendLocked(p []byte) error {
	c := rw.st.c
	if err := c.streamWritableLocked(rw.st); err != nil {
		return err
	}
	if !rw.sentHeader {
		if err := rw.sendHeaderLocked("", false); err != nil {
			return err
		}
	}
	if len(rw.buf) > 0 {
		err := c.writeDataLocked(rw.st, rw.buf, false)
		rw.buf = rw.buf[:0]
		if err != nil {
			return err
		}
	}
	if len(p) > 0 {
		return c.writeDataLocked(rw.st, p, false)
	}
	return nil
}

func (rw *responseWriter) sendHeaderLocked(contentLength string, end bool) error {
	rw.sentHeader = true
	err := rw.st.c.writeHeadersLocked(rw.st.id, rw.status, rw.header, rw.trailers, contentLength, end)
	if err == nil && end {
		rw.st.localClosed = true
	}
	return err
}

// endLocked completes the response when the handler returned: headers (with a
// Content-Length when the whole body is known), the body, and trailers, ending the
// stream. An error means the stream must be reset.
func (rw *responseWriter) endLocked() error {
	if rw.ended {
		return rw.endErr // EndResponse did it
	}
	rw.done, rw.ended = true, true
	rw.endErr = rw.completeLocked()
	return rw.endErr
}

// completeLocked sends what endLocked completes the response with.
func (rw *responseWriter) completeLocked() error {
	c, st := rw.st.c, rw.st
	if err := c.streamWritableLocked(st); err != nil {
		return err
	}
	tr := rw.collectTrailers()
	if !rw.sentHeader {
		end := len(rw.buf) == 0 && len(tr) == 0
		if err := rw.sendHeaderLocked(rw.impliedLength(tr), end); err != nil || end {
			return errors.Join(err, rw.checkLength())
		}
	}
	if err := rw.checkLength(); err != nil {
		return err
	}
	if len(tr) == 0 {
		return c.writeDataLocked(st, rw.buf, true)
	}
	if len(rw.buf) > 0 {
		if err := c.writeDataLocked(st, rw.buf, false); err != nil {
			return err
		}
	}
	return c.writeTrailersLocked(st, tr)
}

// impliedLength is the Content-Length to add to a response whose whole body is buffered
// and that set none, as net/http does; empty when it does not apply. The caller holds
// c.mu.
func (rw *responseWriter) impliedLength(tr []trailerField) string {
	if rw.declared >= 0 || len(tr) > 0 || !bodyAllowed(rw.status) || rw.written == 0 && rw.noBody {
		return ""
	}
	if _, set := rw.header["Content-Length"]; set {
		return ""
	}
	return rw.st.c.lengthStringLocked(rw.written)
}

// checkLength fails when the body fell short of the declared Content-Length.
func (rw *responseWriter) checkLength() error {
	if rw.declared >= 0 && !rw.noBody && rw.written < rw.declared {
		return fmt.Errorf("h2server: handler wrote %d bytes of a declared %d", rw.written, rw.declared)
	}
	return nil
}

// trailerField is one response trailer.
type trailerField struct {
	name   string
	values []string
}

// collectTrailers returns the trailers with values: declared keys, and keys set with
// http.TrailerPrefix.
func (rw *responseWriter) collectTrailers() []trailerField {
	var tr []trailerField
	for _, k := range rw.trailers {
		if v := rw.header[k]; len(v) > 0 && httpguts.ValidTrailerHeader(k) {
			tr = append(tr, trailerField{k, v})
		}
	}
	for k, v := range rw.header {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok && len(v) > 0 && httpguts.ValidTrailerHeader(name) {
			tr = append(tr, trailerField{name, v})
		}
	}
	return tr
}

// release returns the body buffer once the handler returned.
func (rw *responseWriter) release() {
	rw.done = true
	if rw.bufp != nil {
		*rw.bufp = rw.buf[:0]
		rw.st.c.srv.bufs.Put(rw.bufp)
		rw.bufp, rw.buf = nil, nil
	}
}
