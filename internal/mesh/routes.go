package mesh

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"golang.org/x/net/http/httpguts"

	"github.com/braidmesh/braid/proxy/api"
)

// RouteGroup is an HTTPRouteGroup: named matches that TrafficSplits and TrafficTargets use.
type RouteGroup struct {
	Namespace string
	Name      string
	Matches   []RouteMatch
}

// RouteMatch is one match of a group; every field it sets must match.
type RouteMatch struct {
	Name      string
	PathRegex string
	// Methods are HTTP methods, or "*" for any.
	Methods []string
	// Headers map header names to value regexes.
	Headers map[string]string
}

// errHostMatch refuses header matches on Host: the proxy resolves the Service from the
// Host before any route is tried, and Go's HTTP server keeps Host out of the headers,
// so such a match could never admit a request.
var errHostMatch = errors.New("the Host header names the Service itself and cannot select a route; route by Service, or by path or other headers")

// ReasonInvalidMatch is the reason of an HTTPRouteGroup that has a match no proxy can run.
const ReasonInvalidMatch = "InvalidMatch"

var methods = []string{http.MethodGet, http.MethodHead, http.MethodPut, http.MethodPost, http.MethodDelete,
	http.MethodConnect, http.MethodOptions, http.MethodTrace, http.MethodPatch}

// CheckRouteGroup decides whether every match of a group can run in a proxy; a match that
// cannot is never programmed.
func CheckRouteGroup(g RouteGroup) Verdict {
	var problems []string
	for i, m := range g.Matches {
		problems = append(problems, matchProblems(fmt.Sprintf("spec.matches[%d]", i), m)...)
	}
	if len(problems) > 0 {
		return reject(ReasonInvalidMatch, "%s", strings.Join(problems, "; "))
	}
	return Verdict{Accepted: true, Reason: ReasonAccepted, Message: fmt.Sprintf("%d matches can be used by traffic splits and targets", len(g.Matches))}
}

func matchProblems(path string, m RouteMatch) []string {
	var out []string
	if _, err := api.PathRegexp(m.PathRegex); m.PathRegex != "" && err != nil {
		out = append(out, fmt.Sprintf("%s.pathRegex: %v", path, err))
	}
	for j, meth := range m.Methods {
		if meth != "*" && !slices.Contains(methods, meth) {
			out = append(out, fmt.Sprintf("%s.methods[%d]: unknown method %q (one of *, %s)", path, j, meth, strings.Join(methods, ", ")))
		}
	}
	for _, name := range sortedKeys(m.Headers) {
		if !httpguts.ValidHeaderFieldName(name) {
			out = append(out, fmt.Sprintf("%s.headers: %q is not a valid header name", path, name))
		}
		if strings.EqualFold(name, "host") {
			out = append(out, fmt.Sprintf("%s.headers[%s]: %v", path, name, errHostMatch))
		}
		if _, err := api.HeaderRegexp(m.Headers[name]); err != nil {
			out = append(out, fmt.Sprintf("%s.headers[%s]: %v", path, name, err))
		}
	}
	return out
}

// splitMatches merges the matches of the groups a split names, in the order it names
// them. Groups that do not exist, and matches that cannot run, contribute nothing.
func splitMatches(s Split, groups map[string]*RouteGroup) []*api.HTTPMatch {
	var out []*api.HTTPMatch
	for _, name := range s.Matches {
		g := groups[name]
		if g == nil {
			continue
		}
		for _, m := range g.Matches {
			if len(matchProblems("", m)) > 0 {
				continue
			}
			out = append(out, toWireMatch(g.Name, m))
		}
	}
	return out
}

func toWireMatch(group string, m RouteMatch) *api.HTTPMatch {
	w := &api.HTTPMatch{Name: group + "/" + m.Name, PathRegex: m.PathRegex}
	if !slices.Contains(m.Methods, "*") {
		w.Methods = slices.Sorted(slices.Values(m.Methods))
	}
	for _, name := range sortedKeys(m.Headers) {
		w.Headers = append(w.Headers, &api.HeaderMatch{Name: strings.ToLower(name), ValueRegex: m.Headers[name]})
	}
	return w
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
