package outbound

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// DefaultDetectTimeout is how long protocol detection waits for a client's first bytes
// when nothing else is configured: long enough for any client that speaks first, short
// enough that a protocol whose server speaks first (SMTP, MySQL) barely notices.
const DefaultDetectTimeout = 200 * time.Millisecond

// detected is what the first bytes of a connection say about its protocol.
type detected uint8

const (
	needMore detected = iota // the bytes so far could still be either
	isHTTP                   // an HTTP/1 request line or the HTTP/2 preface
	isOpaque                 // anything else
)

func (d detected) String() string {
	return [...]string{"undecided", "http", "opaque"}[d]
}

// h2Preface starts every HTTP/2 connection with prior knowledge (h2c).
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// maxPeek bounds the bytes detection reads: an HTTP/1 request line that is still
// plausible this far in is taken as HTTP (a long URL).
const maxPeek = 8 << 10

// maxMethod bounds the length of an HTTP method.
const maxMethod = 24

// classify decides from the first bytes of a client's stream whether it speaks HTTP:
// the HTTP/2 preface, or an HTTP/1 request line (METHOD SP target SP HTTP/1.x).
// It says needMore while the bytes are a proper prefix of either.
func classify(b []byte) detected {
	if len(b) == 0 {
		return needMore
	}
	if len(b) < len(h2Preface) && h2Preface[:len(b)] == string(b) {
		return needMore
	}
	if bytes.HasPrefix(b, []byte(h2Preface)) {
		return isHTTP
	}
	return classifyHTTP1(b)
}

// classifyHTTP1 looks for a request line: METHOD SP target SP HTTP/1.x.
func classifyHTTP1(b []byte) detected {
	rest, d := field(b, maxMethod, func(c byte) bool { return c >= 'A' && c <= 'Z' || c == '-' || c == '_' })
	if d != isHTTP {
		return d
	}
	rest, d = field(rest, len(rest), func(c byte) bool { return c > ' ' && c != 0x7f })
	switch {
	case d == needMore && len(b) >= maxPeek:
		return isHTTP // a very long target: HTTP says what it thinks of it
	case d != isHTTP:
		return d
	}
	const version = "HTTP/1."
	n := min(len(rest), len(version))
	switch {
	case string(rest[:n]) != version[:n]:
		return isOpaque
	case len(rest) == n:
		return needMore
	case rest[n] != '0' && rest[n] != '1':
		return isOpaque
	}
	return isHTTP
}

// field reads a field of 1 to limit bytes that valid accepts, ended by a space. It returns
// what follows the space and isHTTP, or says that it needs more bytes or that they are
// not HTTP.
func field(b []byte, limit int, valid func(byte) bool) ([]byte, detected) {
	for i, c := range b {
		switch {
		case c == ' ' && i > 0:
			return b[i+1:], isHTTP
		case i >= limit || !valid(c):
			return nil, isOpaque
		}
	}
	return nil, needMore
}

var peekBuffers = sync.Pool{New: func() any { return new([maxPeek]byte) }}

// detect reads the first bytes of c for at most wait and classifies them. It returns
// the bytes it read, which the connection's next reader must get first. A client that
// sends nothing within wait, or closes its side first, is opaque: its server may be the
// one to speak first. Only a read error other than those fails.
func detect(c net.Conn, wait time.Duration) (detected, []byte, error) {
	if err := c.SetReadDeadline(time.Now().Add(wait)); err != nil {
		return isOpaque, nil, err
	}
	buf := peekBuffers.Get().(*[maxPeek]byte)
	defer peekBuffers.Put(buf)
	n, verdict := 0, needMore
	for verdict == needMore {
		m, err := c.Read(buf[n:])
		n += m
		verdict = classify(buf[:n])
		switch {
		case verdict != needMore:
		case n == len(buf):
			verdict = isHTTP // a request line still plausible after maxPeek bytes
		case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, io.EOF):
			verdict = isOpaque
		case err != nil:
			return isOpaque, nil, err
		}
	}
	if err := c.SetReadDeadline(time.Time{}); err != nil {
		return isOpaque, nil, err
	}
	return verdict, bytes.Clone(buf[:n]), nil
}
