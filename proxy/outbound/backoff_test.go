package outbound_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/proxy/outbound"
	"github.com/braidmesh/braid/proxy/router"
)

// pauses records the pauses a handler draws and waits, waiting none of them: jitter
// returns the limit it is given times num/den.
type pauses struct {
	num, den int64
	mu       sync.Mutex
	limits   []time.Duration
	waits    []time.Duration
}

func (p *pauses) jitter(limit time.Duration) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.limits = append(p.limits, limit)
	return limit * time.Duration(p.num) / time.Duration(p.den)
}

func (p *pauses) wait(_ context.Context, d time.Duration) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.waits = append(p.waits, d)
	return nil
}

func (p *pauses) got() (limits, waits []time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.limits), slices.Clone(p.waits)
}

// backoffProxy serves a Handler for route to endpoints that answer 503, each counted in
// attempts, with the handler's pauses drawn by jitter and waited by wait.
func backoffProxy(t *testing.T, route *api.Route, endpoints int, jitter func(time.Duration) time.Duration, wait func(context.Context, time.Duration) error) (string, *atomic.Int64) {
	t.Helper()
	var attempts atomic.Int64
	var eps []netip.AddrPort
	for range endpoints {
		ep, _ := countingBackend(t, func(w http.ResponseWriter, _ *http.Request) {
			attempts.Add(1)
			w.WriteHeader(http.StatusServiceUnavailable)
		})
		eps = append(eps, ep)
	}
	route.OutlierDetection = &api.OutlierDetection{ConsecutiveFailures: u32(0)}
	var table atomic.Pointer[router.Table]
	table.Store(build(t, routeTo(route, eps...)))
	h := outbound.New(testr.New(t), &table, nil)
	outbound.SetBackoff(h, jitter, wait)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL, &attempts
}

func retryOn503(retries uint32, base, maxBackoff time.Duration) *api.RetryPolicy {
	rp := &api.RetryPolicy{Retries: u32(retries), RetryOn: []uint32{503}, BackoffBase: durationpb.New(base)}
	if maxBackoff > 0 {
		rp.BackoffMax = durationpb.New(maxBackoff)
	}
	return rp
}

// Before the n-th retry the proxy draws a pause in [0, min(max, base × 2^(n-1))] and
// waits it: with a draw that always gives the limit, the waits are exactly the limits.
func TestRetryBackoffWaits(t *testing.T) {
	ms := time.Millisecond
	p := &pauses{num: 1, den: 1}
	proxyURL, attempts := backoffProxy(t, &api.Route{Retry: retryOn503(4, 10*ms, 50*ms)}, 5, p.jitter, p.wait)
	if code, _, _ := do(t, proxyURL, http.MethodGet, "/", "web.shop", ""); code != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want the endpoints' 503", code)
	}
	want := []time.Duration{10 * ms, 20 * ms, 40 * ms, 50 * ms}
	if limits, waits := p.got(); !slices.Equal(limits, want) || !slices.Equal(waits, want) {
		t.Errorf("limits %v, waits %v; want both %v", limits, waits, want)
	}
	if n := attempts.Load(); n != 5 {
		t.Errorf("%d attempts, want 5", n)
	}

	// The draw decides the wait: a quarter of each limit; without a max, 10 × the base.
	p = &pauses{num: 1, den: 4}
	proxyURL, _ = backoffProxy(t, &api.Route{Retry: retryOn503(4, 40*ms, 0)}, 5, p.jitter, p.wait)
	do(t, proxyURL, http.MethodGet, "/", "web.shop", "")
	if limits, waits := p.got(); !slices.Equal(limits, []time.Duration{40 * ms, 80 * ms, 160 * ms, 320 * ms}) ||
		!slices.Equal(waits, []time.Duration{10 * ms, 20 * ms, 40 * ms, 80 * ms}) {
		t.Errorf("limits %v, waits %v", limits, waits)
	}

	// A draw of 0 waits nothing; without a base, nothing is drawn.
	p = &pauses{num: 0, den: 1}
	proxyURL, _ = backoffProxy(t, &api.Route{Retry: retryOn503(2, 10*ms, 0)}, 3, p.jitter, p.wait)
	do(t, proxyURL, http.MethodGet, "/", "web.shop", "")
	if limits, waits := p.got(); len(limits) != 2 || len(waits) != 0 {
		t.Errorf("limits %v, waits %v; want two draws and no wait", limits, waits)
	}
	p = &pauses{num: 1, den: 1}
	proxyURL, attempts = backoffProxy(t, &api.Route{Retry: retryOn503(2, 0, 0)}, 3, p.jitter, p.wait)
	do(t, proxyURL, http.MethodGet, "/", "web.shop", "")
	if limits, waits := p.got(); len(limits)+len(waits) != 0 || attempts.Load() != 3 {
		t.Errorf("without a backoff: limits %v, waits %v, %d attempts; want no pause and 3 attempts", limits, waits, attempts.Load())
	}
}

// A pause that would end past the route's timeout is not taken: the request gets the
// answer of its last attempt at once, rather than a 504 later. A pause the timeout
// interrupts ends the request with the route's 504.
func TestRetryBackoffNeverWaitsPastTheRouteTimeout(t *testing.T) {
	p := &pauses{num: 1, den: 1}
	proxyURL, attempts := backoffProxy(t, &api.Route{Timeout: durationpb.New(2 * time.Second), Retry: retryOn503(3, time.Hour, 0)}, 4, p.jitter, p.wait)
	start := time.Now()
	if code, _, _ := do(t, proxyURL, http.MethodGet, "/", "web.shop", ""); code != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want the endpoint's 503", code)
	}
	if limits, waits := p.got(); len(limits) != 1 || len(waits) != 0 || attempts.Load() != 1 {
		t.Errorf("limits %v, waits %v, %d attempts; want one draw (an hour), no wait, one attempt", limits, waits, attempts.Load())
	}
	if took := time.Since(start); took >= 2*time.Second {
		t.Errorf("the answer took %s: the proxy waited for the timeout", took)
	}

	untilDone := func(ctx context.Context, _ time.Duration) error {
		<-ctx.Done()
		return ctx.Err()
	}
	proxyURL, attempts = backoffProxy(t, &api.Route{Name: "web-slow", Timeout: durationpb.New(100 * time.Millisecond),
		Retry: retryOn503(3, 10*time.Millisecond, 0)}, 4, (&pauses{num: 1, den: 1}).jitter, untilDone)
	code, header, body := do(t, proxyURL, http.MethodGet, "/", "web.shop", "")
	checkProxyError(t, code, header, body, http.StatusGatewayTimeout, "web-slow", "100ms")
	if n := attempts.Load(); n != 1 {
		t.Errorf("%d attempts, want 1: the timeout ended the pause before the retry", n)
	}
}

// Through real sockets and the real wait: with a draw that always gives the limit, the
// attempts arrive at the endpoints at least base, 2 × base, 4 × base apart.
func TestRetryBackoffSpacesAttempts(t *testing.T) {
	const base = 40 * time.Millisecond
	var (
		mu       sync.Mutex
		arrivals []time.Time
	)
	var eps []netip.AddrPort
	for range 4 {
		ep, _ := countingBackend(t, func(w http.ResponseWriter, _ *http.Request) {
			mu.Lock()
			arrivals = append(arrivals, time.Now())
			mu.Unlock()
			w.WriteHeader(http.StatusServiceUnavailable)
		})
		eps = append(eps, ep)
	}
	var table atomic.Pointer[router.Table]
	table.Store(build(t, routeTo(&api.Route{Retry: retryOn503(3, base, 0),
		OutlierDetection: &api.OutlierDetection{ConsecutiveFailures: u32(0)}}, eps...)))
	h := outbound.New(testr.New(t), &table, nil)
	outbound.SetBackoff(h, func(limit time.Duration) time.Duration { return limit }, outbound.Wait)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)

	if code, _, _ := do(t, srv.URL, http.MethodGet, "/", "web.shop", ""); code != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 503", code)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(arrivals) != 4 {
		t.Fatalf("%d attempts, want 4", len(arrivals))
	}
	for i := 1; i < len(arrivals); i++ {
		if gap, least := arrivals[i].Sub(arrivals[i-1]), base<<(i-1); gap < least {
			t.Errorf("retry %d came %s after the attempt before it, want at least %s", i, gap, least)
		}
	}
}

// Opaque connections: a failed connection attempt is retried on another endpoint after
// the route's backoff too.
func TestOpaqueConnectRetriesBackOff(t *testing.T) {
	ms := time.Millisecond
	var eps []*api.Endpoint
	for range 3 {
		eps = append(eps, endpoint(refusingEndpoint(t)))
	}
	svc := &api.Service{Namespace: "shop", Name: "db", ClusterIps: []string{"10.96.0.20"}, Ports: []*api.ServicePort{{
		Port: 5432, Protocol: api.Protocol_PROTOCOL_OPAQUE,
		Routes: []*api.Route{{Retry: &api.RetryPolicy{Retries: u32(2), BackoffBase: durationpb.New(20 * ms)},
			OutlierDetection: &api.OutlierDetection{ConsecutiveFailures: u32(0)},
			Backends:         []*api.Backend{{Service: "db", Weight: 1, Endpoints: eps}}}},
	}}}
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var table atomic.Pointer[router.Table]
	table.Store(build(t, svc))
	p := &pauses{num: 1, den: 1}
	lis := outbound.NewListenerWithBackoff(raw, outbound.ListenerConfig{
		Log: testr.New(t), Table: &table,
		OriginalDst: func(*net.TCPConn) (netip.AddrPort, error) { return netip.MustParseAddrPort("10.96.0.20:5432"), nil },
	}, p.jitter, p.wait)
	t.Cleanup(func() { _ = lis.Close() })
	c, err := net.Dial("tcp", raw.Addr().String())
	switch {
	case err == nil:
		defer func() { _ = c.Close() }()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil || isTimeout(err) {
			t.Fatalf("read %d, %v; want the connection closed once every endpoint refused", n, err)
		}
	case !errors.Is(err, syscall.ECONNRESET): // the proxy's reset may come before connect returns
		t.Fatal(err)
	}
	if limits, waits := p.got(); !slices.Equal(waits, []time.Duration{20 * ms, 40 * ms}) || len(limits) != 2 {
		t.Errorf("limits %v, waits %v; want 20ms then 40ms", limits, waits)
	}
}
