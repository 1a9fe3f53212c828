package mesh

import (
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/braidmesh/braid/proxy/api"
)

// The wire's path regex is anchored at the start only; Gateway API's path matches must keep
// their meaning through it.
func TestPathRegexKeepsGatewayAPIMeaning(t *testing.T) {
	cases := []struct {
		typ, value string
		admits     []string
		refuses    []string
	}{
		{typ: PathMatchPathPrefix, value: "/v1", admits: []string{"/v1", "/v1/", "/v1/users"}, refuses: []string{"/v10", "/v", "/", "/api/v1"}},
		{typ: PathMatchPathPrefix, value: "/v1/", admits: []string{"/v1", "/v1/users"}, refuses: []string{"/v10"}},
		{typ: PathMatchPathPrefix, value: "/", admits: []string{"/", "/anything/at/all"}},
		{typ: "", value: "", admits: []string{"/", "/x"}},
		{typ: PathMatchPathPrefix, value: "/a.b", admits: []string{"/a.b/c"}, refuses: []string{"/axb"}},
		{typ: PathMatchExact, value: "/v1", admits: []string{"/v1"}, refuses: []string{"/v1/", "/v1/users", "/v10"}},
		{typ: PathMatchExact, value: "/", admits: []string{"/"}, refuses: []string{"/x"}},
		{typ: PathMatchRegularExpression, value: "/v[0-9]+/users", admits: []string{"/v2/users", "/v2/users/7"}, refuses: []string{"/vx/users"}},
	}
	for _, tc := range cases {
		expr, err := pathRegex(tc.typ, tc.value)
		if err != nil {
			t.Fatalf("%s %q: %v", tc.typ, tc.value, err)
		}
		re, err := api.PathRegexp(expr)
		if err != nil {
			t.Fatalf("%s %q → %q does not compile: %v", tc.typ, tc.value, expr, err)
		}
		for _, p := range tc.admits {
			if !re.MatchString(p) {
				t.Errorf("%s %q (regex %q) should admit %s", tc.typ, tc.value, expr, p)
			}
		}
		for _, p := range tc.refuses {
			if re.MatchString(p) {
				t.Errorf("%s %q (regex %q) should refuse %s", tc.typ, tc.value, expr, p)
			}
		}
	}
}

func TestExactHeaderMatchQuotesTheValue(t *testing.T) {
	w, err := toWireHTTPMatch(HTTPRouteMatch{Headers: []HTTPHeaderMatch{{Name: "X-Version", Value: "v2.0"}}}, "m")
	if err != nil {
		t.Fatal(err)
	}
	re, err := api.HeaderRegexp(w.Headers[0].ValueRegex)
	if err != nil {
		t.Fatal(err)
	}
	if w.Headers[0].Name != "x-version" || !re.MatchString("v2.0") || re.MatchString("v2x0") || re.MatchString("v2.0.1") {
		t.Errorf("exact header v2.0 compiled to %s=%q", w.Headers[0].Name, w.Headers[0].ValueRegex)
	}
}

func TestPrecedenceAcrossRoutes(t *testing.T) {
	day := func(d int) time.Time { return time.Date(2026, 1, d, 0, 0, 0, 0, time.UTC) }
	backend := func(name string) []HTTPBackendRef {
		return []HTTPBackendRef{{Kind: "Service", Namespace: "shop", Name: name, Port: 80, Weight: 1}}
	}
	prefix := func(v string) HTTPRouteMatch { return HTTPRouteMatch{PathType: PathMatchPathPrefix, PathValue: v} }
	newer := HTTPRoute{Namespace: "shop", Name: "a-newer", Created: day(2), Rules: []HTTPRouteRule{
		{Matches: []HTTPRouteMatch{prefix("/")}, Backends: backend("newer-root")},
		{Matches: []HTTPRouteMatch{prefix("/api")}, Backends: backend("newer-api")},
	}}
	older := HTTPRoute{Namespace: "shop", Name: "z-older", Created: day(1), Rules: []HTTPRouteRule{
		{Matches: []HTTPRouteMatch{prefix("/api")}, Backends: backend("older-api")},
		{Matches: []HTTPRouteMatch{{PathType: PathMatchPathPrefix, PathValue: "/api", Method: "POST"}}, Backends: backend("older-api-post")},
		{Matches: []HTTPRouteMatch{{PathType: PathMatchExact, PathValue: "/"}}, Backends: backend("older-exact-root")},
	}}
	got := httpRouteRoutes([]HTTPRoute{newer, older}, nil)
	var order []string
	for _, r := range got {
		order = append(order, r.Backends[0].Service)
	}
	// Exact first; among the /api prefixes, the one with a method, then the older route.
	want := "older-exact-root older-api-post older-api newer-api newer-root"
	if strings.Join(order, " ") != want {
		t.Errorf("route order = %v, want %s", order, want)
	}
}

func TestCheckHTTPRouteParent(t *testing.T) {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "reviews"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
			{Name: "http", Port: 80}, {Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
		}},
	}
	route := HTTPRoute{Namespace: "shop", Name: "r", Rules: []HTTPRouteRule{{Unsupported: []string{"timeouts"}}}}
	cases := []struct {
		name   string
		parent ServiceParent
		svc    *corev1.Service
		reason string
		msg    string
	}{
		{name: "whole service", parent: ServiceParent{Namespace: "shop", Name: "reviews"}, svc: svc, reason: ReasonAccepted, msg: "timeouts not supported yet"},
		{name: "by port", parent: ServiceParent{Namespace: "shop", Name: "reviews", Port: 80}, svc: svc, reason: ReasonAccepted, msg: "port 80 (http)"},
		{name: "by section name", parent: ServiceParent{Namespace: "shop", Name: "reviews", SectionName: "http"}, svc: svc, reason: ReasonAccepted},
		{name: "port and name disagree", parent: ServiceParent{Namespace: "shop", Name: "reviews", SectionName: "http", Port: 8080}, svc: svc, reason: ReasonNoMatchingParent},
		{name: "udp port", parent: ServiceParent{Namespace: "shop", Name: "reviews", SectionName: "dns"}, svc: svc, reason: ReasonNoMatchingParent, msg: `named "dns"`},
		{name: "missing service", parent: ServiceParent{Namespace: "shop", Name: "ratings"}, reason: ReasonNoMatchingParent, msg: "does not exist"},
		{name: "consumer route", parent: ServiceParent{Namespace: "other", Name: "reviews"}, reason: ReasonUnsupportedValue, msg: "consumer routes"},
	}
	for _, tc := range cases {
		v := CheckHTTPRouteParent(route, tc.parent, tc.svc)
		if v.Reason != tc.reason || v.Accepted != (tc.reason == ReasonAccepted) || !strings.Contains(v.Message, tc.msg) {
			t.Errorf("%s: got %+v, want reason %s with a message containing %q", tc.name, v, tc.reason, tc.msg)
		}
	}
}

func TestCheckHTTPRouteRefs(t *testing.T) {
	svc := &corev1.Service{Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}
	ref := func(name string, port int32) HTTPBackendRef {
		return HTTPBackendRef{Kind: "Service", Namespace: "shop", Name: name, Port: port, Weight: 1}
	}
	cases := []struct {
		name     string
		backends []HTTPBackendRef
		reason   string
	}{
		{name: "resolved", backends: []HTTPBackendRef{ref("v1", 80)}, reason: ReasonResolvedRefs},
		{name: "missing", backends: []HTTPBackendRef{ref("v1", 80), ref("v3", 80)}, reason: ReasonBackendNotFound},
		{name: "missing port", backends: []HTTPBackendRef{ref("v1", 8080)}, reason: ReasonBackendNotFound},
		{name: "other kind first", backends: []HTTPBackendRef{ref("v3", 80), {Group: "example.com", Kind: "Bucket", Namespace: "shop", Name: "b"}}, reason: ReasonInvalidKind},
		{name: "other namespace", backends: []HTTPBackendRef{{Kind: "Service", Namespace: "other", Name: "v1", Port: 80}}, reason: ReasonRefNotPermitted},
	}
	for _, tc := range cases {
		r := HTTPRoute{Namespace: "shop", Name: "r", Rules: []HTTPRouteRule{{Backends: tc.backends}}}
		v := CheckHTTPRouteRefs(r, map[string]*corev1.Service{"v1": svc})
		if v.Reason != tc.reason || v.Resolved != (tc.reason == ReasonResolvedRefs) {
			t.Errorf("%s: got %+v, want %s", tc.name, v, tc.reason)
		}
	}
}

func TestDroppedMatches(t *testing.T) {
	r := HTTPRoute{Rules: []HTTPRouteRule{{Matches: []HTTPRouteMatch{
		{PathType: PathMatchPathPrefix, PathValue: "/ok"},
		{PathType: PathMatchRegularExpression, PathValue: "/(broken"},
		{QueryParams: 1},
		{Headers: []HTTPHeaderMatch{{Type: HeaderMatchRegularExpression, Name: "x", Value: "a("}}},
		{Headers: []HTTPHeaderMatch{{Type: HeaderMatchExact, Name: "Host", Value: "reviews"}}},
	}}}}
	got := DroppedMatches(r)
	if len(got) != 4 || !strings.HasPrefix(got[0], "spec.rules[0].matches[1]") || !strings.Contains(got[1], "query parameter") ||
		!strings.Contains(got[3], "Host header") {
		t.Errorf("DroppedMatches = %q", got)
	}
}

func TestRulePoliciesFromGatewayAPI(t *testing.T) {
	two, twenty := 2, 20
	cases := []struct {
		name               string
		rule               HTTPRouteRule
		timeout, backendTO time.Duration
		retries            *uint32
		retryOn            []uint32
		backoff            time.Duration
		note               string
	}{
		{name: "none", rule: HTTPRouteRule{}},
		{name: "both timeouts", rule: HTTPRouteRule{Timeouts: HTTPRouteTimeouts{Request: "10s", BackendRequest: "500ms"}}, timeout: 10 * time.Second, backendTO: 500 * time.Millisecond},
		{name: "compound", rule: HTTPRouteRule{Timeouts: HTTPRouteTimeouts{Request: "1h30m"}}, timeout: 90 * time.Minute},
		{name: "zero disables", rule: HTTPRouteRule{Timeouts: HTTPRouteTimeouts{Request: "0s"}}},
		{name: "not a gateway duration", rule: HTTPRouteRule{Timeouts: HTTPRouteTimeouts{Request: "1.5s", BackendRequest: "-1s"}},
			note: `spec.rules[0].timeouts.request: "1.5s" is not a Gateway API duration`},
		{name: "backend longer", rule: HTTPRouteRule{Timeouts: HTTPRouteTimeouts{Request: "1s", BackendRequest: "2s"}}, timeout: time.Second, backendTO: 2 * time.Second,
			note: "backendRequest 2s is longer than request 1s"},
		{name: "retry", rule: HTTPRouteRule{Retry: &HTTPRouteRetry{Codes: []int{502, 503}, Attempts: &two}}, retries: new(uint32(2)), retryOn: []uint32{502, 503}},
		{name: "retry capped", rule: HTTPRouteRule{Retry: &HTTPRouteRetry{Codes: []int{200}, Attempts: &twenty, Backoff: "100ms"}}, retries: new(uint32(10)),
			backoff: 100 * time.Millisecond, note: "spec.rules[0].retry.attempts: 20, capped at 10"},
		{name: "backoff", rule: HTTPRouteRule{Retry: &HTTPRouteRetry{Codes: []int{503}, Backoff: "1s250ms"}}, retryOn: []uint32{503}, backoff: 1250 * time.Millisecond},
		{name: "backoff zero", rule: HTTPRouteRule{Retry: &HTTPRouteRetry{Backoff: "0s"}}},
		{name: "backoff not a gateway duration", rule: HTTPRouteRule{Retry: &HTTPRouteRetry{Backoff: "0.5s"}},
			note: `spec.rules[0].retry.backoff: "0.5s" is not a Gateway API duration`},
		{name: "backoff capped", rule: HTTPRouteRule{Retry: &HTTPRouteRetry{Backoff: "90m"}}, backoff: time.Hour,
			note: "spec.rules[0].retry.backoff: 90m, capped at 1h0m0s"},
	}
	for _, tc := range cases {
		route := HTTPRoute{Namespace: "shop", Name: "r", Rules: []HTTPRouteRule{tc.rule}}
		out := &api.Route{}
		rulePolicies(tc.rule, out)
		if got := out.GetTimeout().AsDuration(); got != tc.timeout {
			t.Errorf("%s: timeout %s, want %s", tc.name, got, tc.timeout)
		}
		if got := out.GetBackendRequestTimeout().AsDuration(); got != tc.backendTO {
			t.Errorf("%s: backend request timeout %s, want %s", tc.name, got, tc.backendTO)
		}
		if (tc.retries == nil) != (out.GetRetry().GetRetries() == 0) || (tc.retries != nil && *tc.retries != out.GetRetry().GetRetries()) ||
			!slices.Equal(out.GetRetry().GetRetryOn(), tc.retryOn) {
			t.Errorf("%s: retry %v, want %v retries on %v", tc.name, out.GetRetry(), tc.retries, tc.retryOn)
		}
		if got := out.GetRetry().GetBackoffBase().AsDuration(); got != tc.backoff || out.GetRetry().GetBackoffMax() != nil {
			t.Errorf("%s: backoff base %s, max %v; want base %s and no max (10 × base)", tc.name, got, out.GetRetry().GetBackoffMax(), tc.backoff)
		}
		notes := strings.Join(policyNotes(route), "; ")
		if (tc.note == "") != (notes == "") || !strings.Contains(notes, tc.note) {
			t.Errorf("%s: notes %q, want %q", tc.name, notes, tc.note)
		}
	}
}

// Timeouts, retries and their backoff are programmed, so the route's Accepted message no
// longer calls them unsupported; what is left out (a backoff that does not parse) is named.
func TestAcceptedMessageNamesIgnoredPolicies(t *testing.T) {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "reviews"}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}
	route := HTTPRoute{Namespace: "shop", Name: "r", Rules: []HTTPRouteRule{{
		Timeouts: HTTPRouteTimeouts{Request: "10s"}, Retry: &HTTPRouteRetry{Codes: []int{503}, Backoff: "1s"},
	}}}
	v := CheckHTTPRouteParent(route, ServiceParent{Namespace: "shop", Name: "reviews"}, svc)
	if !v.Accepted || strings.Contains(v.Message, "timeouts") || strings.Contains(v.Message, "backoff") {
		t.Errorf("verdict %+v, want no note about a backoff proxies now honour", v)
	}
	route.Rules[0].Retry.Backoff = "1.5s"
	v = CheckHTTPRouteParent(route, ServiceParent{Namespace: "shop", Name: "reviews"}, svc)
	if !v.Accepted || !strings.Contains(v.Message, `retry.backoff: "1.5s" is not a Gateway API duration`) {
		t.Errorf("verdict %+v, want a note naming the backoff that does not parse", v)
	}
}
