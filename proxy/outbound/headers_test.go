package outbound_test

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"

	"github.com/braidmesh/braid/proxy/api"
)

// Header filters (Gateway API's RequestHeaderModifier and ResponseHeaderModifier), of a
// route and then of the backend picked: the application sees the request changed, the
// client the answer.
func TestHeaderModifiers(t *testing.T) {
	var seen http.Header
	var seenHost string
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen, seenHost = r.Header.Clone(), r.Host
		w.Header().Set("X-Internal", "secret")
		w.Header().Set("Server", "app/1.0")
		_, _ = w.Write([]byte("ok"))
	}))
	t.Cleanup(app.Close)
	route := &api.Route{
		RequestHeaders: &api.HeaderModifier{
			Set:    []*api.HeaderValue{{Name: "x-test", Value: "set by the route"}, {Name: "Host", Value: "rewritten.example"}},
			Add:    []*api.HeaderValue{{Name: "X-Tag", Value: "route"}},
			Remove: []string{"x-remove-me"},
		},
		ResponseHeaders: &api.HeaderModifier{Remove: []string{"X-Internal"}, Set: []*api.HeaderValue{{Name: "Server", Value: "mesh"}}},
	}
	svc := routeTo(route, netip.MustParseAddrPort(app.Listener.Addr().String()))
	be := svc.GetPorts()[0].GetRoutes()[0].GetBackends()[0]
	be.RequestHeaders = &api.HeaderModifier{Add: []*api.HeaderValue{{Name: "x-tag", Value: "canary"}}}
	be.ResponseHeaders = &api.HeaderModifier{Add: []*api.HeaderValue{{Name: "Set-Cookie", Value: "flagger-cookie=canary; Max-Age=3600"}}}
	proxyURL, _ := proxyFor(t, svc)

	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, proxyURL+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "web.shop"
	req.Header.Set("X-Test", "from the client")
	req.Header.Set("X-Remove-Me", "gone")
	req.Header.Set("X-Tag", "client")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if got := seen.Get("X-Test"); got != "set by the route" {
		t.Errorf("X-Test = %q, want the route's value", got)
	}
	if got := seen.Values("X-Tag"); len(got) != 3 || got[0] != "client" || got[1] != "route" || got[2] != "canary" {
		t.Errorf("X-Tag = %q, want the client's, then the route's, then the backend's", got)
	}
	if seen.Get("X-Remove-Me") != "" {
		t.Error("X-Remove-Me reached the application")
	}
	if seenHost != "rewritten.example" {
		t.Errorf("the application saw host %q, want the route's rewritten.example", seenHost)
	}
	if resp.Header.Get("X-Internal") != "" || resp.Header.Get("Server") != "mesh" {
		t.Errorf("answer headers %v: want X-Internal removed and Server set by the route", resp.Header)
	}
	if got := resp.Header.Get("Set-Cookie"); got != "flagger-cookie=canary; Max-Age=3600" {
		t.Errorf("Set-Cookie = %q, want the backend's", got)
	}
}
