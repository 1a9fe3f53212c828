package h2client

import (
	"errors"
	"fmt"
	"io"

	"golang.org/x/net/http2"
)

var errStreamEnded = errors.New("stream ended")

// sendBody streams the request body as DATA frames, then ends the stream with the
// request's trailers or an empty DATA frame. A read error resets the stream.
func (st *stream) sendBody() {
	cc := st.cc
	body := st.req.Body
	defer st.closeReqBody.Do(func() { _ = body.Close() })
	bp := cc.t.getBuf()
	defer cc.t.bufs.Put(bp)
	buf := *bp
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if err := st.sendData(buf[:n]); err != nil {
				return // the stream or connection ended; its error is reported elsewhere
			}
		}
		if errors.Is(rerr, io.EOF) {
			st.endRequest()
			return
		}
		if rerr != nil {
			cc.resetStream(st, http2.ErrCodeCancel, fmt.Errorf("h2client: reading request body: %w", rerr))
			return
		}
	}
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
	if err := forEachHeader(st.req.Trailer, func(string, string) {}); err != nil {
		cc.resetStream(st, http2.ErrCodeCancel, fmt.Errorf("h2client: request trailers: %w", err))
		return err
	}
	cc.lockWrite()
	if st.wclosed.Swap(true) {
		cc.wmu.Unlock()
		return errStreamEnded
	}
	err := cc.encodeHeaders(st.id, maxFrame, true, func(fn func(string, string)) error {
		return forEachHeader(st.req.Trailer, fn)
	})
	cc.wmu.Unlock()
	if err != nil {
		err = fmt.Errorf("h2client: writing request trailers to %s: %w", cc.addr, err)
		cc.fail(err)
	}
	return err
}
