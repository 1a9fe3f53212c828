package h2client

import (
	"errors"
	"fmt"
	"net/http"
	"net/textproto"

	"golang.org/x/net/http2"

	"github.com/braidmesh/braid/proxy/internal/h2hdr"
)

const maxInformational = 16 // 1xx responses accepted per stream

func (cc *conn) handleFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.HeadersFrame:
		blk, err := cc.blocks.Read(cc.fr, f)
		if err != nil {
			return err
		}
		return cc.onHeaders(blk)
	case *http2.DataFrame:
		return cc.onData(f)
	case *http2.SettingsFrame:
		return cc.onSettings(f)
	case *http2.WindowUpdateFrame:
		return cc.onWindowUpdate(f)
	case *http2.RSTStreamFrame:
		return cc.onReset(f)
	case *http2.PingFrame:
		return cc.onPing(f)
	case *http2.GoAwayFrame:
		cc.onGoAway(f)
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	return nil
}

// streamFor returns the open stream id names, nil for one already closed, or a connection
// error for one never opened.
func (cc *conn) streamFor(id uint32) (*stream, error) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if st := cc.streams[id]; st != nil {
		return st, nil
	}
	if id%2 == 0 || id >= cc.nextID {
		return nil, http2.ConnectionError(http2.ErrCodeProtocol)
	}
	return nil, nil
}

func (cc *conn) onHeaders(f *h2hdr.Block) error {
	st, err := cc.streamFor(f.StreamID)
	if st == nil {
		return err
	}
	if f.Truncated {
		cc.resetStream(st, http2.ErrCodeCancel, fmt.Errorf("h2client: response headers larger than %d bytes", cc.t.maxHeaderBytes()))
		return nil
	}
	if st.headed {
		return cc.onTrailers(st, f)
	}
	head, err := decodeHead(f)
	if err == nil && head.status < 200 {
		err = cc.onInformational(st, f, head)
		if err == nil {
			return nil
		}
	}
	var resp *http.Response
	if err == nil {
		resp, err = newResponse(&st.response, st.req, head) //nolint:bodyclose // publish sets the body, the caller closes it
	}
	if err != nil {
		cc.resetStream(st, http2.ErrCodeProtocol, fmt.Errorf("h2client: malformed response from server: %w", err))
		return nil
	}
	st.headed = true
	cc.publish(st, resp, f.Ended)
	return nil
}

// onInformational hands a 1xx response to the request's trace.
func (cc *conn) onInformational(st *stream, f *h2hdr.Block, head responseHead) error {
	switch {
	case head.status == http.StatusSwitchingProtocols:
		return errors.New("101 Switching Protocols over HTTP/2")
	case f.Ended:
		return errors.New("informational response ends the stream")
	}
	st.informational++
	if st.informational > maxInformational {
		return errors.New("too many informational responses")
	}
	if st.trace != nil && st.trace.Got1xxResponse != nil {
		if err := st.trace.Got1xxResponse(head.status, textproto.MIMEHeader(head.header)); err != nil {
			cc.resetStream(st, http2.ErrCodeCancel, err)
		}
	}
	return nil
}

// publish hands the final response to the waiting RoundTrip.
func (cc *conn) publish(st *stream, resp *http.Response, ended bool) {
	if ended {
		resp.Body = http.NoBody
	} else {
		resp.Body = &st.body
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if st.done {
		return
	}
	st.resp = resp
	st.wantLen = resp.ContentLength
	if st.req.Method == http.MethodHead || resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusNotModified {
		st.wantLen = -1
	}
	st.signal()
	if ended {
		cc.remoteEndLocked(st, nil)
	}
}

func (cc *conn) onTrailers(st *stream, f *h2hdr.Block) error {
	tr, err := decodeTrailers(f)
	if err != nil {
		cc.resetStream(st, http2.ErrCodeProtocol, fmt.Errorf("h2client: malformed trailers from server: %w", err))
		return nil
	}
	cc.mu.Lock()
	code, err := cc.endResponseLocked(st, tr)
	cc.mu.Unlock()
	if err != nil {
		cc.resetStream(st, code, err)
	}
	return nil
}

func (cc *conn) onData(f *http2.DataFrame) error {
	n := int64(f.Length)
	cc.mu.Lock()
	if n > cc.recvWindow {
		cc.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	cc.recvWindow -= n
	st := cc.streams[f.StreamID]
	if st == nil || st.remoteClosed {
		credit := cc.consumedLocked(n)
		unopened := f.StreamID >= cc.nextID
		cc.mu.Unlock()
		cc.returnCredit(0, 0, credit)
		if unopened {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		return nil
	}
	code, err := cc.acceptDataLocked(st, f, n)
	consumed := n - int64(len(f.Data())) // padding is consumed at once
	if err != nil {
		consumed = n
	}
	credit := cc.consumedLocked(consumed)
	cc.mu.Unlock()
	cc.returnCredit(0, 0, credit)
	if err != nil {
		cc.resetStream(st, code, err)
	}
	return nil
}

// acceptDataLocked buffers a DATA frame's payload for the stream's body, or says which
// stream error the frame is.
func (cc *conn) acceptDataLocked(st *stream, f *http2.DataFrame, n int64) (http2.ErrCode, error) {
	if st.resp == nil {
		return http2.ErrCodeProtocol, errors.New("h2client: DATA before response headers")
	}
	if n > st.recvWindow {
		return http2.ErrCodeFlowControl, errors.New("h2client: server sent DATA beyond the stream's window")
	}
	st.recvWindow -= n
	st.unacked += n - int64(len(f.Data())) // padding is consumed at once
	st.received += int64(len(f.Data()))
	if st.wantLen >= 0 && (st.received > st.wantLen || f.StreamEnded() && st.received != st.wantLen) {
		return http2.ErrCodeProtocol, fmt.Errorf("h2client: response body of %d bytes or more, content-length %d", st.received, st.wantLen)
	}
	st.push(f.Data())
	if f.StreamEnded() {
		cc.remoteEndLocked(st, nil)
	}
	return 0, nil
}

// endResponseLocked ends the response at its trailers, after checking its length.
func (cc *conn) endResponseLocked(st *stream, trailer http.Header) (http2.ErrCode, error) {
	if st.wantLen >= 0 && st.received != st.wantLen {
		return http2.ErrCodeProtocol, fmt.Errorf("h2client: response body of %d bytes, content-length %d", st.received, st.wantLen)
	}
	cc.remoteEndLocked(st, trailer)
	return 0, nil
}

func (cc *conn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	cc.mu.Lock()
	err := f.ForeachSetting(cc.applySettingLocked)
	cc.cond.Broadcast()
	cc.mu.Unlock()
	if err != nil {
		return err
	}
	if v, ok := f.Value(http2.SettingHeaderTableSize); ok {
		cc.wmu.Lock()
		cc.henc.SetMaxDynamicTableSizeLimit(v)
		cc.wmu.Unlock()
	}
	err = cc.write(cc.fr.WriteSettingsAck)
	cc.readyOnce.Do(func() { close(cc.ready) })
	return err
}

func (cc *conn) applySettingLocked(s http2.Setting) error {
	if err := s.Valid(); err != nil {
		return err
	}
	switch s.ID {
	case http2.SettingMaxConcurrentStreams:
		cc.maxStreams = int(min(s.Val, maxPeerStreamsDefault))
	case http2.SettingMaxFrameSize:
		cc.maxFrame = int32(s.Val)
	case http2.SettingInitialWindowSize:
		delta := int64(s.Val) - int64(cc.peerWindow)
		for _, st := range cc.streams {
			st.sendWindow += delta
			if st.sendWindow > maxWindow {
				return http2.ConnectionError(http2.ErrCodeFlowControl)
			}
		}
		cc.peerWindow = int32(s.Val)
	}
	return nil
}

func (cc *conn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	inc := int64(f.Increment)
	if f.StreamID == 0 {
		cc.sendWindow += inc
		if cc.sendWindow > maxWindow {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		cc.cond.Broadcast()
		return nil
	}
	st := cc.streams[f.StreamID]
	if st == nil {
		return nil
	}
	st.sendWindow += inc
	if st.sendWindow > maxWindow {
		return http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeFlowControl}
	}
	cc.cond.Broadcast()
	return nil
}

func (cc *conn) onReset(f *http2.RSTStreamFrame) error {
	st, err := cc.streamFor(f.StreamID)
	if st == nil {
		return err
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	switch {
	case f.ErrCode == http2.ErrCodeRefusedStream && st.resp == nil:
		cc.failLocked(st, &unprocessedError{cause: errors.New("stream refused (REFUSED_STREAM)")})
	case f.ErrCode == http2.ErrCodeNo && st.remoteClosed:
		cc.failLocked(st, errors.New("h2client: server stopped reading the request body"))
	default:
		cc.failLocked(st, fmt.Errorf("h2client: stream reset by server: %s", f.ErrCode))
	}
	st.rst.Store(true) // no RST_STREAM back
	return nil
}

func (cc *conn) onPing(f *http2.PingFrame) error {
	if f.IsAck() {
		return nil
	}
	return cc.write(func() error { return cc.fr.WritePing(true, f.Data) })
}

// onGoAway stops new streams on the connection and fails those the server will not
// process, so that they are sent again elsewhere.
func (cc *conn) onGoAway(f *http2.GoAwayFrame) {
	cc.log.V(1).Info("Received GOAWAY", "code", f.ErrCode.String(), "lastStreamID", f.LastStreamID)
	cc.mu.Lock()
	if !cc.goAway || f.LastStreamID < cc.lastID {
		cc.lastID = f.LastStreamID
	}
	cc.goAway = true
	for id, st := range cc.streams {
		if id > cc.lastID {
			st.rst.Store(true)
			cc.failLocked(st, &unprocessedError{cause: fmt.Errorf("server sent GOAWAY (%s)", f.ErrCode)})
		}
	}
	idle := cc.used == 0
	cc.mu.Unlock()
	cc.t.removeConn(cc)
	if idle {
		cc.closeConn()
	}
}
