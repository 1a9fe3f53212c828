package forward

import (
	"net/http"
	"net/textproto"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// hopByHop are the headers that describe one connection, not the message: RFC 9110
// §7.6.1 and the ones RFC 2616 §13.5.1 listed.
var hopByHop = [...]string{
	"Connection",
	"Proxy-Connection", // non-standard, sent by some clients
	"Keep-Alive",
	"Proxy-Authenticate",
	"Proxy-Authorization",
	"Te",
	"Trailer",
	"Transfer-Encoding",
	"Upgrade",
}

func isHopByHop(k string) bool {
	for _, h := range hopByHop {
		if k == h {
			return true
		}
	}
	return false
}

// connectionListed returns the canonical names the Connection header lists, or nil.
func connectionListed(h http.Header) []string {
	var names []string
	for _, v := range h["Connection"] {
		for name := range strings.SplitSeq(v, ",") {
			if name = textproto.TrimString(name); name != "" {
				names = append(names, textproto.CanonicalMIMEHeaderKey(name))
			}
		}
	}
	return names
}

// withoutHopByHop returns a copy of h without its hop-by-hop headers. Like
// http.Header.Clone, the values of all headers share one backing array.
func withoutHopByHop(h http.Header) http.Header {
	listed := connectionListed(h)
	n := 0
	for _, vv := range h {
		n += len(vv)
	}
	values := make([]string, n)
	out := make(http.Header, len(h))
	for k, vv := range h {
		if isHopByHop(k) || contains(listed, k) {
			continue
		}
		if vv == nil {
			out[k] = nil // kept as Clone keeps it
			continue
		}
		n = copy(values, vv)
		out[k] = values[:n:n]
		values = values[n:]
	}
	return out
}

// RemoveHopByHop removes h's hop-by-hop headers in place: those RFC 9110 §7.6.1 names,
// and any its Connection header lists.
func RemoveHopByHop(h http.Header) {
	for _, k := range connectionListed(h) {
		delete(h, k)
	}
	for _, k := range hopByHop {
		delete(h, k)
	}
}

func contains(names []string, k string) bool {
	for _, n := range names {
		if n == k {
			return true
		}
	}
	return false
}

// UpgradeType returns the protocol a message asks to switch to (its Upgrade header,
// when its Connection header names the upgrade), or "".
func UpgradeType(h http.Header) string {
	if !httpguts.HeaderValuesContainsToken(h["Connection"], "Upgrade") {
		return ""
	}
	return h.Get("Upgrade")
}

// inTarget reports whether s can be part of a request target as it is: no space, no
// control character. (The path is escaped when written; the query and an opaque URL are
// written as they are.)
func inTarget(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] == 0x7f {
			return false
		}
	}
	return true
}

// isPrint reports whether s is printable ASCII.
func isPrint(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}
