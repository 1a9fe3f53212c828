package h2server

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

var errAborted = errors.New("h2server: handler aborted")

func nowPlus(d time.Duration) time.Time { return time.Now().Add(d) }

// lockToFlush takes the write lock for a writer that flushes when it is done. Such
// writers hand the flush on to the last of them queued, so responses that finish
// together leave in one write.
func (c *conn) lockToFlush() {
	c.flushers.Add(1)
	c.mu.Lock()
}

// batchStreams is how many open streams make a connection busy enough that an answer
// waits for the flusher; with fewer, latency comes first and it is flushed at once (see
// h2client's batchStreams, which has the same reason).
const batchStreams = 4

// unlockFlushing flushes, unless another writer that will flush waits for the lock, and
// unlocks. Writers waiting for a window may wait long: while every other registered
// flusher may be one of them, it flushes. On a busy connection (batchStreams) other
// answers are about to follow: the flusher then flushes, after them.
func (c *conn) unlockFlushing() error {
	var err error
	if int(c.flushers.Add(-1)) <= c.windowWaiters {
		if len(c.streams) >= batchStreams && c.bw.Buffered() > 0 {
			c.flusher.Soon()
			err = c.werr
		} else {
			err = c.flushLocked()
		}
	}
	c.mu.Unlock()
	return err
}

// flush writes out what unlockFlushing left for the flusher.
func (c *conn) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flushLocked()
}

// flushLocked writes out the buffered frames.
func (c *conn) flushLocked() error {
	if c.werr != nil {
		return c.werr
	}
	c.needFlush = false
	if c.bw.Buffered() == 0 {
		return nil
	}
	if err := c.bw.Flush(); err != nil {
		return c.writeFailedLocked(err)
	}
	return nil
}

// writeFailedLocked records a failed write, which ends the connection: its reader is
// woken by closing the socket, and writers waiting for a window give up.
func (c *conn) writeFailedLocked(err error) error {
	if c.werr == nil {
		c.werr = fmt.Errorf("writing HTTP/2 frames: %w", err)
		c.closeNow()
		c.cond.Broadcast()
	}
	return c.werr
}

// encodeLocked appends one header field to c.hbuf.
func (c *conn) encodeLocked(name, value string) {
	_ = c.enc.WriteField(hpack.HeaderField{Name: name, Value: value}) // writes to a bytes.Buffer
}

// writeHeaderBlockLocked writes a header block as HEADERS and as many CONTINUATION frames
// as the peer's frame size needs.
func (c *conn) writeHeaderBlockLocked(id uint32, block []byte, end bool) error {
	limit := int(c.peerMaxFrame)
	first := block[:min(len(block), limit)]
	rest := block[len(first):]
	err := c.wfr.WriteHeaders(http2.HeadersFrameParam{
		StreamID: id, BlockFragment: first, EndStream: end, EndHeaders: len(rest) == 0,
	})
	for err == nil && len(rest) > 0 {
		frag := rest[:min(len(rest), limit)]
		rest = rest[len(frag):]
		err = c.wfr.WriteContinuation(id, len(rest) == 0, frag)
	}
	if err != nil {
		return c.writeFailedLocked(err)
	}
	return nil
}

// writeDataLocked sends data on st as DATA frames within the peer's windows and frame
// size, waiting for window updates when a window is empty; end sets END_STREAM on the
// last frame (an empty one when data is empty).
func (c *conn) writeDataLocked(st *stream, data []byte, end bool) error {
	for {
		n, err := c.awaitWindowLocked(st, len(data))
		if err != nil {
			return err
		}
		chunk := data[:n]
		data = data[n:]
		last := end && len(data) == 0
		if err := c.wfr.WriteData(st.id, last, chunk); err != nil {
			return c.writeFailedLocked(err)
		}
		st.sendWindow -= int64(n)
		c.sendWindow -= int64(n)
		if last {
			st.localClosed = true
		}
		if len(data) == 0 {
			return nil
		}
	}
}

// awaitWindowLocked returns how many of want bytes st may send now, at least one unless
// want is zero, waiting while the stream or connection window is empty. It fails once
// the stream or the connection ended.
func (c *conn) awaitWindowLocked(st *stream, want int) (int, error) {
	for {
		if err := c.streamWritableLocked(st); err != nil {
			return 0, err
		}
		n := min(int64(want), st.sendWindow, c.sendWindow, int64(c.peerMaxFrame))
		if n > 0 || want == 0 {
			return int(max(n, 0)), nil
		}
		// The peer cannot send a WINDOW_UPDATE for data it has not received.
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		c.windowWaiters++
		c.cond.Wait()
		c.windowWaiters--
	}
}

// streamWritableLocked says why nothing more can be sent on st, or nil.
func (c *conn) streamWritableLocked(st *stream) error {
	switch {
	case c.werr != nil:
		return c.werr
	case c.closed:
		return errConnClosed
	case st.reset:
		return errStreamReset
	case st.localClosed:
		return errStreamEnded
	}
	return nil
}

// creditLocked returns n consumed bytes to the connection's receive window, and to st's
// when st is given and still receiving, sending WINDOW_UPDATE once a quarter of a window
// is due. It reports whether it wrote a frame.
func (c *conn) creditLocked(st *stream, n int64) bool {
	if n <= 0 {
		return false
	}
	wrote := false
	c.recvCredit += n
	if c.recvCredit >= max(c.connWindow/4, 1) {
		c.writeWindowUpdateLocked(0, c.recvCredit)
		c.recvWindow += c.recvCredit
		c.recvCredit = 0
		wrote = true
	}
	if st == nil || st.remoteClosed {
		return wrote
	}
	st.recvCredit += n
	if st.recvCredit >= max(c.streamWindow/4, 1) {
		c.writeWindowUpdateLocked(st.id, st.recvCredit)
		st.recvWindow += st.recvCredit
		st.recvCredit = 0
		wrote = true
	}
	return wrote
}

func (c *conn) writeWindowUpdateLocked(id uint32, n int64) {
	if err := c.wfr.WriteWindowUpdate(id, uint32(n)); err != nil {
		_ = c.writeFailedLocked(err)
	}
	c.needFlush = true
}

// creditRead returns bytes a handler read to the windows, writing any update at once.
func (c *conn) creditRead(st *stream, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.creditLocked(st, int64(n)) {
		_ = c.flushLocked()
	}
}

// creditConn returns dropped bytes to the connection window.
func (c *conn) creditConn(n int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.creditLocked(nil, n)
}

// lowerLocked returns a canonical header key as it goes on the wire.
func (c *conn) lowerLocked(k string) string { return c.lower.Get(k) }

func statusString(code int) string {
	switch code {
	case 200:
		return "200"
	case 204:
		return "204"
	case 304:
		return "304"
	case 400:
		return "400"
	case 403:
		return "403"
	case 404:
		return "404"
	case 500:
		return "500"
	case 502:
		return "502"
	case 503:
		return "503"
	}
	return strconv.Itoa(code)
}

// writeHeadersLocked encodes and writes a response's HEADERS: the status, the header
// fields except connection-specific ones and trailers, and contentLength when set.
func (c *conn) writeHeadersLocked(id uint32, status int, h http.Header, trailers []string, contentLength string, end bool) error {
	c.hbuf.Reset()
	c.encodeLocked(":status", statusString(status))
	for k, vv := range h {
		if skipResponseHeader(k) || strings.HasPrefix(k, http.TrailerPrefix) || slices.Contains(trailers, k) {
			continue
		}
		name := c.lowerLocked(k)
		for _, v := range vv {
			if httpguts.ValidHeaderFieldValue(v) {
				c.encodeLocked(name, v)
			}
		}
	}
	if contentLength != "" {
		c.encodeLocked("content-length", contentLength)
	}
	return c.writeHeaderBlockLocked(id, c.hbuf.Bytes(), end)
}

// writeTrailersLocked ends st with a trailing HEADERS frame.
func (c *conn) writeTrailersLocked(st *stream, tr []trailerField) error {
	c.hbuf.Reset()
	for _, f := range tr {
		if !httpguts.ValidHeaderFieldName(f.name) {
			continue
		}
		name := c.lowerLocked(f.name)
		for _, v := range f.values {
			if httpguts.ValidHeaderFieldValue(v) {
				c.encodeLocked(name, v)
			}
		}
	}
	if err := c.writeHeaderBlockLocked(st.id, c.hbuf.Bytes(), true); err != nil {
		return err
	}
	st.localClosed = true
	return nil
}

// skipResponseHeader says whether a response header field must not be sent over HTTP/2
// (RFC 9113 section 8.2.2), or cannot be.
func skipResponseHeader(k string) bool {
	switch k {
	case "Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade":
		return true
	}
	return !httpguts.ValidHeaderFieldName(k)
}
