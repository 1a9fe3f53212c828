package router

import (
	"fmt"
	"net/http"
	"net/textproto"

	"golang.org/x/net/http/httpguts"

	"github.com/braidmesh/braid/proxy/api"
)

// HeaderModifier changes the headers of a request or a response (Gateway API's
// RequestHeaderModifier and ResponseHeaderModifier): Set replaces every value of a header
// with one, Add appends a value, Remove deletes a header, in that order. A nil one changes
// nothing.
type HeaderModifier struct {
	set, add []headerValue
	remove   []string
}

type headerValue struct{ name, value string }

// Apply changes h. Set "Host" on a request's headers would be lost (Go keeps the authority
// apart): callers pass it in host, which Apply updates; nil for a response.
func (m *HeaderModifier) Apply(h http.Header, host *string) {
	if m == nil {
		return
	}
	for _, s := range m.set {
		if s.name == "Host" && host != nil {
			*host = s.value
			continue
		}
		h[s.name] = []string{s.value}
	}
	for _, a := range m.add {
		h[a.name] = append(h[a.name], a.value)
	}
	for _, r := range m.remove {
		delete(h, r)
	}
}

// buildHeaderModifier checks and compiles a modifier; nil for none.
func buildHeaderModifier(m *api.HeaderModifier) (*HeaderModifier, error) {
	if len(m.GetSet()) == 0 && len(m.GetAdd()) == 0 && len(m.GetRemove()) == 0 {
		return nil, nil
	}
	out := &HeaderModifier{}
	for _, list := range []struct {
		from []*api.HeaderValue
		to   *[]headerValue
	}{{m.GetSet(), &out.set}, {m.GetAdd(), &out.add}} {
		for _, v := range list.from {
			if !httpguts.ValidHeaderFieldName(v.GetName()) || !httpguts.ValidHeaderFieldValue(v.GetValue()) {
				return nil, fmt.Errorf("header modifier: invalid header %q: %q", v.GetName(), v.GetValue())
			}
			*list.to = append(*list.to, headerValue{textproto.CanonicalMIMEHeaderKey(v.GetName()), v.GetValue()})
		}
	}
	for _, name := range m.GetRemove() {
		if !httpguts.ValidHeaderFieldName(name) {
			return nil, fmt.Errorf("header modifier: invalid header name %q to remove", name)
		}
		out.remove = append(out.remove, textproto.CanonicalMIMEHeaderKey(name))
	}
	return out, nil
}
