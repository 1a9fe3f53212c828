package router_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/proxy/router"
)

// A header filter with a name or value that is not a valid header is refused with the
// configuration (the proxy NACKs it and keeps its last good table).
func TestHeaderModifiersAreChecked(t *testing.T) {
	for name, m := range map[string]*api.HeaderModifier{
		"bad name":         {Set: []*api.HeaderValue{{Name: "bad name", Value: "x"}}},
		"newline in value": {Add: []*api.HeaderValue{{Name: "X-Ok", Value: "a\nb"}}},
		"bad removal":      {Remove: []string{"no:colons"}},
	} {
		t.Run(name, func(t *testing.T) {
			svc := &api.Service{Namespace: "shop", Name: "web", Ports: []*api.ServicePort{{Port: 80, Routes: []*api.Route{{
				RequestHeaders: m, Backends: []*api.Backend{{Service: "web", Weight: 1}},
			}}}}}
			if _, err := router.Build(&api.Snapshot{Version: 1, Services: []*api.Service{svc}}, "shop", "cluster.local"); err == nil || !strings.Contains(err.Error(), "header") {
				t.Errorf("Build = %v, want an error about the header", err)
			}
		})
	}
}

// Apply sets, then adds, then removes, with names in any case; Host goes to the authority.
func TestHeaderModifierApply(t *testing.T) {
	svc := &api.Service{Namespace: "shop", Name: "web", Ports: []*api.ServicePort{{Port: 80, Routes: []*api.Route{{
		RequestHeaders: &api.HeaderModifier{
			Set:    []*api.HeaderValue{{Name: "x-a", Value: "1"}, {Name: "host", Value: "h.example"}},
			Add:    []*api.HeaderValue{{Name: "X-B", Value: "2"}},
			Remove: []string{"x-c"},
		},
		Backends: []*api.Backend{{Service: "web", Weight: 1}},
	}}}}}
	table, err := router.Build(&api.Snapshot{Version: 1, Services: []*api.Service{svc}}, "shop", "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	port, err := table.Resolve("web.shop")
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{"X-A": {"old", "older"}, "X-B": {"1"}, "X-C": {"x"}}
	host := "web.shop"
	port.Routes()[0].RequestHeaders.Apply(h, &host)
	if h.Get("X-A") != "1" || len(h.Values("X-A")) != 1 || len(h.Values("X-B")) != 2 || h.Get("X-C") != "" || host != "h.example" {
		t.Errorf("headers %v, host %q", h, host)
	}
	var none *router.HeaderModifier
	none.Apply(h, nil) // a nil modifier changes nothing
}
