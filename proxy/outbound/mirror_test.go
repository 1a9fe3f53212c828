package outbound_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/braidmesh/braid/proxy/api"
)

// A route's mirror gets a copy of each request, body included, while the client's answer
// comes from the route's backend alone; a mirror that is down changes nothing.
func TestMirrorGetsACopy(t *testing.T) {
	main, mainSeen := startBackend(t, "main", http.StatusOK)
	shadow, shadowSeen := startBackend(t, "shadow", http.StatusInternalServerError)
	dead := refusingEndpoint(t)
	route := &api.Route{
		Backends: []*api.Backend{{Service: "web", Weight: 1, Endpoints: []*api.Endpoint{endpoint(main)}}},
		Mirrors: []*api.Mirror{
			{Backend: &api.Backend{Service: "web-shadow", Weight: 1, Endpoints: []*api.Endpoint{endpoint(shadow)}}},
			{Backend: &api.Backend{Service: "web-dead", Weight: 1, Endpoints: []*api.Endpoint{endpoint(dead)}}},
		},
	}
	h, _ := newHandler(t, []*api.Service{{Namespace: "shop", Name: "web", Ports: []*api.ServicePort{{Name: "http", Port: 80, Routes: []*api.Route{route}}}}})
	proxy := httptest.NewServer(h)
	defer proxy.Close()

	code, hdr, body := do(t, proxy.URL, http.MethodPost, "/orders?x=1", "web.shop", "the order")
	if code != http.StatusOK || hdr.Get("X-Backend") != "main" || body != "hello from main" {
		t.Fatalf("the client got %d from %q: %q, want the main backend's 200", code, hdr.Get("X-Backend"), body)
	}
	if got := <-mainSeen; got.body != "the order" || got.path != "/orders" {
		t.Errorf("the main backend saw %+v", got)
	}
	select {
	case got := <-shadowSeen:
		if got.method != http.MethodPost || got.path != "/orders" || got.rawQuery != "x=1" || got.body != "the order" || got.host != "web.shop" || got.header != "passed through" {
			t.Errorf("the mirror saw %+v, want the same request", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the mirror got no copy")
	}
}

// A body larger than the mirror limit is not copied, and reaches the backend whole.
func TestLargeBodiesAreNotMirrored(t *testing.T) {
	main, mainSeen := startBackend(t, "main", http.StatusOK)
	shadow, shadowSeen := startBackend(t, "shadow", http.StatusOK)
	route := &api.Route{
		Backends: []*api.Backend{{Service: "web", Weight: 1, Endpoints: []*api.Endpoint{endpoint(main)}}},
		Mirrors:  []*api.Mirror{{Backend: &api.Backend{Service: "web-shadow", Weight: 1, Endpoints: []*api.Endpoint{endpoint(shadow)}}}},
	}
	h, _ := newHandler(t, []*api.Service{{Namespace: "shop", Name: "web", Ports: []*api.ServicePort{{Name: "http", Port: 80, Routes: []*api.Route{route}}}}})
	proxy := httptest.NewServer(h)
	defer proxy.Close()
	big := strings.Repeat("x", 200<<10)
	if code, _, _ := do(t, proxy.URL, http.MethodPut, "/blob", "web.shop", big); code != http.StatusOK {
		t.Fatalf("PUT answered %d", code)
	}
	if got := <-mainSeen; len(got.body) != len(big) {
		t.Errorf("the backend got %d bytes, want %d", len(got.body), len(big))
	}
	select {
	case got := <-shadowSeen:
		t.Errorf("a %d-byte body was mirrored: %d bytes", len(big), len(got.body))
	case <-time.After(300 * time.Millisecond):
	}
}
