// Package api is the wire contract between the operator's config server and braid-proxy:
// the messages generated from config.proto, and the meaning of their regular expressions.
package api

import (
	"fmt"
	"regexp"
)

// The meaning of the regular expressions in HTTPMatch, shared by the control plane (which
// validates them) and the proxy (which runs them), so the two never disagree.

// PathRegexp compiles an SMI pathRegex: RE2, anchored at the start of the path only, so
// "/api" admits "/api/v1" (SMI: "anchored (^) to the beginning of the URI").
func PathRegexp(expr string) (*regexp.Regexp, error) {
	re, err := regexp.Compile(`^(?:` + expr + `)`)
	if err != nil {
		return nil, fmt.Errorf("path regex %q: %w", expr, err)
	}
	return re, nil
}

// HeaderRegexp compiles a header value regex: RE2, matching the whole value, so
// ".*Firefox.*" admits any user agent that mentions Firefox and "Firefox" only that one.
func HeaderRegexp(expr string) (*regexp.Regexp, error) {
	re, err := regexp.Compile(`^(?:` + expr + `)$`)
	if err != nil {
		return nil, fmt.Errorf("header regex %q: %w", expr, err)
	}
	return re, nil
}
