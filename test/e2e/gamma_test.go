package e2e

import (
	"context"
	"math"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/braidmesh/braid/controllers"
	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/test/harness"
)

// TestGAMMAWeightedBackends is Gateway API's MeshHTTPRouteWeight: a producer HTTPRoute
// on echo sends 70% to echo-v1 and 30% to echo-v2.
func TestGAMMAWeightedBackends(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ns := "gamma-weight"
	v1, v2 := backend(t, "v1"), backend(t, "v2")
	app(ctx, t, ns, map[string][]*harness.Backend{"echo": {v1, v2}, "echo-v1": {v1}, "echo-v2": {v2}})
	route := harness.HTTPRoute(ns, "echo", []gatewayv1.ParentReference{harness.ServiceParentRef("echo")},
		harness.Rule(nil, harness.BackendRef("echo-v1", 80, 70), harness.BackendRef("echo-v2", 80, 30)))
	create(ctx, t, env.cp.Client, route)
	flaggerRoutesReady(ctx, t, client.ObjectKeyFromObject(route))
	waitShares(ctx, t, ns, "echo", map[string]int64{"echo-v1": 70, "echo-v2": 30})

	counts := spread(ctx, t, "echo."+ns, 1000)
	t.Logf("70/30 over 1000 requests: %s", harness.FormatCounts(counts))
	if share := harness.Share(counts, "v1"); math.Abs(share-0.70) > tolerance || counts["v1"]+counts["v2"] != 1000 {
		t.Fatalf("want v1 at 70%% ± %.0f point of 1000 answered requests, got %s", 100*tolerance, harness.FormatCounts(counts))
	}
}

// TestGAMMAPathMatches is Gateway API's MeshTrafficSplit: /v1 goes to echo-v1 and /v2 to
// echo-v2. With a route attached, a request that no rule matches is refused (404) rather
// than sent to the Service's own endpoints.
func TestGAMMAPathMatches(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ns := "gamma-paths"
	v1, v2 := backend(t, "v1"), backend(t, "v2")
	app(ctx, t, ns, map[string][]*harness.Backend{"echo": {v1, v2}, "echo-v1": {v1}, "echo-v2": {v2}})
	route := harness.HTTPRoute(ns, "echo", []gatewayv1.ParentReference{harness.ServiceParentRef("echo")},
		harness.Rule([]gatewayv1.HTTPRouteMatch{harness.PathPrefix("/v1")}, harness.BackendRef("echo-v1", 80, 1)),
		harness.Rule([]gatewayv1.HTTPRouteMatch{harness.PathPrefix("/v2")}, harness.BackendRef("echo-v2", 80, 1)))
	create(ctx, t, env.cp.Client, route)
	flaggerRoutesReady(ctx, t, client.ObjectKeyFromObject(route))
	if _, err := env.proxy.WaitForConfig(ctx, func(s *api.Snapshot) bool {
		return len(harness.FindPort(s, ns, "echo", 80).GetRoutes()) == 2
	}); err != nil {
		t.Fatal(err)
	}

	host := "echo." + ns
	for path, want := range map[string]string{"/v1": "v1", "/v1/users?id=7": "v1", "/v2": "v2", "/v2/": "v2"} {
		for range 20 {
			res, err := env.proxy.Request(ctx, host, path, nil)
			if err != nil {
				t.Fatal(err)
			}
			if res.Status != http.StatusOK || res.Body != want {
				t.Fatalf("GET %s: want %s, got %d %q", path, want, res.Status, res.Body)
			}
		}
	}
	for _, path := range []string{"/", "/v3", "/v10"} {
		res, err := env.proxy.Request(ctx, host, path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if res.Status != http.StatusNotFound || !strings.HasPrefix(res.Body, "braid-proxy:") {
			t.Errorf("GET %s matches no rule: want the proxy's 404, got %d %q", path, res.Status, res.Body)
		}
	}

	// Without the route, the Service routes to its own endpoints again.
	if err := env.cp.Client.Delete(ctx, route); err != nil {
		t.Fatal(err)
	}
	if _, err := env.proxy.WaitForConfig(ctx, func(s *api.Snapshot) bool {
		b := harness.Backends(harness.FindPort(s, ns, "echo", 80))
		return len(b) == 1 && b[0].GetService() == "echo"
	}); err != nil {
		t.Fatal(err)
	}
	if counts := spread(ctx, t, host, 100); counts["v1"]+counts["v2"] != 100 {
		t.Fatalf("after the route is deleted every request must reach the Service, got %s", harness.FormatCounts(counts))
	}
}

// TestGAMMAFlagger drives a canary the way Flagger's gatewayapi:v1 provider does
// (pkg/router/gateway_api.go): an HTTPRoute named after the apex whose parentRef is the
// apex Service, backendRefs primary=100 and canary=0 with a port, then weights changed in
// place with a full Get and Update. Before each step Flagger reads the status entry that
// DeepEquals its parentRef and wants Accepted True at the current generation.
func TestGAMMAFlagger(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ns := "gamma-flagger"
	primary, canary := backend(t, "primary"), backend(t, "canary")
	app(ctx, t, ns, map[string][]*harness.Backend{"podinfo": {primary}, "podinfo-primary": {primary}, "podinfo-canary": {canary}})
	parent := harness.ServiceParentRef("podinfo")
	parent.Port = ptr.To(gatewayv1.PortNumber(80))
	route := harness.HTTPRoute(ns, "podinfo", []gatewayv1.ParentReference{parent},
		harness.Rule(nil, harness.BackendRef("podinfo-primary", 80, 100), harness.BackendRef("podinfo-canary", 80, 0)))
	create(ctx, t, env.cp.Client, route)
	key := client.ObjectKeyFromObject(route)

	for i, step := range [][2]int32{{100, 0}, {90, 10}, {50, 50}} {
		if i > 0 {
			// Flagger reads the route and updates it whole; a conflict with Braid's status
			// writes makes it try again (on its next tick).
			if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
				var cur gatewayv1.HTTPRoute
				if err := env.cp.Client.Get(ctx, key, &cur); err != nil {
					return err
				}
				cur.Spec.Rules[0].BackendRefs[0].Weight = ptr.To(step[0])
				cur.Spec.Rules[0].BackendRefs[1].Weight = ptr.To(step[1])
				return env.cp.Client.Update(ctx, &cur)
			}); err != nil {
				t.Fatalf("Flagger's update to %v: %v", step, err)
			}
		}
		flaggerRoutesReady(ctx, t, key)
		waitShares(ctx, t, ns, "podinfo", map[string]int64{"podinfo-primary": int64(step[0]), "podinfo-canary": int64(step[1])})
		counts := spread(ctx, t, "podinfo."+ns, 1000)
		t.Logf("primary %d / canary %d: %s", step[0], step[1], harness.FormatCounts(counts))
		if got := harness.Share(counts, "canary"); math.Abs(got-float64(step[1])/100) > tolerance || counts["canary"]+counts["primary"] != 1000 {
			t.Fatalf("canary weight %d: want its share within %.0f%% over 1000 answered requests, got %s", step[1], 100*tolerance, harness.FormatCounts(counts))
		}
	}
}

// flaggerRoutesReady waits until the route passes Flagger's gatewayapi GetRoutes check:
// for every parentRef of the spec, a status.parents entry whose parentRef DeepEquals it,
// with Accepted True and an observedGeneration no older than the route's generation.
func flaggerRoutesReady(ctx context.Context, t *testing.T, key types.NamespacedName) {
	t.Helper()
	var why string
	for {
		var hr gatewayv1.HTTPRoute
		if err := env.cp.Client.Get(ctx, key, &hr); err != nil {
			why = err.Error()
		} else if why = flaggerProblem(&hr); why == "" {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("HTTPRoute %s never passed Flagger's check: %s", key, why)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func flaggerProblem(hr *gatewayv1.HTTPRoute) string {
	for _, ref := range hr.Spec.ParentRefs {
		var found *gatewayv1.RouteParentStatus
		for i := range hr.Status.Parents {
			if reflect.DeepEqual(hr.Status.Parents[i].ParentRef, ref) {
				found = &hr.Status.Parents[i]
			}
		}
		if found == nil {
			return "no status entry for parentRef " + string(ref.Name)
		}
		if found.ControllerName != controllers.ControllerName {
			return "the entry is not Braid's: " + string(found.ControllerName)
		}
		c := meta.FindStatusCondition(found.Conditions, string(gatewayv1.RouteConditionAccepted))
		if c == nil || c.Status != metav1.ConditionTrue || c.ObservedGeneration < hr.Generation {
			return "Accepted is not True at the current generation"
		}
	}
	return ""
}
