package h2server

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// protocolServer answers "/" with 200 "ok", and holds "/block" open until its
// stream is cancelled (or release is closed) without reading the body.
func protocolServer(t *testing.T, srv *Server, release chan struct{}) *harness {
	t.Helper()
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/block" {
			select {
			case <-r.Context().Done():
			case <-release:
				_, _ = io.WriteString(w, "released")
			}
			return
		}
		_, _ = io.WriteString(w, "ok")
	})
	return startServer(t, srv, nil)
}

func TestMalformedInput(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	h := protocolServer(t, &Server{MaxHeaderListSize: 1024, InitialStreamWindow: 1024}, release)
	get := []string{":method", "GET", ":scheme", "https", ":authority", "test"}
	post := []string{":method", "POST", ":scheme", "https", ":authority", "test", ":path", "/block"}
	with := func(base []string, more ...string) []string { return append(append([]string{}, base...), more...) }

	streamErrors := []struct {
		name string
		send func(rc *rawClient)
		code http2.ErrCode
	}{
		{"uppercase header name", func(rc *rawClient) { rc.headers(1, true, with(get, ":path", "/", "X-Upper", "v")...) }, http2.ErrCodeProtocol},
		{"missing :path", func(rc *rawClient) { rc.headers(1, true, get...) }, http2.ErrCodeProtocol},
		{"missing :method", func(rc *rawClient) { rc.headers(1, true, ":scheme", "https", ":path", "/") }, http2.ErrCodeProtocol},
		{"bad :scheme", func(rc *rawClient) { rc.headers(1, true, ":method", "GET", ":scheme", "ftp", ":path", "/") }, http2.ErrCodeProtocol},
		{"relative :path", func(rc *rawClient) { rc.headers(1, true, with(get, ":path", "x")...) }, http2.ErrCodeProtocol},
		{"space in :path", func(rc *rawClient) { rc.headers(1, true, with(get, ":path", "/a?q=1 HTTP/1.0")...) }, http2.ErrCodeProtocol},
		{"tab in :path", func(rc *rawClient) { rc.headers(1, true, with(get, ":path", "/a\tb")...) }, http2.ErrCodeProtocol},
		{":status in a request", func(rc *rawClient) { rc.headers(1, true, with(get, ":path", "/", ":status", "200")...) }, http2.ErrCodeProtocol},
		{"connection header", func(rc *rawClient) { rc.headers(1, true, with(get, ":path", "/", "connection", "keep-alive")...) }, http2.ErrCodeProtocol},
		{"transfer-encoding", func(rc *rawClient) { rc.headers(1, true, with(get, ":path", "/", "transfer-encoding", "chunked")...) }, http2.ErrCodeProtocol},
		{"te other than trailers", func(rc *rawClient) { rc.headers(1, true, with(get, ":path", "/", "te", "gzip")...) }, http2.ErrCodeProtocol},
		{"bad content-length", func(rc *rawClient) { rc.headers(1, false, with(post, "content-length", "-1")...) }, http2.ErrCodeProtocol},
		{"body longer than content-length", func(rc *rawClient) {
			rc.headers(1, false, with(post, "content-length", "2")...)
			_ = rc.fr.WriteData(1, true, []byte("hello"))
		}, http2.ErrCodeProtocol},
		{"body shorter than content-length", func(rc *rawClient) {
			rc.headers(1, false, with(post, "content-length", "9")...)
			_ = rc.fr.WriteData(1, true, []byte("hello"))
		}, http2.ErrCodeProtocol},
		{"DATA beyond the stream window", func(rc *rawClient) {
			rc.headers(1, false, post...)
			_ = rc.fr.WriteData(1, false, make([]byte, 2000))
		}, http2.ErrCodeFlowControl},
		{"WINDOW_UPDATE overflows a stream window", func(rc *rawClient) {
			rc.headers(1, false, post...)
			_ = rc.fr.WriteWindowUpdate(1, 1<<31-1)
		}, http2.ErrCodeFlowControl},
		{"DATA after END_STREAM", func(rc *rawClient) {
			rc.headers(1, true, with(get, ":path", "/block")...)
			_ = rc.fr.WriteData(1, true, []byte("late"))
		}, http2.ErrCodeStreamClosed},
		{"trailers without END_STREAM", func(rc *rawClient) {
			rc.headers(1, false, post...)
			rc.headers(1, false, "x-trailer", "v")
		}, http2.ErrCodeProtocol},
		{"pseudo-header in trailers", func(rc *rawClient) {
			rc.headers(1, false, post...)
			rc.headers(1, true, ":path", "/again")
		}, http2.ErrCodeProtocol},
		{"trailer not allowed in trailers", func(rc *rawClient) {
			rc.headers(1, false, post...)
			rc.headers(1, true, "content-length", "0")
		}, http2.ErrCodeProtocol},
		{"control byte in a value", func(rc *rawClient) { rc.headers(1, true, with(get, ":path", "/", "x-v", "a\x01b")...) }, http2.ErrCodeProtocol},
		{"empty header name", func(rc *rawClient) { rc.headers(1, true, with(get, ":path", "/", "", "v")...) }, http2.ErrCodeProtocol},
		{"space in a header name", func(rc *rawClient) { rc.headers(1, true, with(get, ":path", "/", "x y", "v")...) }, http2.ErrCodeProtocol},
		{"pseudo-header after a regular one", func(rc *rawClient) { rc.headers(1, true, with(get, "x-a", "1", ":path", "/")...) }, http2.ErrCodeProtocol},
		{"duplicate :path", func(rc *rawClient) { rc.headers(1, true, with(get, ":path", "/", ":path", "/x")...) }, http2.ErrCodeProtocol},
		{"unknown pseudo-header", func(rc *rawClient) { rc.headers(1, true, with(get, ":path", "/", ":foo", "x")...) }, http2.ErrCodeProtocol},
		{":protocol in a request", func(rc *rawClient) { rc.headers(1, true, with(get, ":path", "/", ":protocol", "websocket")...) }, http2.ErrCodeProtocol},
		{"upgrade header", func(rc *rawClient) { rc.headers(1, true, with(get, ":path", "/", "upgrade", "h2c")...) }, http2.ErrCodeProtocol},
		{"malformed field in a CONTINUATION", func(rc *rawClient) {
			_ = rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: rc.encode(with(get, ":path", "/")...), EndStream: true})
			_ = rc.fr.WriteContinuation(1, true, rc.encode("X-Upper", "v"))
		}, http2.ErrCodeProtocol},
	}
	for _, tc := range streamErrors {
		t.Run(tc.name, func(t *testing.T) {
			rc := h.dialRaw(t)
			tc.send(rc)
			rc.expectReset(1, tc.code)
			rc.get(3, "/")
			if got := rc.expectResponse(3); got != "200" {
				t.Fatalf("the connection's next request got %s", got)
			}
		})
	}

	connErrors := []struct {
		name string
		send func(rc *rawClient)
		code http2.ErrCode
	}{
		{"DATA on stream 0", func(rc *rawClient) { _ = rc.fr.WriteRawFrame(http2.FrameData, 0, 0, []byte("x")) }, http2.ErrCodeProtocol},
		{"even stream ID", func(rc *rawClient) { rc.get(2, "/") }, http2.ErrCodeProtocol},
		{"decreasing stream ID", func(rc *rawClient) {
			rc.get(5, "/")
			rc.get(3, "/")
		}, http2.ErrCodeProtocol},
		{"DATA on an idle stream", func(rc *rawClient) { _ = rc.fr.WriteData(7, true, []byte("x")) }, http2.ErrCodeProtocol},
		{"RST_STREAM on an idle stream", func(rc *rawClient) { _ = rc.fr.WriteRSTStream(7, http2.ErrCodeCancel) }, http2.ErrCodeProtocol},
		{"WINDOW_UPDATE overflows the connection window", func(rc *rawClient) { _ = rc.fr.WriteWindowUpdate(0, 1<<31-1) }, http2.ErrCodeFlowControl},
		{"SETTINGS_INITIAL_WINDOW_SIZE too large", func(rc *rawClient) {
			_ = rc.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 31})
		}, http2.ErrCodeFlowControl},
		{"PUSH_PROMISE", func(rc *rawClient) {
			rc.get(1, "/block")
			_ = rc.fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, EndHeaders: true})
		}, http2.ErrCodeProtocol},
		{"frame above SETTINGS_MAX_FRAME_SIZE", func(rc *rawClient) {
			rc.headers(1, false, post...)
			rc.fr.AllowIllegalWrites = true
			_ = rc.fr.WriteData(1, false, make([]byte, 20000))
		}, http2.ErrCodeFrameSize},
		{"header block far above the limit", func(rc *rawClient) {
			rc.headers(1, true, with(get, ":path", "/", "x-big", strings.Repeat("a", 8000))...)
		}, http2.ErrCodeProtocol},
		{"header field longer than the whole limit", func(rc *rawClient) {
			rc.headers(1, true, with(get, ":path", "/", "x-big", strings.Repeat("a", 1500))...)
		}, http2.ErrCodeCompression},
		{"CONTINUATION without HEADERS", func(rc *rawClient) { _ = rc.fr.WriteContinuation(1, true, []byte{0x82}) }, http2.ErrCodeProtocol},
		{"CONTINUATION on another stream", func(rc *rawClient) {
			_ = rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: rc.encode(get...), EndStream: true})
			_ = rc.fr.WriteContinuation(3, true, rc.encode(":path", "/"))
		}, http2.ErrCodeProtocol},
		{"header block interrupted by PING", func(rc *rawClient) {
			_ = rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: rc.encode(get...), EndStream: true})
			_ = rc.fr.WritePing(false, [8]byte{})
		}, http2.ErrCodeProtocol},
		{"CONTINUATION after a malformed field", func(rc *rawClient) {
			_ = rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: rc.encode(with(get, "X-Upper", "v")...), EndStream: true})
			_ = rc.fr.WriteContinuation(1, true, rc.encode(":path", "/"))
		}, http2.ErrCodeProtocol},
		{"CONTINUATION after the header list limit", func(rc *rawClient) {
			_ = rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: rc.encode(with(get, ":path", "/", "x-big", strings.Repeat("a", 1000))...), EndStream: true})
			_ = rc.fr.WriteContinuation(1, true, rc.encode("x-more", "v"))
		}, http2.ErrCodeProtocol},
		{"header block cut in the middle of a field", func(rc *rawClient) {
			_ = rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: rc.encode("x-a", "value")[:5], EndStream: true, EndHeaders: true})
		}, http2.ErrCodeCompression},
		{"undecodable header block", func(rc *rawClient) {
			_ = rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0xff, 0xff, 0xff, 0xff}, EndStream: true, EndHeaders: true})
		}, http2.ErrCodeCompression},
	}
	for _, tc := range connErrors {
		t.Run(tc.name, func(t *testing.T) {
			rc := h.dialRaw(t)
			tc.send(rc)
			rc.expectGoAway(tc.code)
			rc.expectClosed()
		})
	}

	t.Run("bad preface", func(t *testing.T) {
		rc := h.dialRawNoPreface(t)
		_, _ = io.WriteString(rc.conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		rc.expectGoAway(http2.ErrCodeProtocol)
		rc.expectClosed()
	})
	t.Run("first frame not SETTINGS", func(t *testing.T) {
		rc := h.dialRawNoPreface(t)
		_, _ = io.WriteString(rc.conn, http2.ClientPreface)
		_ = rc.fr.WritePing(false, [8]byte{1})
		rc.expectGoAway(http2.ErrCodeProtocol)
		rc.expectClosed()
	})
	t.Run("header list above the limit", func(t *testing.T) {
		rc := h.dialRaw(t)
		fields := with(get, ":path", "/")
		for i := range 20 {
			fields = append(fields, fmt.Sprintf("x-h%d", i), strings.Repeat("a", 40))
		}
		rc.headers(1, true, fields...)
		if got := rc.expectResponse(1); got != "431" {
			t.Fatalf("status %s, want 431", got)
		}
		rc.get(3, "/")
		if got := rc.expectResponse(3); got != "200" {
			t.Fatalf("the connection's next request got %s", got)
		}
	})
	t.Run("trailers on a closed stream are ignored", func(t *testing.T) {
		rc := h.dialRaw(t)
		rc.headers(1, false, with(get, ":path", "/")...) // answered without reading the body
		if got := rc.expectResponse(1); got != "200" {
			t.Fatalf("status %s", got)
		}
		rc.expectReset(1, http2.ErrCodeNo)
		rc.headers(1, true, "x-trailer", "late")
		rc.get(3, "/")
		if got := rc.expectResponse(3); got != "200" {
			t.Fatalf("the connection's next request got %s", got)
		}
	})
	t.Run("CONNECT", func(t *testing.T) {
		rc := h.dialRaw(t)
		rc.headers(1, false, ":method", "CONNECT", ":authority", "example.com:443")
		if got := rc.expectResponse(1); got != "405" {
			t.Fatalf("status %s, want 405", got)
		}
	})
	t.Run("PING", func(t *testing.T) {
		rc := h.dialRaw(t)
		data := [8]byte{1, 2, 3, 4, 5, 6, 7, 8}
		_ = rc.fr.WritePing(false, data)
		f := rc.until("PING ACK", func(f http2.Frame) bool { p, ok := f.(*http2.PingFrame); return ok && p.IsAck() })
		if f.(*http2.PingFrame).Data != data {
			t.Fatalf("PING ACK data %v, want %v", f.(*http2.PingFrame).Data, data)
		}
	})
}

func TestMaxConcurrentStreams(t *testing.T) {
	release, ended := make(chan struct{}), make(chan struct{}, 10)
	srv := &Server{MaxConcurrentStreams: 2, Handler: http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/block" {
			defer func() { ended <- struct{}{} }()
			select {
			case <-r.Context().Done():
			case <-release:
			}
		}
	})}
	h := startServer(t, srv, nil)

	t.Run("refused beyond the limit", func(t *testing.T) {
		rc := h.dialRaw(t)
		rc.get(1, "/block")
		rc.get(3, "/block")
		rc.get(5, "/")
		rc.expectReset(5, http2.ErrCodeRefusedStream)
		_ = rc.fr.WriteRSTStream(1, http2.ErrCodeCancel)
		<-ended // stream 1's handler returned on the reset: there is room again
		for id := uint32(7); ; id += 2 {
			rc.get(id, "/")
			f := rc.until("a response or a reset", func(f http2.Frame) bool {
				_, headers := f.(*http2.MetaHeadersFrame)
				_, rst := f.(*http2.RSTStreamFrame)
				return (headers || rst) && f.Header().StreamID == id
			})
			if _, ok := f.(*http2.MetaHeadersFrame); ok {
				break
			}
			if id > 9 { // the stream is forgotten just after its handler returns
				t.Fatal("streams are still refused after one ended")
			}
		}
	})
	t.Run("reset streams count while their handler runs", func(t *testing.T) {
		stuck := make(chan struct{})
		defer close(stuck)
		srv := &Server{MaxConcurrentStreams: 2, Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-stuck })}
		h := startServer(t, srv, nil)
		rc := h.dialRaw(t)
		rc.get(1, "/")
		rc.get(3, "/")
		_ = rc.fr.WriteRSTStream(1, http2.ErrCodeCancel)
		_ = rc.fr.WriteRSTStream(3, http2.ErrCodeCancel)
		rc.get(5, "/")
		rc.expectReset(5, http2.ErrCodeRefusedStream)
		rc.get(7, "/")
		rc.expectReset(7, http2.ErrCodeRefusedStream)
		rc.get(9, "/")
		rc.expectGoAway(http2.ErrCodeEnhanceYourCalm)
		rc.expectClosed()
	})
	close(release)
}

func TestShutdownDrainsInFlightStreams(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	srv := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		close(started)
		<-release
		_, _ = io.WriteString(w, "finished")
	})}
	h := startServer(t, srv, nil)
	rc := h.dialRaw(t)
	rc.get(1, "/slow")
	<-started
	done := make(chan error, 1)
	go func() { done <- srv.Shutdown(context.Background()) }()
	ga := rc.expectGoAway(http2.ErrCodeNo)
	if ga.LastStreamID != 1 {
		t.Fatalf("GOAWAY last stream %d, want 1", ga.LastStreamID)
	}
	rc.get(3, "/new")
	rc.expectReset(3, http2.ErrCodeRefusedStream)
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned (%v) with a stream in flight", err)
	default:
	}
	close(release)
	if got := rc.expectResponse(1); got != "200" {
		t.Fatalf("in-flight stream got %s", got)
	}
	data := rc.until("DATA", func(f http2.Frame) bool { _, ok := f.(*http2.DataFrame); return ok })
	if string(data.(*http2.DataFrame).Data()) != "finished" {
		t.Fatalf("in-flight body %q", data.(*http2.DataFrame).Data())
	}
	rc.expectClosed()
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := h.srv.ServeConn(rc.conn); err == nil {
		t.Fatal("ServeConn after Shutdown succeeded")
	}
}

func TestShutdownClosesWhatIsLeftWhenContextEnds(t *testing.T) {
	started := make(chan struct{})
	srv := &Server{Handler: http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		close(started)
		<-r.Context().Done() // ends only when the connection is closed
	})}
	h := startServer(t, srv, nil)
	rc := h.dialRaw(t)
	rc.get(1, "/stuck")
	<-started
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := srv.Shutdown(ctx); err == nil {
		t.Fatal("Shutdown with an ended context and a stream in flight returned nil")
	}
	rc.expectClosed()
}

func TestIdleTimeout(t *testing.T) {
	const idle = 200 * time.Millisecond
	srv := &Server{IdleTimeout: idle, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		<-time.After(3 * idle) // outlives the idle timeout: an open stream keeps the conn
		_, _ = io.WriteString(w, "late")
	})}
	h := startServer(t, srv, nil)
	rc := h.dialRaw(t)
	start := time.Now()
	rc.get(1, "/")
	if got := rc.expectResponse(1); got != "200" {
		t.Fatalf("status %s", got)
	}
	rc.expectGoAway(http2.ErrCodeNo)
	rc.expectClosed()
	if el := time.Since(start); el < 4*idle {
		t.Fatalf("closed after %v, before the stream's end plus the idle timeout", el)
	}
}

func TestDataBeyondTheConnectionWindow(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	h := protocolServer(t, &Server{InitialConnWindow: 65535, InitialStreamWindow: 1 << 20}, release)
	rc := h.dialRaw(t)
	post := []string{":method", "POST", ":scheme", "https", ":authority", "test", ":path", "/block"}
	chunk := make([]byte, 16384)
	for _, id := range []uint32{1, 3} { // neither handler reads: nothing is credited back
		rc.headers(id, false, post...)
		for range 3 {
			_ = rc.fr.WriteData(id, false, chunk)
		}
	}
	rc.expectGoAway(http2.ErrCodeFlowControl)
	rc.expectClosed()
}
