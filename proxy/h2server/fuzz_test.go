package h2server

import (
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/braidmesh/braid/proxy/internal/h2test"
)

// fuzzSeeds returns frame sequences a client could send after its preface.
func fuzzSeeds(tb testing.TB) [][]byte {
	tb.Helper()
	var seeds [][]byte
	add := func(write func(fr *http2.Framer, block func(...string) []byte)) {
		seeds = append(seeds, h2test.Frames(write))
	}
	req := []string{":method", "POST", ":scheme", "https", ":authority", "a", ":path", "/x"}
	add(func(fr *http2.Framer, block func(...string) []byte) {
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block(req...), EndHeaders: true})
		_ = fr.WriteData(1, false, []byte("hello"))
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block("x-t", "v"), EndStream: true, EndHeaders: true})
		_ = fr.WriteWindowUpdate(0, 1000)
		_ = fr.WritePing(false, [8]byte{})
	})
	add(func(fr *http2.Framer, block func(...string) []byte) {
		b := block(req...)
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: b[:3], EndStream: true})
		_ = fr.WriteContinuation(3, true, b[3:])
		_ = fr.WriteRSTStream(3, http2.ErrCodeCancel)
		_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1}, http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 14})
		_ = fr.WriteGoAway(0, http2.ErrCodeNo, nil)
	})
	add(func(fr *http2.Framer, block func(...string) []byte) {
		_ = fr.WriteSettings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0})
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, BlockFragment: block(":method", "GET", ":scheme", "https", ":path", "/", "cookie", "a=1", "cookie", "b=2"), EndStream: true, EndHeaders: true})
		_ = fr.WritePriority(5, http2.PriorityParam{StreamDep: 1, Weight: 3})
		_ = fr.WriteData(5, true, nil)
	})
	return seeds
}

// FuzzServeConn feeds arbitrary bytes after the client preface: the server must neither
// panic nor hang.
func FuzzServeConn(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = ln.Close() })
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-T")
		_, _ = io.Copy(w, r.Body)
		w.Header().Set("X-T", "done")
	})
	f.Fuzz(func(t *testing.T, data []byte) {
		client, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close() //nolint:errcheck // a test socket
		server, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		srv := &Server{Handler: handler, MaxConcurrentStreams: 4}
		done := make(chan error, 1)
		go func() { done <- srv.ServeConn(server) }()
		go func() { _, _ = io.Copy(io.Discard, client) }()
		settings := []byte{0, 0, 0, byte(http2.FrameSettings), 0, 0, 0, 0, 0}
		_, _ = client.Write(append(append([]byte(http2.ClientPreface), settings...), data...))
		_ = client.(*net.TCPConn).CloseWrite()
		select {
		case err := <-done:
			_ = err // any error is fine; returning is what counts
		case <-time.After(10 * time.Second):
			t.Fatal("ServeConn did not return after the client closed its side")
		}
	})
}
