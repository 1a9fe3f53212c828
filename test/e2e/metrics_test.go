package e2e

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/test/harness"
)

// The proxy streaming from the control plane serves its metrics: the version it runs,
// and its requests by destination Service, with unknown hosts under "unknown".
func TestProxyMetrics(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	const ns = "telemetry"
	app(ctx, t, ns, map[string][]*harness.Backend{"web": {backend(t, "web")}})
	if _, err := env.proxy.WaitForConfig(ctx, func(s *api.Snapshot) bool {
		p := harness.FindPort(s, ns, "web", 80)
		return p != nil && len(harness.Backends(p)) == 1 && len(harness.Backends(p)[0].GetEndpoints()) == 1
	}); err != nil {
		t.Fatal(err)
	}
	unknown := map[string]string{"direction": "outbound", "dst_service": "unknown", "dst_port": "unknown", "route": "none", "dst_identity": "none",
		"code_class": "4xx", "status_code": "404", "result": "proxy_error"}
	before := scrape(ctx, t)
	unknownBefore, _ := before.Value("braid_proxy_requests_total", unknown)

	const n, m = 6, 3
	for range n {
		if res, err := env.proxy.Get(ctx, "web."+ns); err != nil || res.Status != http.StatusOK {
			t.Fatalf("web.%s: %+v %v, want 200", ns, res, err)
		}
	}
	for range m {
		if res, err := env.proxy.Get(ctx, "nothing-here."+ns); err != nil || res.Status != http.StatusNotFound {
			t.Fatalf("nothing-here.%s: %+v %v, want 404", ns, res, err)
		}
	}

	web := map[string]string{"direction": "outbound", "dst_service": ns + "/web", "dst_port": "80", "route": "0", "dst_identity": "unmeshed",
		"code_class": "2xx", "status_code": "200", "result": "success"}
	waitSample(ctx, t, "braid_proxy_requests_total", web, func(v float64) bool { return v == n })
	waitSample(ctx, t, "braid_proxy_requests_total", unknown, func(v float64) bool { return v-unknownBefore == m })

	// The version gauge is the version /config shows.
	first, err := env.proxy.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	gauge, _ := scrape(ctx, t).Value("braid_proxy_config_version", map[string]string{})
	last, err := env.proxy.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if gauge < float64(first.GetVersion()) || gauge > float64(last.GetVersion()) || gauge == 0 {
		t.Errorf("braid_proxy_config_version = %v, want the version on /config (%d…%d)", gauge, first.GetVersion(), last.GetVersion())
	}
}

// waitSample waits until the shared proxy's sample name with labels satisfies ok.
func waitSample(ctx context.Context, t *testing.T, name string, labels map[string]string, ok func(float64) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		v, _ := scrape(ctx, t).Value(name, labels)
		if ok(v) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s%v is still %v", name, labels, v)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func scrape(ctx context.Context, t *testing.T) harness.Samples {
	t.Helper()
	s, err := env.proxy.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
