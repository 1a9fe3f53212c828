package h1client

import (
	"bufio"
	"bytes"
	"net/http"
	"net/textproto"
)

// Bounds of a recorder.
const (
	// maxRecorded bounds what a recorder keeps for one answer's heads: past it, it gives
	// up, and the answer keeps the header as net/http read it.
	maxRecorded = 64 << 10
	// maxKeptHeads bounds the capacity a recorder keeps between answers.
	maxKeptHeads = 8 << 10
)

// recorder keeps what a connection reads while an answer's heads are read, so that asSent
// can read them again as they came. Its zero value records nothing.
type recorder struct {
	on  bool
	buf []byte
}

// start records from prefix: what was read already but not consumed yet.
func (r *recorder) start(prefix []byte) {
	r.on, r.buf = true, append(r.buf[:0], prefix...)
}

// add keeps p while recording, or gives up on this answer past maxRecorded.
func (r *recorder) add(p []byte) {
	switch {
	case !r.on:
	case len(r.buf)+len(p) > maxRecorded:
		r.on, r.buf = false, r.buf[:0]
	default:
		r.buf = append(r.buf, p...)
	}
}

// stop ends the recording and returns what it kept, valid until the next start.
func (r *recorder) stop() []byte {
	kept := r.buf
	r.on = false
	if cap(r.buf) > maxKeptHeads {
		r.buf = nil
	}
	return kept
}

// asSent undoes what ReadResponse changes in an answer's header h, reading what the
// application sent again from heads, whose head number n (from 0) is the answer's:
//
//   - ReadResponse removes a Connection header that holds "close". The fields it lists
//     describe the connection too (RFC 9110 §7.6.1), so a proxy must remove them:
//     without the header, they would pass as the message's own.
//   - It adds "Cache-Control: no-cache" to an answer with Pragma and no Cache-Control,
//     which changes how caches after the proxy keep it (RFC 9111 §5.4: Pragma has no
//     meaning in a response).
//
// Callers call it for the answers that may need it: closing or informational ones, and
// those with Pragma.
func asSent(h http.Header, heads []byte, n int) {
	connection := h["Connection"] == nil
	cacheControl := len(h["Pragma"]) > 0 && len(h["Cache-Control"]) == 1 && h["Cache-Control"][0] == "no-cache"
	if !connection && !cacheControl {
		return
	}
	sent := headerOf(heads, n)
	if sent == nil {
		return
	}
	if v := sent["Connection"]; connection && len(v) > 0 {
		h["Connection"] = v
	}
	if _, ok := sent["Cache-Control"]; cacheControl && !ok {
		delete(h, "Cache-Control")
	}
}

// mayDiffer reports whether ReadResponse may have changed resp's header (see asSent).
func mayDiffer(resp *http.Response) bool {
	return resp.Close || resp.StatusCode < 200 || len(resp.Header["Pragma"]) > 0
}

// headerOf returns the header of head number n (from 0) of heads, answers' heads one
// after another (those before n are informational, without a body), or nil.
func headerOf(heads []byte, n int) textproto.MIMEHeader {
	tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(heads)))
	for i := 0; ; i++ {
		if _, err := tp.ReadLine(); err != nil {
			return nil
		}
		h, err := tp.ReadMIMEHeader()
		if err != nil {
			return nil
		}
		if i == n {
			return h
		}
	}
}
