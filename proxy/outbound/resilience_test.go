package outbound_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/proxy/outbound"
	"github.com/braidmesh/braid/proxy/router"
	"github.com/braidmesh/braid/proxy/telemetry"
)

// countingBackend serves handler on loopback and counts the requests it gets.
func countingBackend(t *testing.T, handler http.HandlerFunc) (netip.AddrPort, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		handler(w, r)
	}))
	t.Cleanup(srv.Close)
	return netip.MustParseAddrPort(srv.Listener.Addr().String()), &n
}

func answer(name string, status int, delay time.Duration) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, name)
	}
}

// resettingEndpoint accepts connections, reads what the client sends first, and resets
// them; it counts the connections.
func resettingEndpoint(t *testing.T) (netip.AddrPort, *atomic.Int64) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lis.Close() })
	var n atomic.Int64
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			go func() {
				buf := make([]byte, 4096)
				_ = c.SetReadDeadline(time.Now().Add(time.Second))
				_, _ = c.Read(buf)
				_ = c.(*net.TCPConn).SetLinger(0)
				_ = c.Close()
			}()
		}
	}()
	return netip.MustParseAddrPort(lis.Addr().String()), &n
}

// routeTo is shop/web port 80 with one route, configured by route, to one backend.
func routeTo(route *api.Route, eps ...netip.AddrPort) *api.Service {
	b := &api.Backend{Service: "web", Weight: 1}
	for _, e := range eps {
		b.Endpoints = append(b.Endpoints, endpoint(e))
	}
	route.Backends = []*api.Backend{b}
	return &api.Service{Namespace: "shop", Name: "web", Ports: []*api.ServicePort{{Port: 80, Routes: []*api.Route{route}}}}
}

// proxyFor serves a Handler for the services on loopback, with metrics.
func proxyFor(t *testing.T, services ...*api.Service) (string, *telemetry.Metrics) {
	t.Helper()
	var table atomic.Pointer[router.Table]
	table.Store(build(t, services...))
	m := telemetry.New()
	srv := httptest.NewServer(outbound.New(testr.New(t), &table, m))
	t.Cleanup(srv.Close)
	return srv.URL, m
}

// send sends n requests through the proxy from workers concurrent clients and counts the
// answers by status and body.
func send(t *testing.T, proxyURL, method, body string, n, workers int) map[string]int {
	t.Helper()
	var (
		mu     sync.Mutex
		counts = map[string]int{}
		wg     sync.WaitGroup
		next   = make(chan struct{}, n)
	)
	for range n {
		next <- struct{}{}
	}
	close(next)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers}, Timeout: 10 * time.Second}
	t.Cleanup(client.CloseIdleConnections)
	for range workers {
		wg.Go(func() {
			for range next {
				var rd io.Reader
				if body != "" {
					rd = strings.NewReader(body)
				}
				req, _ := http.NewRequestWithContext(context.Background(), method, proxyURL+"/", rd)
				req.Host = "web.shop"
				key := ""
				resp, err := client.Do(req)
				if err != nil {
					key = "error"
				} else {
					b, _ := io.ReadAll(resp.Body)
					_ = resp.Body.Close()
					key = http.StatusText(resp.StatusCode) + " " + strings.TrimSpace(string(b))
				}
				mu.Lock()
				counts[key]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return counts
}

func u32(v uint32) *uint32 { return &v }

// With one endpoint that takes 50 ms and one that answers at once, nearly every request
// goes to the fast one: uniform random picks would send it half.
func TestBalancerPrefersTheFastEndpoint(t *testing.T) {
	slow, slowN := countingBackend(t, answer("slow", http.StatusOK, 50*time.Millisecond))
	fast, fastN := countingBackend(t, answer("fast", http.StatusOK, 0))
	proxyURL, _ := proxyFor(t, routeTo(&api.Route{}, slow, fast))
	counts := send(t, proxyURL, http.MethodGet, "", 300, 4)
	if counts["OK slow"]+counts["OK fast"] != 300 {
		t.Fatalf("answers: %v, want 300 OKs", counts)
	}
	if s := slowN.Load(); s > 30 {
		t.Errorf("the slow endpoint got %d of 300 requests (the fast one %d), want at most 10%%", s, fastN.Load())
	}
}

// An endpoint that resets every connection next to a healthy one: no GET fails, since
// each is retried on the other endpoint.
func TestRetriesOnAnotherEndpoint(t *testing.T) {
	reset, resets := resettingEndpoint(t)
	healthy, _ := countingBackend(t, answer("healthy", http.StatusOK, 0))
	proxyURL, m := proxyFor(t, routeTo(&api.Route{}, reset, healthy))
	counts := send(t, proxyURL, http.MethodGet, "", 200, 4)
	if counts["OK healthy"] != 200 {
		t.Errorf("answers: %v, want 200 OKs from the healthy endpoint", counts)
	}
	if resets.Load() == 0 {
		t.Error("the resetting endpoint got no request: the test proves nothing")
	}
	if got := counterValue(t, m, "braid_proxy_retries_total"); got != float64(resets.Load()) {
		t.Errorf("braid_proxy_retries_total = %v, want %d (one per reset)", got, resets.Load())
	}

	// Without retries, the same endpoints fail some requests.
	reset2, _ := resettingEndpoint(t)
	proxyURL, _ = proxyFor(t, routeTo(&api.Route{Retry: &api.RetryPolicy{Retries: u32(0)}}, reset2, healthy))
	if counts := send(t, proxyURL, http.MethodGet, "", 200, 4); counts["OK healthy"] == 200 {
		t.Errorf("without retries every request succeeded (%v): the endpoint never reset one", counts)
	}
}

// A POST with a body that reached an endpoint is not retried: the application may have
// acted on it. One that never reached it (connection refused) is, with its body.
func TestPostRetriedOnlyWhenItNeverLeft(t *testing.T) {
	reset, resets := resettingEndpoint(t)
	proxyURL, _ := proxyFor(t, routeTo(&api.Route{Retry: &api.RetryPolicy{Retries: u32(3)}}, reset))
	counts := send(t, proxyURL, http.MethodPost, "order #1", 20, 1)
	for answer, n := range counts {
		if !strings.HasPrefix(answer, "Bad Gateway") {
			t.Errorf("%d answers %q, want 502s", n, answer)
		}
	}
	if n := resets.Load(); n != 20 {
		t.Errorf("20 POSTs with a body reached the endpoint %d times, want 20: no retry after sending", n)
	}

	var body atomic.Value
	healthy, _ := countingBackend(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		body.Store(string(b))
		_, _ = io.WriteString(w, "healthy")
	})
	proxyURL, _ = proxyFor(t, routeTo(&api.Route{OutlierDetection: &api.OutlierDetection{ConsecutiveFailures: u32(0)}}, refusingEndpoint(t), healthy))
	counts = send(t, proxyURL, http.MethodPost, "order #2", 20, 1)
	if counts["OK healthy"] != 20 || body.Load() != "order #2" {
		t.Errorf("POSTs next to a refused endpoint: %v (body %q), want every one answered by the healthy endpoint with its body", counts, body.Load())
	}
}

// Under a backend that fails every request, the budget caps the retries: at most 20%
// of the requests plus the reserve (here 1 per second over 10 s), not 3 per request.
func TestRetryBudgetCapsRetries(t *testing.T) {
	failing, attempts := countingBackend(t, answer("down", http.StatusServiceUnavailable, 0))
	proxyURL, m := proxyFor(t, routeTo(&api.Route{Retry: &api.RetryPolicy{
		Retries: u32(3), RetryOn: []uint32{503}, MinRetriesPerSecond: u32(1),
	}}, failing))
	counts := send(t, proxyURL, http.MethodGet, "", 100, 4)
	if counts["Service Unavailable down"] != 100 {
		t.Errorf("answers: %v, want the application's 100 503s", counts)
	}
	if n := attempts.Load(); n < 110 || n > 130 {
		t.Errorf("100 requests made %d attempts, want 100 + 20%% + a reserve of 10 (unbudgeted: 400)", n)
	}
	if got := counterValue(t, m, "braid_proxy_retries_skipped_total"); got == 0 {
		t.Error("braid_proxy_retries_skipped_total = 0, want the retries the budget refused")
	}
}

func TestRetryOnStatus(t *testing.T) {
	failing, failures := countingBackend(t, answer("down", http.StatusServiceUnavailable, 0))
	healthy, _ := countingBackend(t, answer("healthy", http.StatusOK, 0))
	proxyURL, _ := proxyFor(t, routeTo(&api.Route{
		Retry:            &api.RetryPolicy{RetryOn: []uint32{503}},
		OutlierDetection: &api.OutlierDetection{ConsecutiveFailures: u32(0)},
	}, failing, healthy))
	counts := send(t, proxyURL, http.MethodGet, "", 100, 4)
	if counts["OK healthy"] != 100 || failures.Load() == 0 {
		t.Errorf("answers: %v (the failing endpoint got %d), want 100 OKs", counts, failures.Load())
	}
}

func TestRouteTimeout(t *testing.T) {
	hang, _ := countingBackend(t, answer("late", http.StatusOK, 10*time.Second))
	proxyURL, m := proxyFor(t, routeTo(&api.Route{Name: "web/rules[0]", Timeout: durationpb.New(50 * time.Millisecond)}, hang))
	code, header, body := do(t, proxyURL, http.MethodGet, "/", "web.shop", "")
	checkProxyError(t, code, header, body, http.StatusGatewayTimeout, "web/rules[0]", "50ms", "request timeout")
	if got := counterValue(t, m, "braid_proxy_timeouts_total"); got != 1 {
		t.Errorf("braid_proxy_timeouts_total = %v, want 1", got)
	}

	proxyURL, _ = proxyFor(t, routeTo(&api.Route{BackendRequestTimeout: durationpb.New(50 * time.Millisecond)}, hang))
	code, header, body = do(t, proxyURL, http.MethodGet, "/", "web.shop", "")
	checkProxyError(t, code, header, body, http.StatusGatewayTimeout, "shop/web port 80 route 0", "50ms", "backend request timeout")
}

func TestMaxRequestsPerEndpointAnswers503(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	busy, _ := countingBackend(t, func(w http.ResponseWriter, _ *http.Request) {
		started <- struct{}{}
		<-release
		_, _ = io.WriteString(w, "done")
	})
	proxyURL, _ := proxyFor(t, routeTo(&api.Route{MaxRequestsPerEndpoint: 1}, busy))
	first := make(chan int, 1)
	go func() {
		code, _, _ := do(t, proxyURL, http.MethodGet, "/", "web.shop", "")
		first <- code
	}()
	<-started
	code, header, body := do(t, proxyURL, http.MethodGet, "/", "web.shop", "")
	checkProxyError(t, code, header, body, http.StatusServiceUnavailable, "backend web", "most requests in flight")
	close(release)
	if code := <-first; code != http.StatusOK {
		t.Errorf("the request in flight got %d, want 200", code)
	}
}

// counterValue sums a counter's series in the metrics.
func counterValue(t *testing.T, m *telemetry.Metrics, name string) float64 {
	t.Helper()
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, f := range families {
		if f.GetName() == name {
			for _, s := range f.GetMetric() {
				sum += s.GetCounter().GetValue()
			}
		}
	}
	return sum
}
