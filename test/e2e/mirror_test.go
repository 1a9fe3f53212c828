package e2e

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/test/harness"
)

// countingBackend answers "shadow" and counts the requests it gets, on its own address of
// the isolated network.
func countingBackend(t *testing.T, ip string) (netip.AddrPort, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	lis, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		n.Add(1)
		_, _ = io.WriteString(w, "shadow")
	})}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { _ = srv.Close() })
	return netip.MustParseAddrPort(lis.Addr().String()), &n
}

// GAMMA RequestMirror: every answer comes from the route's backend, while the mirror gets
// a copy of every request.
func TestGAMMARequestMirror(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ns := "gamma-mirror"
	v1 := backend(t, "v1")
	app(ctx, t, ns, map[string][]*harness.Backend{"echo": {v1}, "echo-v1": {v1}})
	shadowAddr, hits := countingBackend(t, harness.MeshAddr(33))
	create(ctx, t, env.cp.Client, harness.Service(ns, "echo-shadow", 80))
	for _, s := range harness.EndpointSlices(ns, "echo-shadow", shadowAddr) {
		create(ctx, t, env.cp.Client, s)
	}
	rule := harness.Rule(nil, harness.BackendRef("echo-v1", 80, 1))
	rule.Filters = []gatewayv1.HTTPRouteFilter{{
		Type:          gatewayv1.HTTPRouteFilterRequestMirror,
		RequestMirror: &gatewayv1.HTTPRequestMirrorFilter{BackendRef: gatewayv1.BackendObjectReference{Name: "echo-shadow", Port: ptrPort(80)}},
	}}
	route := harness.HTTPRoute(ns, "echo", []gatewayv1.ParentReference{harness.ServiceParentRef("echo")}, rule)
	create(ctx, t, env.cp.Client, route)
	flaggerRoutesReady(ctx, t, client.ObjectKeyFromObject(route))
	if _, err := env.proxy.WaitForConfig(ctx, func(s *api.Snapshot) bool {
		p := harness.FindPort(s, ns, "echo", 80)
		return p != nil && len(p.GetRoutes()) == 1 && len(p.GetRoutes()[0].GetMirrors()) == 1 &&
			len(p.GetRoutes()[0].GetMirrors()[0].GetBackend().GetEndpoints()) == 1
	}); err != nil {
		t.Fatal(err)
	}
	counts := spread(ctx, t, "echo."+ns, 100)
	if counts["v1"] != 100 {
		t.Fatalf("answers must all come from the route's backend, got %s", harness.FormatCounts(counts))
	}
	deadline := time.Now().Add(10 * time.Second)
	for hits.Load() < 100 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := hits.Load(); got != 100 {
		t.Errorf("the mirror got %d copies of 100 requests", got)
	}
}

func ptrPort(p gatewayv1.PortNumber) *gatewayv1.PortNumber { return &p }
