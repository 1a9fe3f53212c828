package h2hdr

import "strings"

// maxCachedNames bounds a NameCache: header names are few in practice, but a peer
// chooses them.
const maxCachedNames = 256

// NameCache remembers what a spelling function makes of header field names, for up to
// maxCachedNames names: the canonical http.Header key of a name from the wire
// (textproto.CanonicalMIMEHeaderKey), or the wire spelling of a key (Lower). It is not
// safe for concurrent use.
type NameCache struct {
	spelled map[string]string
	spell   func(string) string
}

// NewNameCache returns an empty cache of spell's results.
func NewNameCache(spell func(string) string) NameCache {
	return NameCache{spelled: map[string]string{}, spell: spell}
}

// Get returns spell(name), from the cache when it holds it.
func (c NameCache) Get(name string) string {
	if s, ok := c.spelled[name]; ok {
		return s
	}
	s := c.spell(name)
	if len(c.spelled) < maxCachedNames {
		c.spelled[name] = s
	}
	return s
}

// Lower lower-cases an ASCII header name, without allocating when it already is.
func Lower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; 'A' <= c && c <= 'Z' {
			return strings.ToLower(s)
		}
	}
	return s
}
