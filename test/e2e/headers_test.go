package e2e

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/braidmesh/braid/controllers"
	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/test/harness"
)

// headerBackend answers its name and the X-Env header it received, and sets X-Internal.
func headerBackend(t *testing.T, ip, name string) netip.AddrPort {
	t.Helper()
	lis, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Internal", "secret")
		_, _ = io.WriteString(w, name+" env="+r.Header.Get("X-Env"))
	})}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { _ = srv.Close() })
	return netip.MustParseAddrPort(lis.Addr().String())
}

// GAMMA RequestHeaderModifier and ResponseHeaderModifier through a real proxy, as Flagger
// writes them for session affinity: the rule sets a request header and removes an answer's,
// and the canary's backendRef adds a cookie to the canary's answers only.
func TestGAMMAHeaderFilters(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ns := "gamma-headers"
	create(ctx, t, env.cp.Client, harness.Namespace(ns))
	for name, ip := range map[string]string{"web": harness.MeshAddr(34), "web-canary": harness.MeshAddr(35)} {
		addr := headerBackend(t, ip, name)
		create(ctx, t, env.cp.Client, harness.Service(ns, name, 80))
		for _, s := range harness.EndpointSlices(ns, name, addr) {
			create(ctx, t, env.cp.Client, s)
		}
	}
	canary := harness.BackendRef("web-canary", 80, 100)
	canary.Filters = []gatewayv1.HTTPRouteFilter{{
		Type: gatewayv1.HTTPRouteFilterResponseHeaderModifier,
		ResponseHeaderModifier: &gatewayv1.HTTPHeaderFilter{
			Add: []gatewayv1.HTTPHeader{{Name: "Set-Cookie", Value: "flagger-cookie=canary; Max-Age=21600"}},
		},
	}}
	rule := harness.Rule(nil, harness.BackendRef("web", 80, 0), canary)
	rule.Filters = []gatewayv1.HTTPRouteFilter{
		{Type: gatewayv1.HTTPRouteFilterRequestHeaderModifier, RequestHeaderModifier: &gatewayv1.HTTPHeaderFilter{
			Set: []gatewayv1.HTTPHeader{{Name: "X-Env", Value: "prod"}},
		}},
		{Type: gatewayv1.HTTPRouteFilterResponseHeaderModifier, ResponseHeaderModifier: &gatewayv1.HTTPHeaderFilter{
			Remove: []string{"X-Internal"},
		}},
	}
	parent := harness.ServiceParentRef("web")
	route := harness.HTTPRoute(ns, "web", []gatewayv1.ParentReference{parent}, rule)
	create(ctx, t, env.cp.Client, route)
	flaggerRoutesReady(ctx, t, client.ObjectKeyFromObject(route))
	st, err := harness.WaitForRouteParent(ctx, env.cp.Client, client.ObjectKeyFromObject(route), controllers.ControllerName, parent)
	if err != nil {
		t.Fatal(err)
	}
	if c := harness.RouteCondition(st, gatewayv1.RouteConditionAccepted); c == nil || strings.Contains(c.Message, "not supported") {
		t.Errorf("Accepted must not report the header filters as unsupported: %+v", c)
	}
	if _, err := env.proxy.WaitForConfig(ctx, func(s *api.Snapshot) bool {
		p := harness.FindPort(s, ns, "web", 80)
		return p != nil && len(p.GetRoutes()) == 1 && p.GetRoutes()[0].GetRequestHeaders() != nil
	}); err != nil {
		t.Fatal(err)
	}

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+env.proxy.OutboundAddr+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "web." + ns
	req.Header.Set("X-Env", "from the client")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if string(body) != "web-canary env=prod" {
		t.Errorf("answer %q: want the canary, which saw X-Env set by the rule", body)
	}
	if resp.Header.Get("X-Internal") != "" {
		t.Error("X-Internal reached the client: the rule removes it")
	}
	if got := resp.Header.Get("Set-Cookie"); got != "flagger-cookie=canary; Max-Age=21600" {
		t.Errorf("Set-Cookie = %q, want the canary backendRef's cookie", got)
	}
}
