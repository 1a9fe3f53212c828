package router_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/proxy/router"
)

// abPort is a root with an A/B route: Firefox users, or GET/HEAD under /api/beta, go to
// v2; everyone else to the root itself.
func abPort(t *testing.T) *router.Port {
	t.Helper()
	table := mustBuild(t, &api.Snapshot{Services: []*api.Service{{
		Namespace: "shop", Name: "reviews",
		Ports: []*api.ServicePort{{Port: 80, Split: "shop/reviews", Routes: []*api.Route{
			{
				Matches: []*api.HTTPMatch{
					{Name: "g/firefox", Headers: []*api.HeaderMatch{{Name: "user-agent", ValueRegex: ".*Firefox.*"}}},
					{Name: "g/beta", PathRegex: "/api/beta", Methods: []string{"GET", "HEAD"}},
					{Name: "g/insider-android", Headers: []*api.HeaderMatch{
						{Name: "user-agent", ValueRegex: ".*Android.*"}, {Name: "cookie", ValueRegex: ".*type=insider.*"},
					}},
				},
				Backends: []*api.Backend{backend("reviews-v2", 1, ep("10.0.0.2", 8080))},
			},
			{Backends: []*api.Backend{backend("reviews", 1, ep("10.0.0.1", 8080))}},
		}}},
	}}})
	return resolve(t, table, "reviews.shop")
}

func TestRouteMatching(t *testing.T) {
	p := abPort(t)
	cases := []struct {
		name, method, path string
		header             http.Header
		want               string
	}{
		{"firefox", "GET", "/", http.Header{"User-Agent": {"Mozilla/5.0 Firefox/140.0"}}, "reviews-v2"},
		{"firefox, any method and path", "DELETE", "/x", http.Header{"User-Agent": {"Firefox"}}, "reviews-v2"},
		{"chrome", "GET", "/", http.Header{"User-Agent": {"Chrome/130"}}, "reviews"},
		{"header regex matches the whole value", "GET", "/", http.Header{"User-Agent": {"Firefo"}}, "reviews"},
		{"any of several header values", "GET", "/", http.Header{"User-Agent": {"curl", "Firefox"}}, "reviews-v2"},
		{"path prefix", "GET", "/api/beta/items?x=1", nil, "reviews-v2"},
		{"path anchored at the start", "GET", "/v1/api/beta", nil, "reviews"},
		{"method not admitted", "POST", "/api/beta", nil, "reviews"},
		{"HEAD admitted", "HEAD", "/api/beta", nil, "reviews-v2"},
		{"headers are ANDed: both", "GET", "/", http.Header{"User-Agent": {"Android 14"}, "Cookie": {"a=b; type=insider"}}, "reviews-v2"},
		{"headers are ANDed: one", "GET", "/", http.Header{"User-Agent": {"Android 14"}}, "reviews"},
		{"no headers at all", "GET", "/", nil, "reviews"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path, _, _ := strings.Cut(tc.path, "?") // the proxy matches the path, not the query
			r := p.Route(tc.method, path, tc.header)
			if r == nil {
				t.Fatal("no route; the last route has no matches and must take everything")
			}
			if b := r.Pick(); b == nil || b.Service != tc.want {
				t.Fatalf("%s %s went to %+v, want %s", tc.method, tc.path, b, tc.want)
			}
		})
	}
}

func TestRouteWithOnlyMatchesRejectsTheRest(t *testing.T) {
	table := mustBuild(t, &api.Snapshot{Services: []*api.Service{{
		Namespace: "shop", Name: "web",
		Ports: []*api.ServicePort{{Port: 80, Routes: []*api.Route{{
			Matches:  []*api.HTTPMatch{{PathRegex: "/only"}},
			Backends: []*api.Backend{backend("web", 1, ep("10.0.0.1", 8080))},
		}}}},
	}}})
	p := resolve(t, table, "web.shop")
	if r := p.Route("GET", "/elsewhere", nil); r != nil {
		t.Fatalf("a request no route matches must get no route, got %+v", r)
	}
}

func TestBuildRejectsBadRegexes(t *testing.T) {
	for name, m := range map[string]*api.HTTPMatch{
		"path":   {Name: "g/m", PathRegex: "/api/(v1"},
		"header": {Name: "g/m", Headers: []*api.HeaderMatch{{Name: "x", ValueRegex: "[a-"}}},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := router.Build(&api.Snapshot{Services: []*api.Service{{
				Namespace: "shop", Name: "web",
				Ports: []*api.ServicePort{{Port: 80, Routes: []*api.Route{{Matches: []*api.HTTPMatch{m}}}}},
			}}}, "shop", "cluster.local")
			if err == nil {
				t.Fatal("a snapshot with a regex that does not compile must be rejected (NACK)")
			}
		})
	}
}

// FuzzRouteMatching throws arbitrary methods, paths and header values at the A/B port:
// matching never panics, and every request finds a route (the last one takes all).
func FuzzRouteMatching(f *testing.F) {
	f.Add("GET", "/api/beta", "Firefox", "type=insider")
	f.Add("POST", "", "", "")
	f.Add("\x00", "/\xff\xfe", "Android\n", ";;")
	f.Fuzz(func(t *testing.T, method, path, ua, cookie string) {
		p := abPort(t)
		r := p.Route(method, path, http.Header{"User-Agent": {ua}, "Cookie": {cookie}})
		if r == nil || r.Pick() == nil {
			t.Fatalf("no backend for %q %q", method, path)
		}
	})
}
