package metricsapi

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  string
}

func newTestCA(t *testing.T, cn string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Unix(0, 0), NotAfter: time.Unix(2e9, 0), KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
}

func (ca *testCA) client(t *testing.T, cn string, usage x509.ExtKeyUsage) *x509.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Unix(1e9, 0), NotAfter: time.Unix(1.5e9, 0), ExtKeyUsage: []x509.ExtKeyUsage{usage}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert
}

func authData(ca *testCA) map[string]string {
	return map[string]string{
		keyClientCA: ca.pem, keyAllowedNames: `["front-proxy-client"]`, keyUsernameHdrs: `["X-Remote-User"]`,
		keyGroupHdrs: `["X-Remote-Group"]`, keyExtraPrefixes: `["X-Remote-Extra-"]`,
	}
}

func frontProxyRequest(cert *x509.Certificate, header map[string][]string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, basePath+"/namespaces/shop/deployments/web/edges", nil)
	r.TLS = &tls.ConnectionState{}
	if cert != nil {
		r.TLS.PeerCertificates = []*x509.Certificate{cert}
	}
	for k, v := range header {
		r.Header[http.CanonicalHeaderKey(k)] = v
	}
	return r
}

func TestFrontProxyAuthentication(t *testing.T) {
	ca, other := newTestCA(t, "front-proxy-ca"), newTestCA(t, "other-ca")
	cfg, err := ParseFrontProxyConfig(authData(ca))
	if err != nil {
		t.Fatal(err)
	}
	clk := clocktesting.NewFakePassiveClock(time.Unix(1.2e9, 0))
	fp := &FrontProxy{Load: func(context.Context) (*FrontProxyConfig, error) { return cfg, nil }, Clock: clk}
	good := ca.client(t, "front-proxy-client", x509.ExtKeyUsageClientAuth)
	user := map[string][]string{"X-Remote-User": {"jane"}, "X-Remote-Group": {"devs", "system:authenticated"}, "X-Remote-Extra-Scopes%2fA": {"x"}}

	u, err := fp.Authenticate(frontProxyRequest(good, user))
	if err != nil {
		t.Fatal(err)
	}
	if u.Name != "jane" || len(u.Groups) != 2 || u.Extra["scopes/a"][0] != "x" {
		t.Errorf("user %+v, want jane in devs and system:authenticated with extra scopes/a", u)
	}
	refusals := map[string]*http.Request{
		"no TLS":                httptest.NewRequest(http.MethodGet, "/", nil),
		"no client certificate": frontProxyRequest(nil, user),
		"another CA":            frontProxyRequest(other.client(t, "front-proxy-client", x509.ExtKeyUsageClientAuth), user),
		"a name not allowed":    frontProxyRequest(ca.client(t, "someone", x509.ExtKeyUsageClientAuth), user),
		"a server certificate":  frontProxyRequest(ca.client(t, "front-proxy-client", x509.ExtKeyUsageServerAuth), user),
		"no user header":        frontProxyRequest(good, map[string][]string{"X-Remote-Group": {"devs"}}),
	}
	for name, r := range refusals {
		if u, err := fp.Authenticate(r); err == nil {
			t.Errorf("%s: authenticated as %+v, want a refusal", name, u)
		}
	}
	clk.SetTime(time.Unix(1.6e9, 0))
	if _, err := fp.Authenticate(frontProxyRequest(good, user)); err == nil {
		t.Error("an expired certificate was accepted")
	}
}

// A configuration that no longer loads keeps the last good one; none at all refuses.
func TestFrontProxyConfigReload(t *testing.T) {
	ca := newTestCA(t, "front-proxy-ca")
	cfg, _ := ParseFrontProxyConfig(authData(ca))
	clk := clocktesting.NewFakePassiveClock(time.Unix(1.2e9, 0))
	loads, fail := 0, false
	fp := &FrontProxy{Clock: clk, Refresh: time.Minute, Load: func(context.Context) (*FrontProxyConfig, error) {
		loads++
		if fail {
			return nil, errors.New("API server unreachable")
		}
		return cfg, nil
	}}
	good := ca.client(t, "front-proxy-client", x509.ExtKeyUsageClientAuth)
	req := func() *http.Request { return frontProxyRequest(good, map[string][]string{"X-Remote-User": {"jane"}}) }
	for range 3 {
		if _, err := fp.Authenticate(req()); err != nil {
			t.Fatal(err)
		}
	}
	if loads != 1 {
		t.Errorf("%d loads within the refresh period, want 1", loads)
	}
	fail = true
	clk.SetTime(clk.Now().Add(2 * time.Minute))
	if _, err := fp.Authenticate(req()); err != nil || loads != 2 {
		t.Errorf("a failed reload must keep the last good configuration: %v (%d loads)", err, loads)
	}
	empty := &FrontProxy{Clock: clk, Load: func(context.Context) (*FrontProxyConfig, error) { return nil, errors.New("no ConfigMap") }}
	if _, err := empty.Authenticate(req()); err == nil || !strings.Contains(err.Error(), "no ConfigMap") {
		t.Errorf("without any configuration: %v, want a refusal naming why", err)
	}
}

func TestParseFrontProxyConfigRefusesBadData(t *testing.T) {
	ca := newTestCA(t, "front-proxy-ca")
	for name, change := range map[string]func(map[string]string){
		"no CA":            func(d map[string]string) { delete(d, keyClientCA) },
		"CA not PEM":       func(d map[string]string) { d[keyClientCA] = "garbage" },
		"names not a list": func(d map[string]string) { d[keyAllowedNames] = "front-proxy-client" },
		"no user headers":  func(d map[string]string) { d[keyUsernameHdrs] = "[]" },
	} {
		d := authData(ca)
		change(d)
		if _, err := ParseFrontProxyConfig(d); err == nil {
			t.Errorf("%s: parsed, want an error", name)
		}
	}
}

type denyAll struct{ calls []Attributes }

func (d *denyAll) Authorize(_ context.Context, _ *UserInfo, a Attributes) (bool, string, error) {
	d.calls = append(d.calls, a)
	return false, "no RBAC rule", nil
}

type alwaysUser struct{}

func (alwaysUser) Authenticate(*http.Request) (*UserInfo, error) { return &UserInfo{Name: "jane"}, nil }

func serve(h http.Handler, method, path string) (int, metav1.Status, string) {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	var st metav1.Status
	_ = json.Unmarshal(rec.Body.Bytes(), &st)
	return rec.Code, st, rec.Body.String()
}

// Requests refused before any object is read: each answers a Kubernetes Status.
func TestHandlerRefusals(t *testing.T) {
	authz := &denyAll{}
	h := NewHandler(Options{Authenticator: alwaysUser{}, Authorizer: authz})
	tests := map[string]struct {
		method, path string
		code         int
		reason       metav1.StatusReason
	}{
		"unknown kind":           {http.MethodGet, basePath + "/namespaces/shop/cronjobs/x", 404, metav1.StatusReasonNotFound},
		"not under namespaces":   {http.MethodGet, basePath + "/deployments/x", 404, metav1.StatusReasonNotFound},
		"unknown subresource":    {http.MethodGet, basePath + "/namespaces/shop/deployments/x/routes", 404, metav1.StatusReasonNotFound},
		"list of traffic splits": {http.MethodGet, basePath + "/namespaces/shop/trafficsplits", 405, metav1.StatusReasonMethodNotAllowed},
		"write":                  {http.MethodPost, basePath + "/namespaces/shop/deployments/x", 405, metav1.StatusReasonMethodNotAllowed},
		"bad window":             {http.MethodGet, basePath + "/namespaces/shop/deployments/x?window=10m", 400, metav1.StatusReasonBadRequest},
		"bad selector":           {http.MethodGet, basePath + "/namespaces/shop/deployments?labelSelector=a%3D%3D%3D", 400, metav1.StatusReasonBadRequest},
		"RBAC denies":            {http.MethodGet, basePath + "/namespaces/shop/deployments/web/edges", 403, metav1.StatusReasonForbidden},
	}
	for name, tc := range tests {
		code, st, body := serve(h, tc.method, tc.path)
		if code != tc.code || st.Kind != "Status" || st.Reason != tc.reason {
			t.Errorf("%s: HTTP %d %s, want %d %s", name, code, body, tc.code, tc.reason)
		}
	}
	want := Attributes{Verb: "get", Resource: "deployments", Subresource: "edges", Namespace: "shop", Name: "web"}
	if len(authz.calls) != 1 || authz.calls[0] != want {
		t.Errorf("authorized %+v, want exactly %+v", authz.calls, want)
	}
	unauth := NewHandler(Options{Authenticator: &FrontProxy{Load: func(context.Context) (*FrontProxyConfig, error) { return nil, errors.New("unused") }}})
	if code, st, _ := serve(unauth, http.MethodGet, basePath); code != 401 || st.Reason != metav1.StatusReasonUnauthorized {
		t.Errorf("discovery without a client certificate: HTTP %d %+v, want 401", code, st)
	}
}

func TestDiscovery(t *testing.T) {
	code, _, body := serve(NewHandler(Options{}), http.MethodGet, basePath)
	var list metav1.APIResourceList
	if err := json.Unmarshal([]byte(body), &list); err != nil || code != 200 {
		t.Fatalf("HTTP %d %s", code, body)
	}
	got := map[string]string{}
	for _, r := range list.APIResources {
		if r.Kind != "TrafficMetrics" {
			t.Errorf("%s has kind %s", r.Name, r.Kind)
		}
		got[r.Name] = strings.Join(r.Verbs, ",")
	}
	for _, name := range []string{"pods", "deployments", "daemonsets", "statefulsets", "namespaces"} {
		if got[name] != "get,list" {
			t.Errorf("%s verbs %q, want get,list", name, got[name])
		}
	}
	if got["trafficsplits"] != "get" || list.GroupVersion != APIVersion {
		t.Errorf("trafficsplits %q in %s, want get in %s", got["trafficsplits"], list.GroupVersion, APIVersion)
	}
	for _, path := range []string{"/openapi/v2", "/openapi/v3", groupPath} {
		if code, _, body := serve(NewHandler(Options{}), http.MethodGet, path); code != http.StatusOK {
			t.Errorf("%s: HTTP %d %s, want 200 for the aggregator", path, code, body)
		}
	}
}
