package e2e

import (
	"context"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"

	"github.com/braidmesh/braid/internal/mesh"
	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/test/harness"
)

const ns = "reviews"

var splitKey = types.NamespacedName{Namespace: ns, Name: "reviews"}

type world struct {
	v1, v2 *harness.Backend
}

func start(ctx context.Context, t *testing.T) *world {
	t.Helper()
	w := &world{v1: backend(t, "v1"), v2: backend(t, "v2")}
	app(ctx, t, ns, map[string][]*harness.Backend{"reviews": {w.v1, w.v2}, "reviews-v1": {w.v1}, "reviews-v2": {w.v2}})
	return w
}

func TestTrafficSplitEndToEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	w := start(ctx, t)

	t.Run("no split reaches every endpoint of the root", func(t *testing.T) { noSplit(ctx, t) })
	split := harness.TrafficSplit("split.smi-spec.io/v1alpha2", ns, "reviews", "reviews",
		harness.Weighted{Service: "reviews-v1", Weight: 80}, harness.Weighted{Service: "reviews-v2", Weight: 20})
	create(ctx, t, env.cp.Client, split)
	t.Run("80/20 split", func(t *testing.T) { split8020(ctx, t) })
	t.Run("shift to 0/100", func(t *testing.T) { shiftAll(ctx, t, split) })
	t.Run("all-zero split keeps the last good weights", func(t *testing.T) { allZero(ctx, t, w, split) })
	t.Run("unknown host is refused with a reason", func(t *testing.T) { unknownHost(ctx, t) })
}

// noSplit: without a split the root Service reaches both versions, as kube-proxy would.
func noSplit(ctx context.Context, t *testing.T) {
	if _, err := env.proxy.WaitForConfig(ctx, func(s *api.Snapshot) bool {
		p := harness.FindPort(s, ns, "reviews", 80)
		return p != nil && len(harness.Backends(p)) == 1 && len(harness.Backends(p)[0].GetEndpoints()) == 2
	}); err != nil {
		t.Fatal(err)
	}
	counts := spread(ctx, t, "reviews.reviews", 400)
	if counts["v1"] == 0 || counts["v2"] == 0 || counts["v1"]+counts["v2"] != 400 {
		t.Fatalf("without a split, want both versions to answer all 400 requests, got %s", harness.FormatCounts(counts))
	}
}

func split8020(ctx context.Context, t *testing.T) {
	expectAccepted(ctx, t, splitKey, metav1.ConditionTrue, mesh.ReasonAccepted)
	waitShares(ctx, t, ns, "reviews", map[string]int64{"reviews-v1": 80, "reviews-v2": 20})
	counts := spread(ctx, t, "reviews.reviews.svc.cluster.local:80", 2000)
	share := harness.Share(counts, "v1")
	t.Logf("80/20 over 2000 requests: %s (v1 %.1f%%)", harness.FormatCounts(counts), 100*share)
	if math.Abs(share-0.80) > 0.04 || counts["v1"]+counts["v2"] != 2000 {
		t.Fatalf("want v1 at 80%% ± 4 points of 2000 answered requests, got %s", harness.FormatCounts(counts))
	}
}

func shiftAll(ctx context.Context, t *testing.T, split *unstructured.Unstructured) {
	started := time.Now()
	if err := harness.SetWeights(ctx, env.cp.Client, split,
		harness.Weighted{Service: "reviews-v1", Weight: 0}, harness.Weighted{Service: "reviews-v2", Weight: 100}); err != nil {
		t.Fatal(err)
	}
	waitShares(ctx, t, ns, "reviews", map[string]int64{"reviews-v1": 0, "reviews-v2": 100})
	t.Logf("weight change reached the proxy in %v (from the patch to the proxy's /config showing it)", time.Since(started))
	counts := spread(ctx, t, "reviews.reviews", 500)
	if counts["v2"] != 500 {
		t.Fatalf("after 0/100 every request must reach v2, got %s", harness.FormatCounts(counts))
	}
}

func allZero(ctx context.Context, t *testing.T, w *world, split *unstructured.Unstructured) {
	if err := harness.SetWeights(ctx, env.cp.Client, split,
		harness.Weighted{Service: "reviews-v1", Weight: 0}, harness.Weighted{Service: "reviews-v2", Weight: 0}); err != nil {
		t.Fatal(err)
	}
	cond := expectAccepted(ctx, t, splitKey, metav1.ConditionFalse, mesh.ReasonAllWeightsZero)
	if !strings.Contains(cond.Message, "weight 0") {
		t.Errorf("the condition's message should say why: %q", cond.Message)
	}
	// Force a recompile of the root (a second v2 endpoint appears) and check the
	// recompiled config still carries the last accepted weights, not the zero ones.
	setEndpoints(ctx, t, ns, "reviews-v2", w.v2, backend(t, "v2"))
	snap, err := env.proxy.WaitForConfig(ctx, func(s *api.Snapshot) bool {
		p := harness.FindPort(s, ns, "reviews", 80)
		return p != nil && len(harness.Backends(p)) == 2 && len(harness.Backends(p)[1].GetEndpoints()) == 2
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := harness.Weights(snap, ns, "reviews", 80); got["reviews-v1"] != 0 || got["reviews-v2"] == 0 {
		t.Fatalf("an all-zero split must not reach proxies; weights now %v", got)
	}
	counts := spread(ctx, t, "reviews.reviews", 300)
	if counts["v2"] != 300 {
		t.Fatalf("want every request on v2 as before the all-zero update, got %s", harness.FormatCounts(counts))
	}
}

func unknownHost(ctx context.Context, t *testing.T) {
	for host, want := range map[string]string{"ratings.reviews:80": "reviews/ratings", "example.com": "example.com", "reviews.reviews:8080": "no port 8080"} {
		res, err := env.proxy.Get(ctx, host)
		if err != nil {
			t.Fatal(err)
		}
		if res.Status != http.StatusNotFound || !strings.Contains(res.Body, want) {
			t.Errorf("host %s: want 404 mentioning %q, got %d %q", host, want, res.Status, res.Body)
		}
	}
}
