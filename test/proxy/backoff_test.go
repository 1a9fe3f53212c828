package proxy

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// statusBackend answers every request with status, and counts them in n.
func statusBackend(t *testing.T, status int, n *atomic.Int64) netip.AddrPort {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		n.Add(1)
		w.WriteHeader(status)
	})}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { _ = srv.Close() })
	return netip.MustParseAddrPort(lis.Addr().String())
}

// A retry backoff from the config file. With a small base, failed requests are retried
// after their pause and succeed on the other endpoint. With a base far longer than the
// route's timeout, the proxy does not retry at all, since the pause would end after the
// timeout (the chance of a draw below 0.5 s out of a day is 6 in a million): each request
// gets its endpoint's own 503, after one attempt. Without the backoff, it would be tried
// on the other endpoint too.
func TestStandaloneRetryBackoff(t *testing.T) {
	ctx := t.Context()
	var failures, successes atomic.Int64
	failing, healthy := statusBackend(t, http.StatusServiceUnavailable, &failures), statusBackend(t, http.StatusOK, &successes)
	const policy = "retry: {retries: 1, retryOn: [503], backoffBase: %s}\noutlierDetection: {consecutiveFailures: 0}"
	p, _ := standalone(t, webConfig(fmt.Sprintf(policy, "0.002s"), failing, healthy))
	for i := range 20 {
		if res := get(ctx, t, p, "web.shop"); res.Status != http.StatusOK {
			t.Fatalf("request %d: HTTP %d %q, want every request retried onto the healthy endpoint", i, res.Status, res.Body)
		}
	}
	if failures.Load() == 0 {
		t.Fatal("the failing endpoint got no request: the test proves nothing")
	}

	var attempts atomic.Int64
	a, b := statusBackend(t, http.StatusServiceUnavailable, &attempts), statusBackend(t, http.StatusServiceUnavailable, &attempts)
	p, _ = standalone(t, webConfig("timeout: 0.5s\n"+fmt.Sprintf(policy, "86400s"), a, b))
	for i := range 10 {
		if res := get(ctx, t, p, "web.shop"); res.Status != http.StatusServiceUnavailable || res.Body != "" {
			t.Fatalf("request %d: HTTP %d %q, want the endpoint's own 503", i, res.Status, res.Body)
		}
	}
	if n := attempts.Load(); n != 10 {
		t.Errorf("10 requests made %d attempts, want 10: no retry whose pause would pass the timeout", n)
	}
	metric(ctx, t, p, "braid_proxy_requests_total", map[string]string{"direction": "outbound", "dst_service": "shop/web", "dst_port": "80",
		"route": "0", "dst_identity": "unmeshed", "code_class": "5xx", "status_code": "503", "result": "failure"}, 10)
}
