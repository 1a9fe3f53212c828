package h2client

import (
	"errors"
	"fmt"
	"io"
	"net/http"

	"golang.org/x/net/http2"
)

var (
	errStreamEnded  = errors.New("stream ended")
	errBodyTooLong  = errors.New("h2client: request body longer than its content-length")
	errBodyTooShort = errors.New("h2client: request body shorter than its content-length")
)

// sendBody streams the request body as DATA frames, then ends the stream with the
// request's trailers or an empty DATA frame. A read error, or a body that disagrees with
// the request's ContentLength, resets the stream (CANCEL): the server gets no more data
// than the content-length sent, and no END_STREAM before all of it (RFC 9113 section
// 8.1.1).
func (st *stream) sendBody() {
	cc := st.cc
	body := st.req.Body
	defer st.closeReqBody.Do(func() { _ = body.Close() })
	bp := cc.t.getBuf()
	defer cc.t.bufs.Put(bp)
	length := newBodyLength(st.req)
	for {
		n, rerr := body.Read(length.readBuf(*bp))
		eof := errors.Is(rerr, io.EOF)
		if err := length.count(n, eof); err != nil {
			cc.resetStream(st, http2.ErrCodeCancel, err)
			return
		}
		if n > 0 {
			if err := st.sendData((*bp)[:n]); err != nil {
				return // the stream or connection ended; its error is reported elsewhere
			}
		}
		if eof {
			st.endRequest()
			return
		}
		if rerr != nil {
			cc.resetStream(st, http2.ErrCodeCancel, fmt.Errorf("h2client: reading request body: %w", rerr))
			return
		}
	}
}

// bodyLength checks a request body against its declared length as it is read.
type bodyLength struct {
	declared int64 // the request's ContentLength, -1 when unknown
	read     int64
}

func newBodyLength(req *http.Request) bodyLength {
	if req.ContentLength > 0 {
		return bodyLength{declared: req.ContentLength}
	}
	return bodyLength{declared: -1} // 0 with a body is unknown, as in net/http
}

// readBuf returns the part of buf the next Read may fill: up to one byte beyond the
// declared length, enough to find a body that goes on without reading much of it.
func (b *bodyLength) readBuf(buf []byte) []byte {
	if b.declared < 0 {
		return buf
	}
	return buf[:min(int64(len(buf)), b.declared-b.read+1)]
}

// count adds n bytes read and refuses a body longer than declared or, at its end (eof),
// shorter.
func (b *bodyLength) count(n int, eof bool) error {
	b.read += int64(n)
	switch {
	case b.declared < 0:
		return nil
	case b.read > b.declared:
		return fmt.Errorf("%w (%d bytes)", errBodyTooLong, b.declared)
	case eof && b.read < b.declared:
		return fmt.Errorf("%w: %d of %d bytes", errBodyTooShort, b.read, b.declared)
	}
	return nil
}

// sendData writes p as DATA frames as the send windows allow.
func (st *stream) sendData(p []byte) error {
	for len(p) > 0 {
		n, err := st.takeCredit(len(p))
		if err != nil {
			return err
		}
		if err := st.writeData(p[:n], false); err != nil {
			return err
		}
		p = p[n:]
	}
	return nil
}

// takeCredit waits until the stream and the connection may send, and takes up to want
// bytes of both windows, at most one frame.
func (st *stream) takeCredit(want int) (int, error) {
	cc := st.cc
	cc.mu.Lock()
	defer cc.mu.Unlock()
	for !st.done && !cc.closed && (st.sendWindow <= 0 || cc.sendWindow <= 0) {
		cc.cond.Wait()
	}
	if st.done || cc.closed {
		return 0, errStreamEnded
	}
	n := int64(min(want, int(cc.maxFrame)))
	n = min(n, st.sendWindow, cc.sendWindow)
	st.sendWindow -= n
	cc.sendWindow -= n
	return int(n), nil
}

// writeData writes one DATA frame unless the stream was reset meanwhile.
func (st *stream) writeData(p []byte, end bool) error {
	return st.cc.write(func() error {
		if st.wclosed.Load() {
			return nil
		}
		if end {
			st.wclosed.Store(true)
		}
		return st.cc.fr.WriteData(st.id, end, p)
	})
}

// endRequest ends the request side of the stream, with trailers if the request has any.
func (st *stream) endRequest() {
	cc := st.cc
	var err error
	if len(st.req.Trailer) > 0 {
		err = st.writeTrailers()
	} else {
		err = st.writeData(nil, true)
	}
	if err == nil {
		cc.localEnd(st)
	}
}

func (st *stream) writeTrailers() error {
	cc := st.cc
	cc.mu.Lock()
	maxFrame := int(cc.maxFrame)
	cc.mu.Unlock()
	fields, err := appendHeaderFields(nil, st.req.Trailer)
	if err != nil {
		cc.resetStream(st, http2.ErrCodeCancel, fmt.Errorf("h2client: request trailers: %w", err))
		return err
	}
	cc.lockWrite()
	if st.wclosed.Swap(true) {
		cc.wmu.Unlock()
		return errStreamEnded
	}
	err = cc.encodeHeaders(st.id, maxFrame, true, fields)
	if err == nil {
		err = cc.bw.Flush()
	}
	cc.wmu.Unlock()
	if err != nil {
		err = fmt.Errorf("h2client: writing request trailers to %s: %w", cc.addr, err)
		cc.fail(err)
	}
	return err
}
