package h2hdr

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// wire carries frames from a writing Framer to a reading one, with one HPACK encoder for
// the connection, as a peer would.
type wire struct {
	t    *testing.T
	buf  bytes.Buffer
	hbuf bytes.Buffer
	enc  *hpack.Encoder
	w, r *http2.Framer
}

func newWire(t *testing.T) *wire {
	w := &wire{t: t}
	w.enc = hpack.NewEncoder(&w.hbuf)
	w.w = http2.NewFramer(&w.buf, nil)
	w.r = http2.NewFramer(nil, &w.buf)
	return w
}

// encode returns the HPACK encoding of name/value pairs, with the connection's encoder.
func (w *wire) encode(pairs ...string) []byte {
	w.hbuf.Reset()
	for i := 0; i+1 < len(pairs); i += 2 {
		if err := w.enc.WriteField(hpack.HeaderField{Name: pairs[i], Value: pairs[i+1]}); err != nil {
			w.t.Fatal(err)
		}
	}
	return bytes.Clone(w.hbuf.Bytes())
}

// send writes a HEADERS frame with the first fragment and a CONTINUATION frame with each
// other one.
func (w *wire) send(id uint32, endStream bool, frags ...[]byte) {
	err := w.w.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frags[0], EndStream: endStream, EndHeaders: len(frags) == 1})
	for i, frag := range frags[1:] {
		if err == nil {
			err = w.w.WriteContinuation(id, i == len(frags)-2, frag)
		}
	}
	if err != nil {
		w.t.Fatal(err)
	}
}

// decode reads the next HEADERS frame and decodes its block with d.
func (w *wire) decode(d *Decoder) (*Block, error) {
	w.t.Helper()
	f, err := w.r.ReadFrame()
	if err != nil {
		w.t.Fatalf("reading HEADERS: %v", err)
	}
	hf, ok := f.(*http2.HeadersFrame)
	if !ok {
		w.t.Fatalf("read %v, want HEADERS", f)
	}
	return d.Read(w.r, hf)
}

// roundTrip sends pairs as one block on stream 1 and decodes it with a new decoder.
func roundTrip(t *testing.T, maxList uint32, pairs ...string) (*Block, error) {
	w := newWire(t)
	w.send(1, true, w.encode(pairs...))
	return w.decode(NewDecoder(maxList, nil))
}

func TestReadDecodesBlock(t *testing.T) {
	w := newWire(t)
	block := w.encode(":method", "GET", ":scheme", "https", ":authority", "a.test", ":path", "/p",
		"x-multi", "1", "content-type", "text/plain", "x-multi", "2", "x-single", "3")
	w.send(7, true, block[:5], block[5:11], block[11:]) // split mid-field
	b, err := w.decode(NewDecoder(1<<10, nil))
	if err != nil {
		t.Fatal(err)
	}
	want := Block{
		StreamID: 7, Ended: true, Pseudo: Method | Scheme | Authority | Path,
		Method: "GET", Scheme: "https", Authority: "a.test", Path: "/p",
		Header: http.Header{"X-Multi": {"1", "2"}, "Content-Type": {"text/plain"}, "X-Single": {"3"}},
	}
	if !reflect.DeepEqual(*b, want) {
		t.Errorf("block %+v\nwant  %+v", *b, want)
	}
	// Single values share a backing array: growing one must not overwrite another.
	b.Header["Content-Type"] = append(b.Header["Content-Type"], "extra")
	if got := b.Header.Get("X-Single"); got != "3" {
		t.Errorf("X-Single is %q after appending to Content-Type, want \"3\"", got)
	}
}

func TestReadResponseBlock(t *testing.T) {
	b, err := roundTrip(t, 1<<10, ":status", "204", "server", "s")
	if err != nil {
		t.Fatal(err)
	}
	if b.Pseudo != Status || b.Status != "204" || b.Header.Get("Server") != "s" {
		t.Errorf("block %+v, want :status 204 and Server s", *b)
	}
}

// TestReadKeepsHPACKState checks that the dynamic table carries from block to block,
// also past a block that was malformed or beyond the limit, and that each block gets
// its own Header.
func TestReadKeepsHPACKState(t *testing.T) {
	w := newWire(t)
	d := NewDecoder(200, nil)
	w.send(1, false, w.encode(":status", "200", "x-kept", "first"))
	first, err := w.decode(d)
	if err != nil {
		t.Fatal(err)
	}
	firstHeader := first.Header
	w.send(3, false, w.encode("X-Bad", "v", "x-after-bad", "a"))
	if _, err := w.decode(d); err == nil {
		t.Fatal("block with an upper-case name decoded")
	}
	w.send(5, false, w.encode("x-long", strings.Repeat("v", 170), "x-after-long", "b"))
	if b, err := w.decode(d); err != nil || !b.Truncated {
		t.Fatalf("block beyond the limit: %v, %+v", err, b)
	}
	// Every field now comes from the dynamic table.
	w.send(7, true, w.encode("x-kept", "first", "x-after-bad", "a", "x-after-long", "b"))
	b, err := w.decode(d)
	if err != nil {
		t.Fatal(err)
	}
	want := http.Header{"X-Kept": {"first"}, "X-After-Bad": {"a"}, "X-After-Long": {"b"}}
	if !reflect.DeepEqual(b.Header, want) {
		t.Errorf("header %v, want %v", b.Header, want)
	}
	if !reflect.DeepEqual(firstHeader, http.Header{"X-Kept": {"first"}}) {
		t.Errorf("the first block's header became %v", firstHeader)
	}
}

// TestReadLimit checks the header list limit: fields count their name, value and 32
// bytes; a list beyond it is truncated (not an error); a fragment far beyond what is
// left, or a string longer than the limit, ends the connection.
func TestReadLimit(t *testing.T) {
	field := func(n int) string { return strings.Repeat("v", n-32-len("x-a")) } // x-a: a field of n bytes
	t.Run("at the limit", func(t *testing.T) {
		b, err := roundTrip(t, 100, "x-a", field(50), "x-b", field(50))
		if err != nil || b.Truncated || len(b.Header) != 2 {
			t.Errorf("block of 100 bytes: %v, truncated %v, header %v", err, b != nil && b.Truncated, b)
		}
	})
	t.Run("one byte beyond", func(t *testing.T) {
		b, err := roundTrip(t, 100, "x-a", field(50), "x-c", field(51), "x-d", "")
		if err != nil {
			t.Fatal(err)
		}
		if !b.Truncated || !reflect.DeepEqual(b.Header, http.Header{"X-A": {field(50)}}) {
			t.Errorf("truncated %v, header %v; want truncated after X-A", b.Truncated, b.Header)
		}
	})
	t.Run("fragment far beyond", func(t *testing.T) {
		w := newWire(t)
		first := w.encode("x-a", field(90))
		w.send(1, true, first, w.encode("x-b", strings.Repeat("v", 30))) // 10 bytes left
		_, err := w.decode(NewDecoder(100, nil))
		wantConnError(t, err, http2.ErrCodeProtocol)
	})
	t.Run("string longer than the limit", func(t *testing.T) {
		_, err := roundTrip(t, 100, "x-a", strings.Repeat("v", 101))
		wantConnError(t, err, http2.ErrCodeCompression)
	})
}

// TestReadMalformed checks the blocks that are malformed (a stream error on their own
// stream) and those that end the connection.
func TestReadMalformed(t *testing.T) {
	streamErrors := []struct {
		name  string
		pairs []string
	}{
		{"upper-case name", []string{":status", "200", "X-Upper", "v"}},
		{"empty name", []string{":status", "200", "", "v"}},
		{"space in a name", []string{":status", "200", "x y", "v"}},
		{"new line in a value", []string{":status", "200", "x-v", "a\nb"}},
		{"NUL in a pseudo-header value", []string{":path", "/\x00"}},
		{"pseudo-header after a regular field", []string{"x-a", "1", ":status", "200"}},
		{"unknown pseudo-header", []string{":status", "200", ":foo", "x"}},
		{"duplicate pseudo-header", []string{":path", "/a", ":path", "/b"}},
		{"status with a request pseudo-header", []string{":status", "200", ":path", "/"}},
		{"status with :protocol", []string{":protocol", "websocket", ":status", "200"}},
	}
	for _, tc := range streamErrors {
		t.Run(tc.name, func(t *testing.T) {
			w := newWire(t)
			w.send(5, true, w.encode(tc.pairs...))
			_, err := w.decode(NewDecoder(1<<10, nil))
			var se http2.StreamError
			if !errors.As(err, &se) || se.StreamID != 5 || se.Code != http2.ErrCodeProtocol {
				t.Errorf("error %v, want a PROTOCOL_ERROR stream error on stream 5", err)
			}
		})
	}
	t.Run("fragment after a malformed field", func(t *testing.T) {
		w := newWire(t)
		w.send(1, true, w.encode("X-Upper", "v"), w.encode("x-b", "v"))
		_, err := w.decode(NewDecoder(1<<10, nil))
		wantConnError(t, err, http2.ErrCodeProtocol)
	})
	t.Run("undecodable", func(t *testing.T) {
		w := newWire(t)
		w.send(1, true, []byte{0xff, 0xff, 0xff, 0xff})
		_, err := w.decode(NewDecoder(1<<10, nil))
		wantConnError(t, err, http2.ErrCodeCompression)
	})
	t.Run("cut in the middle of a field", func(t *testing.T) {
		w := newWire(t)
		w.send(1, true, w.encode("x-a", "value")[:5])
		_, err := w.decode(NewDecoder(1<<10, nil))
		wantConnError(t, err, http2.ErrCodeCompression)
	})
	t.Run("CONTINUATION of another stream", func(t *testing.T) {
		w := newWire(t)
		block := w.encode("x-a", "value")
		if err := w.w.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:3]}); err != nil {
			t.Fatal(err)
		}
		if err := w.w.WriteContinuation(3, true, block[3:]); err != nil {
			t.Fatal(err)
		}
		_, err := w.decode(NewDecoder(1<<10, nil))
		var ce http2.ConnectionError
		if !errors.As(err, &ce) || http2.ErrCode(ce) != http2.ErrCodeProtocol {
			t.Errorf("error %v, want a PROTOCOL_ERROR connection error", err)
		}
	})
}

func wantConnError(t *testing.T, err error, code http2.ErrCode) {
	t.Helper()
	var ce ConnError
	if !errors.As(err, &ce) || ce.Code != code || ce.Reason == "" {
		t.Errorf("error %v, want a ConnError with code %v and a reason", err, code)
	}
}

// TestReadOnRegular checks the caller's say over regular fields: it sees each valid one
// within the limit, in order, and the fields it refuses stay out of the header.
func TestReadOnRegular(t *testing.T) {
	var seen []string
	d := NewDecoder(170, func(name, value string) bool { // room for the first four fields
		seen = append(seen, name+"="+value)
		return name != "cookie"
	})
	w := newWire(t)
	w.send(1, true, w.encode(":method", "GET", "cookie", "a=1", "x-a", "1", "cookie", "b=2", "x-big", strings.Repeat("v", 100), "x-late", "2"))
	b, err := w.decode(d)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"cookie=a=1", "x-a=1", "cookie=b=2"}; !reflect.DeepEqual(seen, want) {
		t.Errorf("onRegular saw %q, want %q", seen, want)
	}
	if !b.Truncated || !reflect.DeepEqual(b.Header, http.Header{"X-A": {"1"}}) {
		t.Errorf("truncated %v, header %v; want truncated with X-A only", b.Truncated, b.Header)
	}
}

// TestCanonical checks the canonical keys, also for more names than the cache holds.
func TestCanonical(t *testing.T) {
	d := NewDecoder(1<<10, nil)
	for i := range 2 * maxCachedNames {
		name := fmt.Sprintf("x-name-%d", i)
		if got, want := d.Canonical(name), fmt.Sprintf("X-Name-%d", i); got != want {
			t.Fatalf("Canonical(%q) = %q, want %q", name, got, want)
		}
	}
	if got := d.Canonical("content-type"); got != "Content-Type" {
		t.Errorf("Canonical(content-type) = %q", got)
	}
}

// The wire spelling of a header key: lower-case, and the very string when it already is.
func TestLower(t *testing.T) {
	for in, want := range map[string]string{"Content-Type": "content-type", "x-id": "x-id", "": ""} {
		if got := Lower(in); got != want {
			t.Errorf("Lower(%q) = %q, want %q", in, got, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { _ = Lower("already-lower") }); n != 0 {
		t.Errorf("Lower of a lower-case name allocates %.0f times, want none", n)
	}
}
