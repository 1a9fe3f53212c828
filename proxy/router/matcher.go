package router

import (
	"net/http"

	"github.com/braidmesh/braid/proxy/api"
)

// Matcher admits HTTP requests that match any of its matches (OR); each match admits a
// request when every field it sets matches (AND). An empty Matcher admits nothing.
type Matcher struct{ matches []match }

// NewMatcher compiles matches.
func NewMatcher(matches []*api.HTTPMatch) (*Matcher, error) {
	out := &Matcher{}
	for _, m := range matches {
		built, err := buildMatch(m)
		if err != nil {
			return nil, err
		}
		out.matches = append(out.matches, built)
	}
	return out, nil
}

// Admits returns the name of the first match admitting the request, and whether one does.
func (m *Matcher) Admits(method, path string, header http.Header) (string, bool) {
	for i := range m.matches {
		if m.matches[i].admits(method, path, header) {
			return m.matches[i].name, true
		}
	}
	return "", false
}
