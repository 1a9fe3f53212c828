package h2client

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/net/http2"

	"github.com/braidmesh/braid/proxy/internal/h2test"
)

// fuzzServerSeeds returns frame sequences a server could answer the fuzz target's two
// requests (streams 1 and 3) with.
func fuzzServerSeeds() [][]byte {
	var seeds [][]byte
	add := func(write func(fr *http2.Framer, block func(...string) []byte)) {
		seeds = append(seeds, h2test.Frames(write))
	}
	add(func(fr *http2.Framer, block func(...string) []byte) {
		_ = fr.WriteSettingsAck()
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block(":status", "200", "content-length", "5"), EndHeaders: true})
		_ = fr.WriteData(1, true, []byte("hello"))
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: block(":status", "103", "link", "</a>"), EndHeaders: true})
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: block(":status", "201", "trailer", "x-t"), EndHeaders: true})
		_ = fr.WriteData(3, false, []byte("body"))
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: block("x-t", "v"), EndStream: true, EndHeaders: true})
	})
	add(func(fr *http2.Framer, block func(...string) []byte) {
		b := block(":status", "404", "x-a", strings.Repeat("a", 100))
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:4]})
		_ = fr.WriteContinuation(1, true, b[4:])
		_ = fr.WriteRSTStream(3, http2.ErrCodeRefusedStream)
		_ = fr.WriteWindowUpdate(0, 1<<20)
		_ = fr.WritePing(false, [8]byte{1})
		_ = fr.WriteData(1, true, nil)
	})
	add(func(fr *http2.Framer, block func(...string) []byte) {
		_ = fr.WriteSettings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0}, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1})
		_ = fr.WriteGoAway(1, http2.ErrCodeNo, []byte("bye"))
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block(":status", "200", "content-length", "1"), EndHeaders: true})
		_ = fr.WriteData(1, false, []byte("toolong"))
		_ = fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, BlockFragment: block(":method", "GET"), EndHeaders: true})
	})
	return seeds
}

// FuzzClientConn answers two requests in flight, a GET and a POST with a body, with
// arbitrary frames once both are open: whatever the server sends, RoundTrip
// and the bodies return (an answer or an error), the transport never panics or hangs,
// and the connection is let go once the server has closed it.
func FuzzClientConn(f *testing.F) {
	for _, s := range fuzzServerSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		tr := &Transport{Log: logr.Discard(), DialTLS: func(ctx context.Context, addr string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", addr)
			if err == nil {
				_ = c.(*net.TCPConn).SetLinger(0) // no TIME_WAIT: a fuzzing run opens many
			}
			return c, err
		}}
		var conns sync.WaitGroup
		served := make(chan struct{})
		go func() {
			defer close(served)
			for { // a request the server did not process is sent again on a new connection
				c, err := ln.Accept()
				if err != nil {
					conns.Wait()
					return
				}
				_ = c.(*net.TCPConn).SetLinger(0)
				conns.Go(func() { serveRaw(c, data) })
			}
		}()
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		watchdog := time.AfterFunc(20*time.Second, func() {
			buf := make([]byte, 1<<20)
			panic(fmt.Sprintf("hung on %q:\n%s", data, buf[:runtime.Stack(buf, true)]))
		})
		defer watchdog.Stop()
		var requests sync.WaitGroup
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			requests.Go(func() {
				var body io.Reader
				if method == http.MethodPost {
					body = strings.NewReader("request body")
				}
				req, _ := http.NewRequestWithContext(ctx, method, "https://"+ln.Addr().String()+"/", body)
				resp, err := tr.RoundTrip(req)
				if err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
			})
		}
		requests.Wait()
		if ctx.Err() != nil {
			t.Fatalf("a request was still waiting after 10 s, for %q", data)
		}
		_ = ln.Close()
		select {
		case <-served:
		case <-time.After(10 * time.Second):
			t.Fatalf("the connection stayed open after the server closed its side, for %q", data)
		}
	})
}

// serveRaw reads the client's preface on c, writes its SETTINGS,
// reads frames until both requests' HEADERS came (or one did and
// 100 ms passed, or 2 s), writes data, closes
// its side and reads until the client closes the connection.
func serveRaw(c net.Conn, data []byte) {
	defer func() { _ = c.Close() }()
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	br := bufio.NewReader(c)
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(br, preface); err != nil {
		return
	}
	settings := []byte{0, 0, 0, byte(http2.FrameSettings), 0, 0, 0, 0, 0}
	if _, err := c.Write(settings); err != nil {
		return
	}
	fr := http2.NewFramer(io.Discard, br)
	for opened := 0; opened < 2; {
		f, err := fr.ReadFrame()
		if err != nil {
			break
		}
		if _, ok := f.(*http2.HeadersFrame); ok {
			opened++ // a retried request comes alone: wait a little for a second
			_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		}
	}
	_, _ = c.Write(data)
	_ = c.SetReadDeadline(time.Time{})
	// Read what the client sends until it gives up on the connection.
	_ = c.(*net.TCPConn).CloseWrite()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _ = io.Copy(io.Discard, br)
}
