package e2e

import (
	"context"
	"net/http"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"

	"github.com/braidmesh/braid/controllers"
	"github.com/braidmesh/braid/internal/mesh"
	"github.com/braidmesh/braid/internal/smi"
	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/test/harness"
)

// TestABByHeader is SMI acceptance scenario 15: a v1alpha4 split whose matches point at an
// HTTPRouteGroup with a Firefox user-agent match, v1=0 and v2=100. Firefox requests go to
// v2; the others follow the root Service. The root selects pods v1 and "stable" here, not
// v2, so that where a request went says which rule sent it there (the balancer is
// latency-aware: within one Service, any of its endpoints may take a burst).
func TestABByHeader(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ns := "abtest"
	v1, v2, stable := backend(t, "v1"), backend(t, "v2"), backend(t, "stable")
	app(ctx, t, ns, map[string][]*harness.Backend{"reviews": {v1, stable}, "reviews-v1": {v1}, "reviews-v2": {v2}})
	// The spec's own map form of headers, which the SDK cannot decode.
	group := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup",
		"metadata": map[string]any{"namespace": ns, "name": "firefox-users"},
		"spec": map[string]any{"matches": []any{map[string]any{
			"name": "firefox", "headers": map[string]any{"user-agent": ".*Firefox.*"},
		}}},
	}}
	split := harness.TrafficSplit("split.smi-spec.io/v1alpha4", ns, "reviews-ab", "reviews",
		harness.Weighted{Service: "reviews-v1", Weight: 0}, harness.Weighted{Service: "reviews-v2", Weight: 100})
	split.Object["spec"].(map[string]any)["matches"] = []any{map[string]any{"kind": "HTTPRouteGroup", "name": "firefox-users"}}
	// The split first, its group later: until the group exists nothing is split.
	create(ctx, t, env.cp.Client, split)
	key := types.NamespacedName{Namespace: ns, Name: "reviews-ab"}
	waitCondition(ctx, t, key, controllers.ConditionResolvedRefs, metav1.ConditionFalse, mesh.ReasonRouteGroupNotFound)
	if counts := abSpread(ctx, t, ns, "Firefox/140.0", 100); counts["v1"]+counts["stable"] != 100 {
		t.Fatalf("without its group the split must not apply; Firefox requests should follow the root, got %s", harness.FormatCounts(counts))
	}

	create(ctx, t, env.cp.Client, group)
	waitCondition(ctx, t, key, controllers.ConditionResolvedRefs, metav1.ConditionTrue, mesh.ReasonResolvedRefs)
	waitGroupAccepted(ctx, t, types.NamespacedName{Namespace: ns, Name: "firefox-users"})
	if _, err := env.proxy.WaitForConfig(ctx, func(s *api.Snapshot) bool {
		return len(harness.FindPort(s, ns, "reviews", 80).GetRoutes()) == 2
	}); err != nil {
		t.Fatal(err)
	}
	if counts := abSpread(ctx, t, ns, "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0", 300); counts["v2"] != 300 {
		t.Fatalf("every Firefox request must reach v2, got %s", harness.FormatCounts(counts))
	}
	if counts := abSpread(ctx, t, ns, "Mozilla/5.0 Chrome/130.0", 300); counts["v1"]+counts["stable"] != 300 {
		t.Fatalf("other requests must follow the root Service (v1 and stable, never v2), got %s", harness.FormatCounts(counts))
	}
}

func abSpread(ctx context.Context, t *testing.T, ns, userAgent string, n int) map[string]int {
	t.Helper()
	counts := map[string]int{}
	for range n {
		res, err := env.proxy.Do(ctx, "reviews."+ns, http.Header{"User-Agent": {userAgent}})
		if err != nil {
			t.Fatal(err)
		}
		counts[res.Body]++
	}
	return counts
}

func waitCondition(ctx context.Context, t *testing.T, key types.NamespacedName, typ string, status metav1.ConditionStatus, reason string) {
	t.Helper()
	for {
		var ts smi.TrafficSplit
		if err := env.cp.Client.Get(ctx, key, &ts); err == nil {
			for _, c := range ts.Status.Conditions {
				if c.Type == typ && c.Status == status && c.Reason == reason && c.ObservedGeneration == ts.Generation {
					return
				}
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s never had %s=%s (%s)", key, typ, status, reason)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func waitGroupAccepted(ctx context.Context, t *testing.T, key types.NamespacedName) {
	t.Helper()
	for {
		var g smi.HTTPRouteGroup
		if err := env.cp.Client.Get(ctx, key, &g); err == nil {
			for _, c := range g.Status.Conditions {
				if c.Type == controllers.ConditionAccepted && c.Status == metav1.ConditionTrue {
					return
				}
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("HTTPRouteGroup %s never became Accepted", key)
		case <-time.After(10 * time.Millisecond):
		}
	}
}
