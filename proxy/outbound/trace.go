package outbound

import (
	"encoding/hex"
	"math/rand/v2"
	"net/http"
	"strings"
)

// Trace context: the proxy does not start traces, but it continues the ones a request
// carries, in W3C Trace Context (traceparent) and B3 (X-B3-* or the single b3 header)
// form, with a span of its own: the parent span becomes the application's, and the span
// the next hop sees is the proxy's. Applications must still copy the headers from the
// requests they receive to the requests they make: the proxy cannot tie an outgoing
// request to the incoming one that caused it.
func continueTrace(h http.Header) {
	if tp := h.Get("Traceparent"); tp != "" {
		if next, ok := nextTraceparent(tp); ok {
			h.Set("Traceparent", next)
		}
	}
	if span := h.Get("X-B3-Spanid"); span != "" && h.Get("X-B3-Traceid") != "" {
		h.Set("X-B3-Parentspanid", span)
		h.Set("X-B3-Spanid", newSpanID())
	}
	if b3 := h.Get("B3"); b3 != "" {
		if next, ok := nextB3(b3); ok {
			h.Set("B3", next)
		}
	}
}

// nextTraceparent replaces the parent id of a version-00 traceparent
// (00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>) with a new span id. A header
// that is not well formed is passed on untouched.
func nextTraceparent(tp string) (string, bool) {
	parts := strings.Split(tp, "-")
	if len(parts) != 4 || parts[0] != "00" || !isHex(parts[1], 32) || !isHex(parts[2], 16) || !isHex(parts[3], 2) ||
		parts[1] == strings.Repeat("0", 32) {
		return "", false
	}
	return "00-" + parts[1] + "-" + newSpanID() + "-" + parts[3], true
}

// nextB3 rewrites the single b3 header (<trace id>-<span id>[-<sampled>[-<parent span id>]]):
// the proxy's span becomes the span, the application's the parent.
func nextB3(b3 string) (string, bool) {
	parts := strings.Split(b3, "-")
	if len(parts) < 2 || (!isHex(parts[0], 16) && !isHex(parts[0], 32)) || !isHex(parts[1], 16) {
		return "", false // including the sampling-only forms "0", "1" and "d"
	}
	sampled := "1"
	if len(parts) >= 3 {
		sampled = parts[2]
	}
	return parts[0] + "-" + newSpanID() + "-" + sampled + "-" + parts[1], true
}

func newSpanID() string {
	var b [8]byte
	for {
		v := rand.Uint64()
		if v == 0 {
			continue // an all-zero span id is invalid
		}
		for i := range b {
			b[i] = byte(v >> (8 * i))
		}
		return hex.EncodeToString(b[:])
	}
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
