package metricsapi

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// UserInfo is the user the API server's front proxy vouches for.
type UserInfo struct {
	Name   string
	UID    string
	Groups []string
	Extra  map[string][]string
}

// Attributes are what a request does, for authorization.
type Attributes struct {
	Verb, Resource, Subresource, Namespace, Name string
}

// Authenticator tells who sent a request; an error refuses it (401).
type Authenticator interface {
	Authenticate(r *http.Request) (*UserInfo, error)
}

// Authorizer decides whether user may do a; reason explains a refusal.
type Authorizer interface {
	Authorize(ctx context.Context, user *UserInfo, a Attributes) (allowed bool, reason string, err error)
}

// The ConfigMap in which kube-apiserver publishes how its front proxy authenticates to
// aggregated API servers, and its keys.
const (
	AuthConfigMapNamespace = "kube-system"
	AuthConfigMapName      = "extension-apiserver-authentication"

	keyClientCA      = "requestheader-client-ca-file"
	keyAllowedNames  = "requestheader-allowed-names"
	keyUsernameHdrs  = "requestheader-username-headers"
	keyGroupHdrs     = "requestheader-group-headers"
	keyExtraPrefixes = "requestheader-extra-headers-prefix"
	keyUIDHdrs       = "requestheader-uid-headers"
)

// FrontProxyConfig is how the front proxy authenticates: its client certificate must
// chain to Roots (and carry one of AllowedNames as common name, when any are set), and
// the user is in the headers named.
type FrontProxyConfig struct {
	Roots                           *x509.CertPool
	AllowedNames                    []string
	UsernameHeaders, GroupHeaders   []string
	ExtraHeaderPrefixes, UIDHeaders []string
}

// ParseFrontProxyConfig reads the data of the extension-apiserver-authentication ConfigMap.
func ParseFrontProxyConfig(data map[string]string) (*FrontProxyConfig, error) {
	ca := data[keyClientCA]
	if ca == "" {
		return nil, fmt.Errorf("%s/%s has no %s: the API server has no front proxy configured (--requestheader-client-ca-file)", AuthConfigMapNamespace, AuthConfigMapName, keyClientCA)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(ca)) {
		return nil, fmt.Errorf("%s of %s/%s holds no PEM certificate", keyClientCA, AuthConfigMapNamespace, AuthConfigMapName)
	}
	c := &FrontProxyConfig{Roots: roots}
	for key, into := range map[string]*[]string{
		keyAllowedNames: &c.AllowedNames, keyUsernameHdrs: &c.UsernameHeaders, keyGroupHdrs: &c.GroupHeaders,
		keyExtraPrefixes: &c.ExtraHeaderPrefixes, keyUIDHdrs: &c.UIDHeaders,
	} {
		if raw := data[key]; raw != "" {
			if err := json.Unmarshal([]byte(raw), into); err != nil {
				return nil, fmt.Errorf("%s of %s/%s is not a JSON list of strings: %w", key, AuthConfigMapNamespace, AuthConfigMapName, err)
			}
		}
	}
	if len(c.UsernameHeaders) == 0 {
		return nil, fmt.Errorf("%s/%s names no %s", AuthConfigMapNamespace, AuthConfigMapName, keyUsernameHdrs)
	}
	return c, nil
}

// FrontProxy authenticates kube-apiserver's front proxy by its client certificate and
// takes the user from its headers, as every aggregated API server must: the headers count
// only on a connection whose certificate the front proxy's CA signed.
type FrontProxy struct {
	// Load returns the current configuration (ConfigMapLoader in the operator).
	Load  func(ctx context.Context) (*FrontProxyConfig, error)
	Clock clock.PassiveClock
	// Refresh is how long a loaded configuration is used before it is loaded again (1 min).
	Refresh time.Duration

	mu     sync.Mutex
	cfg    *FrontProxyConfig
	loaded time.Time
}

// ConfigMapLoader loads the configuration from the extension-apiserver-authentication
// ConfigMap through r (a reader straight to the API server: one ConfigMap does not
// warrant a cluster-wide ConfigMap cache).
func ConfigMapLoader(r client.Reader) func(ctx context.Context) (*FrontProxyConfig, error) {
	return func(ctx context.Context) (*FrontProxyConfig, error) {
		var cm corev1.ConfigMap
		if err := r.Get(ctx, client.ObjectKey{Namespace: AuthConfigMapNamespace, Name: AuthConfigMapName}, &cm); err != nil {
			return nil, fmt.Errorf("reading %s/%s: %w", AuthConfigMapNamespace, AuthConfigMapName, err)
		}
		return ParseFrontProxyConfig(cm.Data)
	}
}

func (f *FrontProxy) config(ctx context.Context) (*FrontProxyConfig, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	refresh := f.Refresh
	if refresh <= 0 {
		refresh = time.Minute
	}
	now := f.Clock.Now()
	if f.cfg != nil && now.Sub(f.loaded) < refresh {
		return f.cfg, nil
	}
	cfg, err := f.Load(ctx)
	if err != nil {
		if f.cfg != nil {
			return f.cfg, nil // the last good configuration serves until a load succeeds
		}
		return nil, err
	}
	f.cfg, f.loaded = cfg, now
	return cfg, nil
}

// Authenticate implements Authenticator.
func (f *FrontProxy) Authenticate(r *http.Request) (*UserInfo, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return nil, errors.New("no client certificate: only the Kubernetes API server's front proxy may call this API")
	}
	cfg, err := f.config(r.Context())
	if err != nil {
		return nil, fmt.Errorf("cannot authenticate the front proxy: %w", err)
	}
	certs := r.TLS.PeerCertificates
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{
		Roots: cfg.Roots, Intermediates: inter, CurrentTime: f.Clock.Now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, fmt.Errorf("the client certificate is not the front proxy's: %w", err)
	}
	if len(cfg.AllowedNames) > 0 && !slices.Contains(cfg.AllowedNames, certs[0].Subject.CommonName) {
		return nil, fmt.Errorf("the client certificate's common name %q is not an allowed front proxy name", certs[0].Subject.CommonName)
	}
	u := &UserInfo{Name: firstHeader(r.Header, cfg.UsernameHeaders), UID: firstHeader(r.Header, cfg.UIDHeaders)}
	if u.Name == "" {
		return nil, fmt.Errorf("the front proxy named no user (headers %v)", cfg.UsernameHeaders)
	}
	for _, h := range cfg.GroupHeaders {
		u.Groups = append(u.Groups, r.Header.Values(h)...)
	}
	u.Extra = extraHeaders(r.Header, cfg.ExtraHeaderPrefixes)
	return u, nil
}

func firstHeader(h http.Header, names []string) string {
	for _, n := range names {
		if v := h.Get(n); v != "" {
			return v
		}
	}
	return ""
}

// extraHeaders reads the user's extra values: header <prefix><key>, the key lowercased
// and percent-decoded.
func extraHeaders(h http.Header, prefixes []string) map[string][]string {
	var out map[string][]string
	for name, values := range h {
		lower := strings.ToLower(name)
		for _, p := range prefixes {
			rest, ok := strings.CutPrefix(lower, strings.ToLower(p))
			if !ok || rest == "" {
				continue
			}
			key, err := url.PathUnescape(rest)
			if err != nil {
				key = rest
			}
			if out == nil {
				out = map[string][]string{}
			}
			out[key] = append(out[key], values...)
		}
	}
	return out
}

// SubjectAccessReviews authorizes through the API server's authorizers (RBAC): verb get
// or list on the kind's resource in group metrics.smi-spec.io.
type SubjectAccessReviews struct {
	Client client.Client
}

// Authorize implements Authorizer.
func (s SubjectAccessReviews) Authorize(ctx context.Context, user *UserInfo, a Attributes) (bool, string, error) {
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User: user.Name, UID: user.UID, Groups: user.Groups,
		ResourceAttributes: &authorizationv1.ResourceAttributes{
			Namespace: a.Namespace, Verb: a.Verb, Group: Group, Version: Version, Resource: a.Resource, Subresource: a.Subresource, Name: a.Name,
		},
	}}
	if len(user.Extra) > 0 {
		sar.Spec.Extra = map[string]authorizationv1.ExtraValue{}
		for k, v := range user.Extra {
			sar.Spec.Extra[k] = v
		}
	}
	if err := s.Client.Create(ctx, sar); err != nil {
		return false, "", fmt.Errorf("creating a subject access review: %w", err)
	}
	return sar.Status.Allowed && !sar.Status.Denied, sar.Status.Reason, nil
}

func resourceQuantity(n uint64) *resource.Quantity {
	return resource.NewQuantity(int64(min(n, uint64(1<<62))), resource.DecimalSI)
}
