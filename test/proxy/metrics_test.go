package proxy

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/braidmesh/braid/test/harness"
)

// failingBackend answers every request with a 500 of its own (no Braid-Proxy-Error).
func failingBackend(t *testing.T) netip.AddrPort {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "the application failed", http.StatusInternalServerError)
	}))
	t.Cleanup(srv.Close)
	return netip.MustParseAddrPort(srv.Listener.Addr().String())
}

func containsAll(s string, parts ...string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// After N requests the application answers, K it fails and M the proxy answers itself,
// /metrics counts exactly those, under the right labels; hosts that name no mesh
// service count as dst_service="unknown", never under their own name.
func TestMetricsCountRequests(t *testing.T) {
	ctx := t.Context()
	web := backend(t, "web")
	api := failingBackend(t)
	config := fmt.Sprintf(`
version: 42
services:
- namespace: shop
  name: web
  ports:
  - port: 80
    routes: [{backends: [{service: web, weight: 1, endpoints: [{ip: "%s", port: %d}]}]}]
- namespace: shop
  name: api
  ports:
  - port: 8080
    routes: [{backends: [{service: api, weight: 1, endpoints: [{ip: "%s", port: %d}]}]}]
- namespace: shop
  name: gone
  ports:
  - port: 80
    routes: [{backends: [{service: gone-v2, weight: 1, unavailable: service shop/gone-v2 does not exist}]}]
`, web.Addr.Addr(), web.Addr.Port(), api.Addr(), api.Port())
	p, _ := standalone(t, config)

	const n, k, unknownHosts, unavailable = 7, 4, 3, 2
	for i := range n {
		expectStatus(t, get(ctx, t, p, []string{"web", "web.shop", "web.shop.svc.cluster.local:80"}[i%3]), http.StatusOK)
	}
	for range k {
		expectStatus(t, get(ctx, t, p, "api.shop:8080"), http.StatusInternalServerError)
	}
	for i := range unknownHosts {
		expectStatus(t, get(ctx, t, p, []string{"secret-host.example", "web.other-namespace", "web.shop:9999"}[i]), http.StatusNotFound)
	}
	for range unavailable {
		expectStatus(t, get(ctx, t, p, "gone.shop"), http.StatusServiceUnavailable)
	}

	// By route (the index of the unnamed route) and the identity of the endpoint that
	// answered: "unmeshed" for these plaintext endpoints, "none" when the proxy answered
	// before trying one.
	latency := func(service, port, route, identity string) map[string]string {
		return map[string]string{"direction": "outbound", "dst_service": service, "dst_port": port, "route": route, "dst_identity": identity}
	}
	requests := func(service, port, route, identity, status, result string) map[string]string {
		l := latency(service, port, route, identity)
		l["code_class"], l["status_code"], l["result"] = status[:1]+"xx", status, result
		return l
	}
	const total = "braid_proxy_requests_total"
	metric(ctx, t, p, total, requests("shop/web", "80", "0", "unmeshed", "200", "success"), n)
	metric(ctx, t, p, total, requests("shop/api", "8080", "0", "unmeshed", "500", "failure"), k)
	metric(ctx, t, p, total, requests("unknown", "unknown", "none", "none", "404", "proxy_error"), unknownHosts)
	metric(ctx, t, p, total, requests("shop/gone", "80", "0", "none", "503", "proxy_error"), unavailable)
	const count = "braid_proxy_response_latency_seconds_count"
	metric(ctx, t, p, count, latency("shop/web", "80", "0", "unmeshed"), n)
	metric(ctx, t, p, count, latency("shop/api", "8080", "0", "unmeshed"), k)
	metric(ctx, t, p, count, latency("unknown", "unknown", "none", "none"), unknownHosts)
	metric(ctx, t, p, count, latency("shop/gone", "80", "0", "none"), unavailable)
	metric(ctx, t, p, "braid_proxy_config_version", map[string]string{}, 42)

	// Nothing else was counted.
	samples, err := p.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := samples.Named(total); len(got) != 4 {
		t.Errorf("%s has %d series, want 4: %v", total, len(got), got)
	}
	checkConfiguredLabels(t, samples)

	// The profiles are on the admin port too.
	index, err := p.Admin(ctx, "/debug/pprof/")
	if err != nil || !containsAll(index, "goroutine", "heap", "profile") {
		t.Errorf("/debug/pprof/: %v\n%s", err, index)
	}
	if heap, err := p.Admin(ctx, "/debug/pprof/heap?debug=1"); err != nil || !strings.Contains(heap, "heap profile") {
		t.Errorf("/debug/pprof/heap: %v", err)
	}
}

// checkConfiguredLabels checks that the request metrics' label values are those of the
// configuration of TestMetricsCountRequests, never values from a request.
func checkConfiguredLabels(t *testing.T, samples harness.Samples) {
	t.Helper()
	allowed := map[string]bool{"shop/web": true, "shop/api": true, "shop/gone": true, "80": true, "8080": true, "unknown": true,
		"0": true, "none": true, "unmeshed": true}
	for _, sample := range samples {
		if sample.Name != "braid_proxy_requests_total" && !strings.HasPrefix(sample.Name, "braid_proxy_response_latency") {
			continue
		}
		for _, label := range []string{"dst_service", "dst_port", "route", "dst_identity"} {
			if !allowed[sample.Labels[label]] {
				t.Errorf("%s%v: a %s the configuration does not name; labels would be unbounded", sample.Name, sample.Labels, label)
			}
		}
	}
}
