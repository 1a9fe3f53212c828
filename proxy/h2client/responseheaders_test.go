package h2client

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/braidmesh/braid/proxy/internal/h2test"
)

// encodeBlock is the HPACK block of name/value pairs, from a fresh encoder.
func encodeBlock(pairs ...string) []byte {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for i := 0; i+1 < len(pairs); i += 2 {
		_ = enc.WriteField(hpack.HeaderField{Name: pairs[i], Value: pairs[i+1]})
	}
	return buf.Bytes()
}

// awaitVerdict reads frames until the client resets a stream or ends the connection, and
// returns that frame (nil when the connection ended without either).
func (rc *rawConn) awaitVerdict() http2.Frame {
	for {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			return nil
		}
		switch f.(type) {
		case *http2.RSTStreamFrame, *http2.GoAwayFrame:
			return f
		}
	}
}

// TestMalformedResponseHeaders checks how the client's own header block decoding treats
// malformed responses: a malformed block resets its stream (PROTOCOL_ERROR) and the
// connection goes on; a block that cannot be decoded, or that keeps the client decoding
// past a malformed field or far past the size limit, ends the connection.
func TestMalformedResponseHeaders(t *testing.T) {
	type verdict struct {
		goAway bool
		code   http2.ErrCode
	}
	reset, goAway := func(c http2.ErrCode) verdict { return verdict{false, c} }, func(c http2.ErrCode) verdict { return verdict{true, c} }
	headersThen := func(first []byte, then func(rc *rawConn, id uint32)) func(rc *rawConn, id uint32) {
		return func(rc *rawConn, id uint32) {
			_ = rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: true})
			then(rc, id)
			rc.flush()
		}
	}
	cases := []struct {
		name   string
		script func(rc *rawConn, id uint32)
		want   verdict
	}{
		{"upper-case name", func(rc *rawConn, id uint32) { rc.headers(id, true, ":status", "200", "X-Upper", "v") }, reset(http2.ErrCodeProtocol)},
		{"empty name", func(rc *rawConn, id uint32) { rc.headers(id, true, ":status", "200", "", "v") }, reset(http2.ErrCodeProtocol)},
		{"control byte in a value", func(rc *rawConn, id uint32) { rc.headers(id, true, ":status", "200", "x-v", "a\nb") }, reset(http2.ErrCodeProtocol)},
		{"pseudo-header after a regular one", func(rc *rawConn, id uint32) { rc.headers(id, true, "x-a", "1", ":status", "200") }, reset(http2.ErrCodeProtocol)},
		{"duplicate :status", func(rc *rawConn, id uint32) { rc.headers(id, true, ":status", "200", ":status", "204") }, reset(http2.ErrCodeProtocol)},
		{"unknown pseudo-header", func(rc *rawConn, id uint32) { rc.headers(id, true, ":status", "200", ":foo", "x") }, reset(http2.ErrCodeProtocol)},
		{"request pseudo-header in a response", func(rc *rawConn, id uint32) { rc.headers(id, true, ":status", "200", ":path", "/") }, reset(http2.ErrCodeProtocol)},
		{"pseudo-header in trailers", func(rc *rawConn, id uint32) {
			rc.headers(id, false, ":status", "200")
			rc.headers(id, true, ":status", "200")
		}, reset(http2.ErrCodeProtocol)},
		{"CONTINUATION on another stream", headersThen(encodeBlock(":status", "200"), func(rc *rawConn, id uint32) {
			_ = rc.fr.WriteContinuation(id+2, true, encodeBlock("x", "y"))
		}), goAway(http2.ErrCodeProtocol)},
		{"header block interrupted by PING", headersThen(encodeBlock(":status", "200"), func(rc *rawConn, _ uint32) {
			_ = rc.fr.WritePing(false, [8]byte{})
		}), goAway(http2.ErrCodeProtocol)},
		{"CONTINUATION after a malformed field", headersThen(encodeBlock(":status", "200", "X-Upper", "v"), func(rc *rawConn, id uint32) {
			_ = rc.fr.WriteContinuation(id, true, encodeBlock("x", "y"))
		}), goAway(http2.ErrCodeProtocol)},
		{"field longer than the header list limit", func(rc *rawConn, id uint32) {
			rc.headerBlock(id, ":status", "200", "x-big", strings.Repeat("v", 70<<10))
		}, goAway(http2.ErrCodeCompression)},
		{"undecodable header block", func(rc *rawConn, id uint32) {
			_ = rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: []byte{0xff, 0xff, 0xff, 0xff}, EndStream: true, EndHeaders: true})
			rc.flush()
		}, goAway(http2.ErrCodeCompression)},
		{"block cut in the middle of a field", func(rc *rawConn, id uint32) {
			_ = rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: encodeBlock("x-a", "value")[:5], EndStream: true, EndHeaders: true})
			rc.flush()
		}, goAway(http2.ErrCodeCompression)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := make(chan http2.Frame, 1)
			rs := startRaw(t, nil, func(rc *rawConn) {
				id := rc.awaitRequest()
				if id == 0 {
					got <- nil
					return
				}
				tc.script(rc, id)
				got <- rc.awaitVerdict()
			})
			tr := newTransport(t, rs.clientTLS, nil)
			if err := roundTripErr(t, tr, "https://"+rs.addr+"/"); err == nil {
				t.Error("RoundTrip succeeded")
			}
			checkVerdict(t, <-got, tc.want.goAway, tc.want.code)
		})
	}
}

func checkVerdict(t *testing.T, f http2.Frame, goAway bool, code http2.ErrCode) {
	t.Helper()
	switch f := f.(type) {
	case *http2.RSTStreamFrame:
		if goAway || f.ErrCode != code {
			t.Errorf("client sent RST_STREAM(%v), want goAway=%v code %v", f.ErrCode, goAway, code)
		}
	case *http2.GoAwayFrame:
		if !goAway || f.ErrCode != code {
			t.Errorf("client sent GOAWAY(%v), want goAway=%v code %v", f.ErrCode, goAway, code)
		}
	default:
		t.Errorf("client sent neither RST_STREAM nor GOAWAY (%v)", f)
	}
}

// TestResponseHeadersDecoded checks the decoded response: fields canonicalised, repeated
// fields kept in order, values shared by no two keys, trailers delivered at EOF, and the
// HPACK state kept across responses that reuse the dynamic table.
func TestResponseHeadersDecoded(t *testing.T) {
	rs := startRaw(t, nil, func(rc *rawConn) {
		var buf bytes.Buffer
		enc := hpack.NewEncoder(&buf) // one encoder: the second response reuses its table
		for range 2 {
			id := rc.awaitRequest()
			if id == 0 {
				return
			}
			buf.Reset()
			for _, p := range [][2]string{{":status", "200"}, {"x-multi", "a"}, {"content-type", "text/plain"}, {"x-multi", "b"}, {"x-single", "c"}, {"trailer", "x-trailer"}} {
				_ = enc.WriteField(hpack.HeaderField{Name: p[0], Value: p[1]})
			}
			_ = rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: bytes.Clone(buf.Bytes()), EndHeaders: true})
			_ = rc.fr.WriteData(id, false, []byte("body"))
			buf.Reset()
			_ = enc.WriteField(hpack.HeaderField{Name: "x-trailer", Value: "t"})
			_ = rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: bytes.Clone(buf.Bytes()), EndStream: true, EndHeaders: true})
			rc.flush()
		}
		rc.awaitEnd()
	})
	tr := newTransport(t, rs.clientTLS, nil)
	for i := range 2 {
		resp, body := do(t, tr, mustGet(t, "https://"+rs.addr+"/")) //nolint:bodyclose // closed by the helper
		want := http.Header{"X-Multi": {"a", "b"}, "Content-Type": {"text/plain"}, "X-Single": {"c"}}
		if !equalHeader(resp.Header, want) {
			t.Errorf("response %d: header %v, want %v", i, resp.Header, want)
		}
		if body != "body" || resp.Trailer.Get("X-Trailer") != "t" {
			t.Errorf("response %d: body %q, trailer %v", i, body, resp.Trailer)
		}
		resp.Header["X-Single"] = append(resp.Header["X-Single"], "d") // must not change another key
		if got := resp.Header.Get("Content-Type"); got != "text/plain" {
			t.Errorf("appending to one key changed another: %q", got)
		}
	}
}

func equalHeader(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, vv := range b {
		if strings.Join(a[k], "\x00") != strings.Join(vv, "\x00") {
			return false
		}
	}
	return true
}

// TestRoundTripAllocations pins the steady-state allocations of one GET with a 1 KB
// answer over a real TLS connection, client and server (h2server) together: the pooled
// data buffer, the header block decoded straight into the http.Header, and no
// context.AfterFunc. It fails when a change adds allocations per request.
func TestRoundTripAllocations(t *testing.T) {
	if testing.Short() || h2test.RaceEnabled {
		t.Skip("allocations are not counted in -short mode or with the race detector")
	}
	answer := bytes.Repeat([]byte("x"), 1024)
	ts := startH2(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(answer) }))
	tr := ts.transport(t)
	req := mustGet(t, ts.url("/"))
	var failed error
	getOne := func() {
		resp, err := tr.RoundTrip(req)
		if err != nil {
			failed = err
			return
		}
		n, err := io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if err == nil && n != int64(len(answer)) {
			err = fmt.Errorf("body of %d bytes, want %d", n, len(answer))
		}
		if err != nil {
			failed = err
		}
	}
	for range 100 { // warm up: connection, pools, worker goroutines, caches
		getOne()
	}
	allocs := testing.AllocsPerRun(500, getOne)
	if failed != nil {
		t.Fatal(failed)
	}
	// Per request, client and server together (h2server's TestRequestAllocations counts
	// the server's share): the client's stream (with its response), its channel, header
	// map (2) and values, the HEADERS frames, crypto/tls's record reads. Measured 15 (Go
	// 1.26); 43 before the pooled data buffer, the header block decoding and the end of
	// context.AfterFunc.
	const maxAllocs = 15
	t.Logf("%.1f allocations per request", allocs)
	if allocs > maxAllocs {
		t.Errorf("%.1f allocations per request, want at most %d", allocs, maxAllocs)
	}
}
