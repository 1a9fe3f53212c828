package h2server

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"golang.org/x/net/http2"
)

// handleFrame acts on one frame read from the peer.
func (c *conn) handleFrame(f http2.Frame) error {
	if !c.sawSettings {
		sf, ok := f.(*http2.SettingsFrame)
		if !ok || sf.IsAck() {
			return connError{http2.ErrCodeProtocol, "the client preface's first frame must be SETTINGS"}
		}
		c.sawSettings = true
	}
	switch f := f.(type) {
	case *http2.HeadersFrame:
		blk, err := c.blocks.read(c.rfr, f)
		if err != nil {
			return err
		}
		return c.onHeaders(blk)
	case *http2.DataFrame:
		return c.onData(f)
	case *http2.SettingsFrame:
		return c.onSettings(f)
	case *http2.WindowUpdateFrame:
		return c.onWindowUpdate(f)
	case *http2.PingFrame:
		return c.onPing(f)
	case *http2.RSTStreamFrame:
		return c.onRSTStream(f)
	case *http2.GoAwayFrame:
		c.onGoAway(f)
		return nil
	case *http2.PushPromiseFrame:
		return connError{http2.ErrCodeProtocol, "PUSH_PROMISE from a client"}
	}
	return nil // PRIORITY, PRIORITY_UPDATE and unknown frame types are ignored
}

// onHeaders opens a stream, or ends one with its trailers.
func (c *conn) onHeaders(f *headerBlock) error {
	id := f.StreamID
	if id%2 == 0 {
		return connError{http2.ErrCodeProtocol, fmt.Sprintf("client opened even stream %d", id)}
	}
	c.mu.Lock()
	if id <= c.maxSeen {
		st := c.streams[id]
		open := st != nil && !st.remoteClosed
		c.mu.Unlock()
		if st == nil {
			return closedStreamHeaders(f)
		}
		return c.onTrailers(st, open, f)
	}
	c.maxSeen = id
	refuse, calm := c.admitLocked()
	c.mu.Unlock()
	switch {
	case calm:
		return connError{http2.ErrCodeEnhanceYourCalm, "too many streams refused"}
	case refuse:
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeRefusedStream}
	case f.Truncated:
		c.respondDirect(id, http.StatusRequestHeaderFieldsTooLarge, !f.Ended)
		return nil
	}
	st := newStream(c, id)
	req, err := c.newRequest(st, f)
	if err != nil {
		st.cancel() // releases the stream's context from the connection's
	}
	if errors.Is(err, errConnect) {
		c.respondDirect(id, http.StatusMethodNotAllowed, !f.Ended)
		return nil
	}
	if err != nil {
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol, Cause: err}
	}
	st.req = req
	c.start(st, f.Ended)
	return nil
}

// closedStreamHeaders judges HEADERS on a stream that is closed or was skipped: trailers
// (no pseudo-header, END_STREAM) may have been in flight when we reset or finished the
// stream and are ignored (RFC 9113 section 5.1); anything else tries to open a stream
// with an ID that does not increase (section 5.1.1).
func closedStreamHeaders(f *headerBlock) error {
	if f.Ended && f.Pseudo == 0 {
		return nil
	}
	return connError{http2.ErrCodeProtocol, fmt.Sprintf("HEADERS opening closed or skipped stream %d", f.StreamID)}
}

// admitLocked decides on a new stream: refused when the conn is going away or at its
// limit, and calm (the connection ends) when the peer keeps opening streams beyond it.
func (c *conn) admitLocked() (refuse, calm bool) {
	if c.goingAway {
		return true, false
	}
	limit := c.srv.maxStreams()
	if uint32(len(c.streams)) < limit {
		return false, false
	}
	c.refused++
	return true, c.refused > limit
}

func (c *conn) start(st *stream, ended bool) {
	c.mu.Lock()
	if len(c.streams) == 0 {
		_ = c.nc.SetReadDeadline(time.Time{}) // no deadline while streams are open
	}
	st.sendWindow = c.peerInitWindow
	st.recvWindow = c.recvInitWindow
	st.remoteClosed = ended
	c.streams[st.id] = st
	c.mu.Unlock()
	c.handlers.Add(1)
	c.srv.pool.run(st)
}

// onTrailers ends stream st's request with the trailing HEADERS f.
func (c *conn) onTrailers(st *stream, open bool, f *headerBlock) error {
	id := f.StreamID
	if !open {
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeStreamClosed}
	}
	if !f.Ended || f.Pseudo != 0 || f.Truncated {
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol, Cause: errBadTrailers}
	}
	if st.declaredLen >= 0 && st.received != st.declaredLen {
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol, Cause: errBodyLength}
	}
	tr, err := trailerHeader(f)
	if err != nil {
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol, Cause: err}
	}
	c.mu.Lock()
	st.remoteClosed = true
	c.mu.Unlock()
	st.body.end(tr)
	return nil
}

// onData delivers a DATA frame's payload to its stream's request body, enforcing the
// receive windows.
func (c *conn) onData(f *http2.DataFrame) error {
	id, n := f.StreamID, int64(f.Header().Length)
	data := f.Data()
	c.mu.Lock()
	if id > c.maxSeen {
		c.mu.Unlock()
		return connError{http2.ErrCodeProtocol, fmt.Sprintf("DATA on idle stream %d", id)}
	}
	if n > c.recvWindow {
		c.mu.Unlock()
		return connError{http2.ErrCodeFlowControl, "DATA beyond the connection window"}
	}
	c.recvWindow -= n
	st := c.streams[id]
	deliver, err := c.acceptDataLocked(st, f, n)
	c.mu.Unlock()
	if !deliver {
		return err
	}
	if !st.body.push(data, f.StreamEnded()) {
		c.creditConn(int64(len(data))) // the handler closed the body: drop it
	}
	return nil
}

// acceptDataLocked checks DATA of n bytes (padding included) for stream st (nil when the
// stream is closed) and takes it from the stream's window; deliver says whether its
// payload goes to the request body.
func (c *conn) acceptDataLocked(st *stream, f *http2.DataFrame, n int64) (deliver bool, _ error) {
	if st == nil || st.reset {
		c.creditLocked(nil, n) // a stream closed on our side: frames in flight are ignored
		return false, nil
	}
	if st.remoteClosed {
		c.creditLocked(nil, n)
		return false, http2.StreamError{StreamID: st.id, Code: http2.ErrCodeStreamClosed}
	}
	if n > st.recvWindow {
		c.creditLocked(nil, n)
		return false, http2.StreamError{StreamID: st.id, Code: http2.ErrCodeFlowControl}
	}
	st.recvWindow -= n
	if pad := n - int64(len(f.Data())); pad > 0 {
		c.creditLocked(st, pad)
	}
	st.received += int64(len(f.Data()))
	tooLong := st.declaredLen >= 0 && st.received > st.declaredLen
	tooShort := f.StreamEnded() && st.declaredLen >= 0 && st.received != st.declaredLen
	if tooLong || tooShort {
		c.creditLocked(nil, int64(len(f.Data())))
		return false, http2.StreamError{StreamID: st.id, Code: http2.ErrCodeProtocol, Cause: errBodyLength}
	}
	st.remoteClosed = f.StreamEnded()
	return true, nil
}

func (c *conn) onSettings(f *http2.SettingsFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.IsAck() {
		c.ourSettingsAckedLocked()
		return nil
	}
	if err := f.ForeachSetting(c.applySettingLocked); err != nil {
		return err
	}
	if err := c.wfr.WriteSettingsAck(); err != nil {
		return c.writeFailedLocked(err)
	}
	c.needFlush = true
	return nil
}

// ourSettingsAckedLocked moves open streams to the receive window our SETTINGS announced:
// the peer counts with it from the acknowledgement on.
func (c *conn) ourSettingsAckedLocked() {
	if c.settingsAcked {
		return
	}
	c.settingsAcked = true
	delta := c.streamWindow - c.recvInitWindow
	c.recvInitWindow = c.streamWindow
	for _, st := range c.streams {
		st.recvWindow += delta
	}
}

func (c *conn) applySettingLocked(s http2.Setting) error {
	if err := s.Valid(); err != nil {
		return err
	}
	switch s.ID {
	case http2.SettingHeaderTableSize:
		c.enc.SetMaxDynamicTableSize(s.Val)
	case http2.SettingMaxFrameSize:
		c.peerMaxFrame = s.Val
	case http2.SettingInitialWindowSize:
		delta := int64(s.Val) - c.peerInitWindow
		for _, st := range c.streams {
			if st.sendWindow+delta > maxWindow {
				return connError{http2.ErrCodeFlowControl, "SETTINGS_INITIAL_WINDOW_SIZE overflows a stream window"}
			}
			st.sendWindow += delta
		}
		c.peerInitWindow = int64(s.Val)
		c.cond.Broadcast()
	}
	return nil
}

func (c *conn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	inc := int64(f.Increment)
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.StreamID == 0 {
		if c.sendWindow+inc > maxWindow {
			return connError{http2.ErrCodeFlowControl, "WINDOW_UPDATE overflows the connection window"}
		}
		c.sendWindow += inc
		c.cond.Broadcast()
		return nil
	}
	if f.StreamID > c.maxSeen {
		return connError{http2.ErrCodeProtocol, fmt.Sprintf("WINDOW_UPDATE on idle stream %d", f.StreamID)}
	}
	st := c.streams[f.StreamID]
	if st == nil {
		return nil
	}
	if st.sendWindow+inc > maxWindow {
		return http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeFlowControl}
	}
	st.sendWindow += inc
	c.cond.Broadcast()
	return nil
}

func (c *conn) onPing(f *http2.PingFrame) error {
	if f.IsAck() {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.wfr.WritePing(true, f.Data); err != nil {
		return c.writeFailedLocked(err)
	}
	c.needFlush = true
	return nil
}

func (c *conn) onRSTStream(f *http2.RSTStreamFrame) error {
	c.mu.Lock()
	if f.StreamID > c.maxSeen {
		c.mu.Unlock()
		return connError{http2.ErrCodeProtocol, fmt.Sprintf("RST_STREAM on idle stream %d", f.StreamID)}
	}
	st := c.streams[f.StreamID]
	if st != nil {
		c.markResetLocked(st)
	}
	c.mu.Unlock()
	if st != nil {
		st.abort(errStreamReset)
	}
	return nil
}

// onGoAway: the peer opens no more streams; the connection closes once ours finish.
func (c *conn) onGoAway(f *http2.GoAwayFrame) {
	if f.ErrCode != http2.ErrCodeNo {
		c.srv.Log.V(1).Info("HTTP/2 peer sent GOAWAY", "peer", c.remoteAddr, "code", f.ErrCode.String(), "debug", string(f.DebugData()))
	}
	c.goAwayGracefully()
}

// resetStream sends RST_STREAM(code) for stream id and ends the stream if it is open.
func (c *conn) resetStream(id uint32, code http2.ErrCode, cause error) {
	c.mu.Lock()
	st := c.streams[id]
	if st == nil || !st.reset {
		if err := c.wfr.WriteRSTStream(id, code); err != nil {
			_ = c.writeFailedLocked(err)
		}
		c.needFlush = true
	}
	if st != nil {
		c.markResetLocked(st)
	}
	if id > c.maxSeen {
		c.maxSeen = id // a HEADERS the framer rejected still opened (and closed) its stream
	}
	c.mu.Unlock()
	if st != nil {
		st.abort(fmt.Errorf("h2server: stream reset (%v): %w", code, cause))
	}
}

// markResetLocked closes st both ways: its handler's writes fail from now on.
func (c *conn) markResetLocked(st *stream) {
	st.reset = true
	st.remoteClosed = true
	c.cond.Broadcast()
}

// respondDirect answers stream id with an empty response of the given status, from the
// reader, for requests no handler sees.
func (c *conn) respondDirect(id uint32, status int, remoteOpen bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hbuf.Reset()
	c.encodeLocked(":status", statusString(status))
	c.encodeLocked("content-length", "0")
	err := c.writeHeaderBlockLocked(id, c.hbuf.Bytes(), true)
	if err == nil && remoteOpen {
		err = c.wfr.WriteRSTStream(id, http2.ErrCodeNo)
	}
	if err != nil {
		_ = c.writeFailedLocked(err)
	}
	c.needFlush = true
}
