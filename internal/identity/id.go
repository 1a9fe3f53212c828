package identity

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strings"
)

const (
	spiffeScheme = "spiffe"
	spiffePrefix = spiffeScheme + "://"

	maxLabelLen     = 63  // RFC 1123 label
	maxSubdomainLen = 253 // RFC 1123 subdomain (Kubernetes DNS subdomain names)
)

// ID is a workload identity: the SPIFFE ID spiffe://<trust domain>/ns/<namespace>/sa/<service account>.
type ID struct{ TrustDomain, Namespace, ServiceAccount string }

// URI returns the SPIFFE ID as a URL: spiffe://<td>/ns/<ns>/sa/<sa>. It does not validate id.
func (id ID) URI() *url.URL {
	return &url.URL{Scheme: spiffeScheme, Host: id.TrustDomain, Path: "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount}
}

// String returns the SPIFFE ID, the URI as a string.
func (id ID) String() string { return id.URI().String() }

// Validate reports whether id names a valid workload: the trust domain is a lowercase DNS
// name, the namespace an RFC 1123 label and the service account a DNS subdomain name.
func (id ID) Validate() error {
	if err := validateTrustDomain(id.TrustDomain); err != nil {
		return err
	}
	if err := validateLabel(id.Namespace); err != nil {
		return fmt.Errorf("namespace %q: %w", id.Namespace, err)
	}
	if err := validateSubdomain(id.ServiceAccount); err != nil {
		return fmt.Errorf("service account %q: %w", id.ServiceAccount, err)
	}
	return nil
}

// ParseID parses a workload SPIFFE ID strictly: the scheme is exactly "spiffe", the path
// exactly /ns/<ns>/sa/<sa>, and there is no query, fragment, user info, port or percent
// encoding. The parts must pass Validate.
func ParseID(uri string) (ID, error) {
	id, err := parseID(uri)
	if err != nil {
		return ID{}, fmt.Errorf("parsing SPIFFE ID %q: %w", uri, err)
	}
	return id, nil
}

func parseID(uri string) (ID, error) {
	rest, ok := strings.CutPrefix(uri, spiffePrefix)
	if !ok {
		return ID{}, errors.New(`scheme must be "spiffe://"`)
	}
	// These characters have a meaning in a URI that a SPIFFE ID never uses; the
	// character checks of Validate would refuse them too, but less helpfully.
	for _, c := range []struct{ char, what string }{{"?", "a query"}, {"#", "a fragment"}, {"%", "percent encoding"}} {
		if strings.Contains(rest, c.char) {
			return ID{}, fmt.Errorf("must not have %s", c.what)
		}
	}
	td, path, ok := strings.Cut(rest, "/")
	if strings.Contains(td, "@") {
		return ID{}, errors.New("must not have user info")
	}
	if strings.Contains(td, ":") {
		return ID{}, errors.New("must not have a port")
	}
	if !ok {
		return ID{}, errors.New("no path: want /ns/<namespace>/sa/<service account>")
	}
	parts := strings.Split(path, "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" {
		return ID{}, errors.New("path must be exactly /ns/<namespace>/sa/<service account>")
	}
	id := ID{TrustDomain: td, Namespace: parts[1], ServiceAccount: parts[3]}
	if err := id.Validate(); err != nil {
		return ID{}, err
	}
	return id, nil
}

// validateTrustDomain accepts a lowercase DNS name (RFC 1123 subdomain) that is not an IP address.
func validateTrustDomain(td string) error {
	if err := validateSubdomain(td); err != nil {
		return fmt.Errorf("trust domain %q: %w", td, err)
	}
	if _, err := netip.ParseAddr(td); err == nil {
		return fmt.Errorf("trust domain %q: must be a DNS name, not an IP address", td)
	}
	return nil
}

// validateSubdomain accepts an RFC 1123 subdomain: dot-separated labels, at most 253 characters.
func validateSubdomain(s string) error {
	if len(s) > maxSubdomainLen {
		return fmt.Errorf("longer than %d characters", maxSubdomainLen)
	}
	if s == "" {
		return errors.New("must not be empty")
	}
	for label := range strings.SplitSeq(s, ".") {
		if err := validateLabel(label); err != nil {
			return err
		}
	}
	return nil
}

// validateLabel accepts an RFC 1123 label: 1 to 63 characters of a-z, 0-9 and '-', starting
// and ending with a letter or digit.
func validateLabel(s string) error {
	switch {
	case s == "":
		return errors.New("must not be empty (or have an empty label)")
	case len(s) > maxLabelLen:
		return fmt.Errorf("label %q is longer than %d characters", s, maxLabelLen)
	case s[0] == '-' || s[len(s)-1] == '-':
		return fmt.Errorf("label %q must start and end with a lowercase letter or digit", s)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return fmt.Errorf("label %q has %q: only lowercase letters, digits and '-' are allowed", s, c)
		}
	}
	return nil
}
