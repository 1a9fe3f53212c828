package outbound_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/proxy/outbound"
	"github.com/braidmesh/braid/proxy/router"
	"github.com/braidmesh/braid/proxy/telemetry"
)

// requestCounts returns braid_proxy_requests_total as "dst_service dst_port route
// dst_identity code_class result" → count, and the latency histogram's sample counts as
// "dst_service dst_port route dst_identity".
func requestCounts(t *testing.T, m *telemetry.Metrics) (map[string]float64, map[string]uint64) {
	t.Helper()
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	counts, latencies := map[string]float64{}, map[string]uint64{}
	for _, f := range families {
		if !strings.HasPrefix(f.GetName(), "braid_proxy_re") {
			continue
		}
		for _, s := range f.GetMetric() {
			l := map[string]string{}
			for _, p := range s.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			if l["direction"] != "outbound" {
				t.Errorf("%s has direction %q", f.GetName(), l["direction"])
			}
			switch f.GetName() {
			case "braid_proxy_requests_total":
				counts[strings.Join([]string{l["dst_service"], l["dst_port"], l["route"], l["dst_identity"], l["code_class"], l["result"]}, " ")] += s.GetCounter().GetValue() // summed over status codes
			case "braid_proxy_response_latency_seconds":
				latencies[strings.Join([]string{l["dst_service"], l["dst_port"], l["route"], l["dst_identity"]}, " ")] = s.GetHistogram().GetSampleCount()
			}
		}
	}
	return counts, latencies
}

func equalCounts[V comparable](t *testing.T, what string, got, want map[string]V) {
	t.Helper()
	keys := func(m map[string]V) []string {
		var out []string
		for k, v := range m {
			out = append(out, fmt.Sprintf("%s: %v", k, v))
		}
		slices.Sort(out)
		return out
	}
	if g, w := keys(got), keys(want); !slices.Equal(g, w) {
		t.Errorf("%s:\n  %s\nwant\n  %s", what, strings.Join(g, "\n  "), strings.Join(w, "\n  "))
	}
}

// newMeteredProxy serves a Handler that records in a new Metrics, over a real socket.
func newMeteredProxy(t *testing.T, services ...*api.Service) (*telemetry.Metrics, string) {
	t.Helper()
	m, url, _ := newMeteredProxyWithTable(t, services...)
	return m, url
}

// newMeteredProxyWithTable is newMeteredProxy, with the pointer the handler reads its
// table from.
func newMeteredProxyWithTable(t *testing.T, services ...*api.Service) (*telemetry.Metrics, string, *atomic.Pointer[router.Table]) {
	t.Helper()
	table := &atomic.Pointer[router.Table]{}
	table.Store(build(t, services...))
	m := telemetry.New()
	proxy := httptest.NewServer(outbound.New(testr.New(t), table, m))
	t.Cleanup(proxy.Close)
	return m, proxy.URL, table
}

func TestMetrics(t *testing.T) {
	ok, _ := startBackend(t, "web", http.StatusOK)
	broken, _ := startBackend(t, "api", http.StatusInternalServerError)
	m, proxyURL := newMeteredProxy(t,
		webService(&api.Backend{Service: "web", Weight: 1, Endpoints: []*api.Endpoint{endpoint(ok)}}),
		&api.Service{Namespace: "shop", Name: "api", Ports: []*api.ServicePort{{Port: 80, Routes: []*api.Route{{
			Matches:  []*api.HTTPMatch{{PathRegex: "/v1"}},
			Backends: []*api.Backend{{Service: "api", Weight: 1, Endpoints: []*api.Endpoint{endpoint(broken)}}},
		}}}}},
		&api.Service{Namespace: "shop", Name: "gone", Ports: []*api.ServicePort{{Port: 8080, Routes: []*api.Route{{
			Backends: []*api.Backend{{Service: "gone", Weight: 1, Unavailable: "service shop/gone does not exist"}},
		}}}}},
		&api.Service{Namespace: "shop", Name: "dead", Ports: []*api.ServicePort{{Port: 80, Routes: []*api.Route{{
			Backends: []*api.Backend{{Service: "dead", Weight: 1, Endpoints: []*api.Endpoint{endpoint(refusingEndpoint(t))}}},
		}}}}},
	)
	requests := []struct {
		host, path string
		status     int
	}{
		{"web", "/", 200}, {"web.shop", "/a", 200}, {"web.shop.svc.cluster.local:80", "/", 200},
		{"api", "/v1/x", 500}, {"api", "/v1/y", 500},
		{"api", "/v2", 404},             // no route matches: the proxy answers
		{"gone:8080", "/", 503},         // unavailable backend
		{"dead", "/", 502},              // refused connection
		{"example.com", "/", 404},       // not a mesh service
		{"web.elsewhere", "/", 404},     // not a service the proxy knows
		{"web:9999", "/", 404},          // not a port of the service
		{"evil.example:1234", "/", 404}, // nor this
	}
	for _, r := range requests {
		code, _, body := do(t, proxyURL, http.MethodGet, r.path, r.host, "")
		if code != r.status {
			t.Fatalf("%s%s: %d %q, want %d", r.host, r.path, code, body, r.status)
		}
	}
	// By route (its index here) and the identity of the endpoint tried ("none" when the
	// proxy answered before trying one).
	waitCounts(t, m, map[string]float64{
		"shop/web 80 0 unmeshed 2xx success":        3,
		"shop/api 80 0 unmeshed 5xx failure":        2,
		"shop/api 80 none none 4xx proxy_error":     1,
		"shop/gone 8080 0 none 5xx proxy_error":     1,
		"shop/dead 80 0 unmeshed 5xx proxy_error":   1,
		"unknown unknown none none 4xx proxy_error": 4,
	})
	_, latencies := requestCounts(t, m)
	equalCounts(t, "braid_proxy_response_latency_seconds counts", latencies, map[string]uint64{
		"shop/web 80 0 unmeshed": 3, "shop/api 80 0 unmeshed": 2, "shop/api 80 none none": 1,
		"shop/gone 8080 0 none": 1, "shop/dead 80 0 unmeshed": 1, "unknown unknown none none": 4,
	})
}

// A response the backend breaks off midway counts as a failure, with the status it
// started with.
func TestMetricsAbortedResponse(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", "1000")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "only part of it")
		_ = http.NewResponseController(w).Flush() // the headers and a part go out
		panic(http.ErrAbortHandler)               // then the connection closes
	}))
	t.Cleanup(backend.Close)
	addr := netip.MustParseAddrPort(backend.Listener.Addr().String())
	m, proxyURL := newMeteredProxy(t, webService(&api.Backend{Service: "web", Weight: 1, Endpoints: []*api.Endpoint{endpoint(addr)}}))
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, proxyURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "web"
	if resp, err := http.DefaultClient.Do(req); err == nil {
		_, err = io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err == nil {
			t.Fatal("a broken-off response arrived whole")
		}
	}
	waitCounts(t, m, map[string]float64{"shop/web 80 0 unmeshed 2xx failure": 1})
}

// A request whose client goes away before any answer is not counted: there was none.
func TestMetricsClientGone(t *testing.T) {
	arrived := make(chan struct{})
	backend := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-r.Context().Done()
	}))
	t.Cleanup(backend.Close)
	addr := netip.MustParseAddrPort(backend.Listener.Addr().String())
	m, proxyURL := newMeteredProxy(t, webService(&api.Backend{Service: "web", Weight: 1, Endpoints: []*api.Endpoint{endpoint(addr)}}))
	ctx, cancel := context.WithCancel(t.Context())
	go func() { <-arrived; cancel() }()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, proxyURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "web"
	if resp, err := http.DefaultClient.Do(req); !errors.Is(err, context.Canceled) {
		if err == nil {
			_ = resp.Body.Close()
		}
		t.Fatalf("request error %v, want context.Canceled", err)
	}
	// Then one that completes, so that the first has surely been handled (one connection).
	time.Sleep(50 * time.Millisecond)
	if code, _, _ := do(t, proxyURL, http.MethodGet, "/", "nowhere.example", ""); code != http.StatusNotFound {
		t.Fatalf("status %d, want 404", code)
	}
	waitCounts(t, m, map[string]float64{"unknown unknown none none 4xx proxy_error": 1})
}

// waitCounts waits until braid_proxy_requests_total holds exactly want: the handler
// records after the response is written, so the client may see it first.
func waitCounts(t *testing.T, m *telemetry.Metrics, want map[string]float64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, _ := requestCounts(t, m)
		if fmt.Sprint(got) == fmt.Sprint(want) || time.Now().After(deadline) {
			equalCounts(t, "braid_proxy_requests_total", got, want)
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The identity label is the SPIFFE ID of the endpoint that answered, and the route label
// the route's configured name: with a split over two named routes, each request counts
// under the route that carried it and the workload behind the endpoint.
func TestMetricsByRouteAndDestinationIdentity(t *testing.T) {
	v1, _ := startBackend(t, "v1", http.StatusOK)
	v2, _ := startBackend(t, "v2", http.StatusOK)
	meshed := func(a netip.AddrPort, sa string) *api.Endpoint {
		// The handler without UseMesh reaches every endpoint in plaintext at its address.
		return &api.Endpoint{Ip: a.Addr().String(), Port: uint32(a.Port()), Identity: "spiffe://cluster.local/ns/shop/sa/" + sa, ProxyPort: 15006}
	}
	m, proxyURL := newMeteredProxy(t, &api.Service{Namespace: "shop", Name: "web", Ports: []*api.ServicePort{{Port: 80, Routes: []*api.Route{
		{Name: "shop/web-canary/rules[0]", Matches: []*api.HTTPMatch{{PathRegex: "/canary"}},
			Backends: []*api.Backend{{Service: "web-v2", Weight: 1, Endpoints: []*api.Endpoint{meshed(v2, "web-v2")}}}},
		{Backends: []*api.Backend{{Service: "web-v1", Weight: 1, Endpoints: []*api.Endpoint{meshed(v1, "web-v1")}}}},
	}}}})
	for _, path := range []string{"/canary", "/", "/x", "/canary/y"} {
		if code, _, body := do(t, proxyURL, http.MethodGet, path, "web", ""); code != http.StatusOK {
			t.Fatalf("%s: %d %q", path, code, body)
		}
	}
	waitCounts(t, m, map[string]float64{
		"shop/web 80 shop/web-canary/rules[0] spiffe://cluster.local/ns/shop/sa/web-v2 2xx success": 2,
		"shop/web 80 1 spiffe://cluster.local/ns/shop/sa/web-v1 2xx success":                        2,
	})
}
