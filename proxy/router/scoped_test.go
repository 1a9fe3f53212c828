package router_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/proxy/router"
)

// deniedWeb is shop/web as the control plane sends it to a workload that may not reach
// it: its name, cluster IP and ports, the reason, and no routes.
func deniedWeb() *api.Service {
	return &api.Service{Namespace: "shop", Name: "web", Denied: "no TrafficTarget admits spiffe://cluster.local/ns/shop/sa/client",
		ClusterIps: []string{"10.96.0.10"}, Ports: []*api.ServicePort{{Port: 80}, {Port: 5432, Protocol: api.Protocol_PROTOCOL_OPAQUE}}}
}

// A denied Service builds: its ports resolve by name and by cluster IP, carry the
// reason, and have no routes. A later snapshot that lifts the denial routes normally.
func TestDeniedServiceBuildsAndALaterSnapshotLiftsIt(t *testing.T) {
	reg := router.NewRegistry(nil)
	tbl, err := reg.Build(&api.Snapshot{Version: 1, Services: []*api.Service{deniedWeb()}}, "shop", "cluster.local")
	if err != nil {
		t.Fatalf("Build refused a denied service: %v", err)
	}
	p := resolve(t, tbl, "web.shop")
	if p.Denied == "" || p.Host() != "web.shop" || len(p.Routes()) != 0 || p.Route("GET", "/", nil) != nil || p.OpaqueRoute() != nil {
		t.Errorf("denied port: denied %q, host %q, %d routes; want the reason, web.shop and no routes", p.Denied, p.Host(), len(p.Routes()))
	}
	byIP, ok := tbl.ResolveAddr(netip.MustParseAddrPort("10.96.0.10:5432"))
	if !ok || byIP.Denied == "" || byIP.Protocol != api.Protocol_PROTOCOL_OPAQUE {
		t.Errorf("the denied opaque port by cluster IP: %+v, %v", byIP, ok)
	}

	lifted := &api.Service{Namespace: "shop", Name: "web", ClusterIps: []string{"10.96.0.10"},
		Ports: []*api.ServicePort{port(80, backend("web", 1, ep("10.0.0.1", 8080)))}}
	tbl, err = reg.Build(&api.Snapshot{Version: 2, Services: []*api.Service{lifted}}, "shop", "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	p = resolve(t, tbl, "web.shop")
	if p.Denied != "" || p.Route("GET", "/", nil) == nil || p.Route("GET", "/", nil).Pick() == nil {
		t.Errorf("after the denial was lifted: denied %q, route %v; want a route with a backend", p.Denied, p.Route("GET", "/", nil))
	}
}

// Routes sent with a denial are ignored: the denial wins.
func TestDeniedServiceIgnoresRoutes(t *testing.T) {
	withRoutes := deniedWeb()
	withRoutes.Ports[0].Routes = []*api.Route{{Backends: []*api.Backend{backend("web", 1, ep("10.0.0.1", 8080))}}}
	tbl := mustBuild(t, &api.Snapshot{Version: 2, Services: []*api.Service{withRoutes}})
	if p := resolve(t, tbl, "web.shop"); len(p.Routes()) != 0 || p.Denied == "" {
		t.Errorf("a denied port kept %d routes (denied %q)", len(p.Routes()), p.Denied)
	}
}

// Route labels (for metrics) are the configured names, or the index in the port, and
// "other" past MaxRouteLabels, so that a port has a bounded number of them.
func TestRouteLabels(t *testing.T) {
	var routes []*api.Route
	for i := range router.MaxRouteLabels + 3 {
		r := &api.Route{Matches: []*api.HTTPMatch{{PathRegex: fmt.Sprintf("/r%d", i)}}, Backends: []*api.Backend{backend("web", 1, ep("10.0.0.1", 8080))}}
		if i == 1 {
			r.Name = "shop/web-route/rules[1]"
		}
		routes = append(routes, r)
	}
	tbl := mustBuild(t, &api.Snapshot{Services: []*api.Service{{Namespace: "shop", Name: "web", Ports: []*api.ServicePort{{Port: 80, Routes: routes}}}}})
	got := map[string]int{}
	var first []string
	for i, r := range resolve(t, tbl, "web").Routes() {
		got[r.Label]++
		if i < 3 {
			first = append(first, r.Label)
		}
	}
	if fmt.Sprint(first) != "[0 shop/web-route/rules[1] 2]" || got["other"] != 3 || len(got) != router.MaxRouteLabels+1 {
		t.Errorf("labels %v (the first three %v), want 0, the name, 2…, and 3 × other", got, first)
	}
}

// The longest pause before the n-th retry doubles from the base up to the maximum,
// which is 10 × the base unless set; no base, no pause.
func TestBackoff(t *testing.T) {
	build := func(rp *api.RetryPolicy) *router.Route {
		r, _ := buildWith(t, router.NewRegistry(nil), webRoute(&api.Route{Retry: rp}, endpoints(1)...))
		return r
	}
	ms := time.Millisecond
	cases := []struct {
		name string
		rp   *api.RetryPolicy
		want []time.Duration // for retries 1, 2, …
	}{
		{"none", nil, []time.Duration{0, 0, 0}},
		{"base only", &api.RetryPolicy{BackoffBase: durationpb.New(25 * ms)}, []time.Duration{25 * ms, 50 * ms, 100 * ms, 200 * ms, 250 * ms, 250 * ms}},
		{"base and max", &api.RetryPolicy{BackoffBase: durationpb.New(100 * ms), BackoffMax: durationpb.New(300 * ms)}, []time.Duration{100 * ms, 200 * ms, 300 * ms, 300 * ms}},
		{"max below base", &api.RetryPolicy{BackoffBase: durationpb.New(time.Second), BackoffMax: durationpb.New(10 * ms)}, []time.Duration{10 * ms, 10 * ms}},
		{"longest", &api.RetryPolicy{BackoffBase: durationpb.New(24 * time.Hour)}, []time.Duration{24 * time.Hour, 48 * time.Hour, 96 * time.Hour, 192 * time.Hour, 240 * time.Hour, 240 * time.Hour}},
	}
	for _, tc := range cases {
		r := build(tc.rp)
		for i, want := range tc.want {
			if got := r.Backoff(i + 1); got != want {
				t.Errorf("%s: retry %d backs off up to %s, want %s", tc.name, i+1, got, want)
			}
		}
		if r.Backoff(0) != 0 {
			t.Errorf("%s: a pause before the first attempt", tc.name)
		}
	}
	for name, rp := range map[string]*api.RetryPolicy{
		"negative base": {BackoffBase: durationpb.New(-ms)},
		"negative max":  {BackoffBase: durationpb.New(ms), BackoffMax: durationpb.New(-ms)},
		"base too long": {BackoffBase: durationpb.New(25 * time.Hour)},
	} {
		if _, err := router.Build(webRoute(&api.Route{Retry: rp}, endpoints(1)...), "shop", "cluster.local"); err == nil {
			t.Errorf("%s: Build accepted it", name)
		}
	}
}
