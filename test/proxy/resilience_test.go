package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// delayedBackend answers every request with its name after delay, and counts them.
func delayedBackend(t *testing.T, name string, delay time.Duration) (netip.AddrPort, *atomic.Int64) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, name)
	})}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { _ = srv.Close() })
	return netip.MustParseAddrPort(lis.Addr().String()), &n
}

// deadEndpoint is a loopback address where nothing listens any more.
func deadEndpoint(t *testing.T) netip.AddrPort {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddrPort(lis.Addr().String())
	_ = lis.Close()
	return addr
}

// webConfig is a config file in which shop/web port 80 has one route, with the extra
// YAML route fields given (indented for the route), to one backend with endpoints.
func webConfig(routeFields string, eps ...netip.AddrPort) string {
	var b strings.Builder
	b.WriteString("version: 1\nservices:\n- namespace: shop\n  name: web\n  ports:\n  - port: 80\n    routes:\n    - backends:\n      - service: web\n        weight: 1\n        endpoints:\n")
	for _, e := range eps {
		fmt.Fprintf(&b, "        - {ip: %s, port: %d}\n", e.Addr(), e.Port())
	}
	for _, line := range strings.Split(strings.TrimSpace(routeFields), "\n") {
		if line != "" {
			b.WriteString("      " + line + "\n")
		}
	}
	return b.String()
}

// A dead endpoint next to a live one, which answers in 20 ms: once the dead one has
// failed five times in a row, the proxy ejects it and sends it nothing more, and no
// request fails meanwhile, since connection failures are retried on the live one.
// Without ejection, the dead endpoint's fast failures would draw a share of the traffic
// every time the live one had a few requests in flight.
func TestStandaloneEjectsADeadEndpoint(t *testing.T) {
	ctx := t.Context()
	live, liveN := delayedBackend(t, "live", 20*time.Millisecond)
	dead := deadEndpoint(t)
	p, _ := standalone(t, webConfig("", live, dead))

	loadCtx, stop := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer stop()
	counts := load(loadCtx, p, "web.shop", 8)
	if counts["live"] != sumCounts(counts) || counts["live"] < 100 {
		t.Fatalf("answers: %v, want at least 100, every one from the live endpoint", counts)
	}
	samples, err := p.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dst := map[string]string{"direction": "outbound", "dst_service": "shop/web", "dst_port": "80"}
	retries, _ := samples.Value("braid_proxy_retries_total", dst)
	skipped, _ := samples.Value("braid_proxy_retries_skipped_total", dst)
	ejections, _ := samples.Value("braid_proxy_endpoint_ejections_total", dst)
	// Every attempt at the dead endpoint failed, and was retried (or would have been).
	if attempts := retries + skipped; attempts < 5 || attempts > 6 {
		t.Errorf("the dead endpoint got %v attempts over %d requests, want the 5 that eject it (6 if two raced)", attempts, liveN.Load())
	}
	if ejections != 1 {
		t.Errorf("braid_proxy_endpoint_ejections_total = %v, want 1", ejections)
	}
}

// A route's timeout, from the config file: the proxy answers 504 naming the route and
// the timeout, and counts it.
func TestStandaloneRouteTimeout(t *testing.T) {
	ctx := t.Context()
	slow, _ := delayedBackend(t, "slow", 5*time.Second)
	p, _ := standalone(t, webConfig("name: web-slow\ntimeout: 0.100s", slow))
	start := time.Now()
	res := get(ctx, t, p, "web.shop")
	if res.Status != http.StatusGatewayTimeout || !containsAll(res.Body, "braid-proxy:", "web-slow", "100ms") {
		t.Fatalf("HTTP %d %q, want the proxy's 504 naming route web-slow and its 100ms", res.Status, res.Body)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("the 504 came after %s, want about 100ms", took)
	}
	metric(ctx, t, p, "braid_proxy_timeouts_total",
		map[string]string{"direction": "outbound", "dst_service": "shop/web", "dst_port": "80", "timeout": "request"}, 1)
}

// Per request, the proxy prefers the endpoint that answers faster.
func TestStandaloneBalancesByLatency(t *testing.T) {
	ctx := t.Context()
	slow, slowN := delayedBackend(t, "slow", 50*time.Millisecond)
	fast, fastN := delayedBackend(t, "fast", 0)
	p, _ := standalone(t, webConfig("", slow, fast))
	counts, err := p.Spread(ctx, "web.shop", 400)
	if err != nil {
		t.Fatal(err)
	}
	if counts["slow"]+counts["fast"] != 400 || slowN.Load() > 40 {
		t.Errorf("400 requests: %v (slow got %d, fast %d), want at most 10%% on the slow endpoint", counts, slowN.Load(), fastN.Load())
	}
}
