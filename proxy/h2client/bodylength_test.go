package h2client

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"golang.org/x/net/http2"
)

// sentBody is what a raw server received of one request's body.
type sentBody struct {
	data      int  // DATA bytes
	endStream bool // END_STREAM arrived (then the server answered 200)
	reset     bool // RST_STREAM arrived, with code
	code      http2.ErrCode
}

// receiveBody reads the frames of the request on stream id until it ends or is reset;
// a request that ends is answered 200.
func (rc *rawConn) receiveBody(id uint32) sentBody {
	var got sentBody
	for {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			return got
		}
		if f.Header().StreamID != id {
			continue
		}
		switch f := f.(type) {
		case *http2.DataFrame:
			got.data += len(f.Data())
		case *http2.RSTStreamFrame:
			got.reset, got.code = true, f.ErrCode
			return got
		}
		if f.Header().Flags.Has(http2.FlagDataEndStream) { // the same bit on HEADERS
			got.endStream = true
			rc.headers(id, true, ":status", "200")
			return got
		}
	}
}

// TestRequestBodyAgainstContentLength checks that a request body is held to the
// request's ContentLength: a shorter or longer one fails the request and resets the
// stream (CANCEL) without END_STREAM, and the server never gets more than was declared
// (nor more than the body held); bodies of the declared length are sent whole, however
// their reader ends.
func TestRequestBodyAgainstContentLength(t *testing.T) {
	cases := []struct {
		name     string
		declared int64
		body     io.Reader
		wantErr  error // nil: the request succeeds with END_STREAM
		wantData int   // DATA bytes the server gets: all of them, or at most that many on an error
	}{
		{"exact", 5, strings.NewReader("hello"), nil, 5},
		{"exact, EOF with the data", 5, iotest.DataErrReader(strings.NewReader("hello")), nil, 5},
		{"exact, one byte at a time", 5, iotest.OneByteReader(strings.NewReader("hello")), nil, 5},
		{"shorter", 10, strings.NewReader("hello"), errBodyTooShort, 5},
		{"shorter, EOF with the data", 10, iotest.DataErrReader(strings.NewReader("hello")), errBodyTooShort, 5},
		{"empty", 3, strings.NewReader(""), errBodyTooShort, 0},
		{"longer", 5, strings.NewReader("hello, world"), errBodyTooLong, 0},
		{"longer by one byte, read last", 5, iotest.OneByteReader(strings.NewReader("hello!")), errBodyTooLong, 5},
		{"longer, beyond a read buffer", 3 * bodyBufSize / 2, strings.NewReader(strings.Repeat("x", 2*bodyBufSize)), errBodyTooLong, bodyBufSize},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := make(chan sentBody, 1)
			rs := startRaw(t, []http2.Setting{{ID: http2.SettingInitialWindowSize, Val: 1 << 20}}, func(rc *rawConn) {
				_ = rc.fr.WriteWindowUpdate(0, 1<<20)
				rc.flush()
				if id := rc.awaitRequest(); id != 0 {
					got <- rc.receiveBody(id)
				}
			})
			err := postErr(t, newTransport(t, rs.clientTLS, nil), "https://"+rs.addr+"/", tc.body, tc.declared)
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("request error %v, want %v", err, tc.wantErr)
			}
			var sent sentBody
			select {
			case sent = <-got:
			case <-time.After(10 * time.Second):
				t.Fatal("the server saw the request neither end nor reset")
			}
			if tc.wantErr != nil && (sent.endStream || !sent.reset || sent.code != http2.ErrCodeCancel) {
				t.Errorf("server got END_STREAM %v, RST_STREAM %v (%v); want RST_STREAM CANCEL only", sent.endStream, sent.reset, sent.code)
			}
			if tc.wantErr == nil && !sent.endStream {
				t.Error("server got no END_STREAM")
			}
			if sent.data > tc.wantData || tc.wantErr == nil && sent.data != tc.wantData {
				t.Errorf("server got %d body bytes, want %d", sent.data, tc.wantData)
			}
		})
	}
}

// postErr sends a POST whose body declares length and returns RoundTrip's or the
// response body's error.
func postErr(tb testing.TB, tr *Transport, url string, body io.Reader, length int64) error {
	ctx, cancel := context.WithTimeout(tb.Context(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, io.NopCloser(body))
	if err != nil {
		tb.Fatal(err)
	}
	req.ContentLength = length
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close() //nolint:errcheck // test
	_, err = io.ReadAll(resp.Body)
	return err
}

// TestContentLengthWithoutBody checks that a request declaring a length but carrying no
// body fails before anything is sent.
func TestContentLengthWithoutBody(t *testing.T) {
	ts := startH2(t, echoHandler)
	tr := ts.transport(t)
	for _, body := range []io.ReadCloser{nil, http.NoBody} {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, ts.url("/"), nil)
		req.Body, req.ContentLength = body, 5
		if _, err := tr.RoundTrip(req); !errors.Is(err, errBodyTooShort) { //nolint:bodyclose // no response expected
			t.Errorf("body %v: RoundTrip error %v, want %v", body, err, errBodyTooShort)
		}
	}
	if n := ts.accepted.Load(); n != 0 {
		t.Errorf("accepted %d connections, want 0", n)
	}
}
