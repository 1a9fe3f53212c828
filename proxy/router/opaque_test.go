package router_test

import (
	"testing"

	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/proxy/router"
)

// Opaque connections take the first route without matches; a port whose routes all have
// matches has none for them.
func TestOpaqueRoute(t *testing.T) {
	matched := &api.Route{Matches: []*api.HTTPMatch{{Name: "m", PathRegex: ".*"}}, Backends: []*api.Backend{backend("canary", 1, ep("10.0.0.2", 80))}}
	plain := &api.Route{Backends: []*api.Backend{backend("stable", 1, ep("10.0.0.1", 80))}}
	snap := &api.Snapshot{Services: []*api.Service{
		svc("shop", "mixed", &api.ServicePort{Port: 80, Routes: []*api.Route{matched, plain}}),
		svc("shop", "http-only", &api.ServicePort{Port: 80, Routes: []*api.Route{matched}}),
	}}
	table, err := router.Build(snap, "shop", "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	mixed, err := table.Resolve("mixed")
	if err != nil {
		t.Fatal(err)
	}
	if r := mixed.OpaqueRoute(); r == nil || r.Pick().Service != "stable" {
		t.Errorf("the opaque route of shop/mixed is not the one without matches")
	}
	httpOnly, err := table.Resolve("http-only")
	if err != nil {
		t.Fatal(err)
	}
	if r := httpOnly.OpaqueRoute(); r != nil {
		t.Errorf("shop/http-only has an opaque route, want none")
	}
}
