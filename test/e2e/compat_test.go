package e2e

import (
	"context"
	"encoding/json"
	"math"
	"reflect"
	"testing"
	"time"

	splitv1alpha1 "github.com/servicemeshinterface/smi-sdk-go/pkg/apis/split/v1alpha1"
	splitv1alpha2 "github.com/servicemeshinterface/smi-sdk-go/pkg/apis/split/v1alpha2"
	splitv1alpha3 "github.com/servicemeshinterface/smi-sdk-go/pkg/apis/split/v1alpha3"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/braidmesh/braid/internal/mesh"
	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/test/harness"
)

// tolerance is how far a measured share may be from its weight. The proxy splits every
// run of requests within a few requests of the weights (router.Port.Pick), so 1 point
// over 1000 requests is ample.
const tolerance = 0.01

// toolClient is a client like Flagger's and Argo Rollouts': the smi-sdk-go types, typed.
func toolClient(t *testing.T) client.Client {
	t.Helper()
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{splitv1alpha1.AddToScheme, splitv1alpha2.AddToScheme, splitv1alpha3.AddToScheme} {
		if err := add(s); err != nil {
			t.Fatal(err)
		}
	}
	c, err := client.New(env.cp.RestConfig, client.Options{Scheme: s})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// smiVersion builds and reweights a TrafficSplit with one SDK version's own Go type.
type smiVersion struct {
	name       string
	build      func(ns, name, root string, backends []string, weights []int) client.Object
	setWeights func(obj client.Object, weights []int)
	spec       func(obj client.Object) any
}

var smiVersions = []smiVersion{
	{
		name: "v1alpha1",
		build: func(ns, name, root string, backends []string, weights []int) client.Object {
			ts := &splitv1alpha1.TrafficSplit{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: splitv1alpha1.TrafficSplitSpec{Service: root}}
			for i, b := range backends {
				ts.Spec.Backends = append(ts.Spec.Backends, splitv1alpha1.TrafficSplitBackend{Service: b, Weight: resource.NewQuantity(int64(weights[i]), resource.DecimalSI)})
			}
			return ts
		},
		setWeights: func(obj client.Object, weights []int) {
			for i := range obj.(*splitv1alpha1.TrafficSplit).Spec.Backends {
				obj.(*splitv1alpha1.TrafficSplit).Spec.Backends[i].Weight = resource.NewQuantity(int64(weights[i]), resource.DecimalSI)
			}
		},
		spec: func(obj client.Object) any { return obj.(*splitv1alpha1.TrafficSplit).Spec },
	},
	{
		name: "v1alpha2",
		build: func(ns, name, root string, backends []string, weights []int) client.Object {
			ts := &splitv1alpha2.TrafficSplit{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: splitv1alpha2.TrafficSplitSpec{Service: root}}
			for i, b := range backends {
				ts.Spec.Backends = append(ts.Spec.Backends, splitv1alpha2.TrafficSplitBackend{Service: b, Weight: weights[i]})
			}
			return ts
		},
		setWeights: func(obj client.Object, weights []int) {
			for i := range obj.(*splitv1alpha2.TrafficSplit).Spec.Backends {
				obj.(*splitv1alpha2.TrafficSplit).Spec.Backends[i].Weight = weights[i]
			}
		},
		spec: func(obj client.Object) any { return obj.(*splitv1alpha2.TrafficSplit).Spec },
	},
	{
		name: "v1alpha3",
		build: func(ns, name, root string, backends []string, weights []int) client.Object {
			ts := &splitv1alpha3.TrafficSplit{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: splitv1alpha3.TrafficSplitSpec{Service: root}}
			for i, b := range backends {
				ts.Spec.Backends = append(ts.Spec.Backends, splitv1alpha3.TrafficSplitBackend{Service: b, Weight: weights[i]})
			}
			return ts
		},
		setWeights: func(obj client.Object, weights []int) {
			for i := range obj.(*splitv1alpha3.TrafficSplit).Spec.Backends {
				obj.(*splitv1alpha3.TrafficSplit).Spec.Backends[i].Weight = weights[i]
			}
		},
		spec: func(obj client.Object) any { return obj.(*splitv1alpha3.TrafficSplit).Spec },
	},
}

// TestFlagger drives a canary the way Flagger does (pkg/router/smi*.go): one split named
// after the apex, backends canary then primary, created and then changed with a full Get
// and Update, with the apex Service selecting the primary's pods. Its linkerd provider
// writes v1alpha1 (string weights), osm v1alpha2, smi:v1alpha3 v1alpha3.
func TestFlagger(t *testing.T) {
	for _, v := range smiVersions {
		t.Run(v.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			ns := "flagger-" + v.name
			primary, canary := backend(t, "primary"), backend(t, "canary")
			app(ctx, t, ns, map[string][]*harness.Backend{"podinfo": {primary}, "podinfo-primary": {primary}, "podinfo-canary": {canary}})
			tool := toolClient(t)
			backends := []string{"podinfo-canary", "podinfo-primary"}
			split := v.build(ns, "podinfo", "podinfo", backends, []int{0, 100})
			if err := tool.Create(ctx, split); err != nil {
				t.Fatal(err)
			}
			host := "podinfo." + ns
			for i, step := range [][]int{{0, 100}, {10, 90}, {50, 50}, {0, 100}} {
				if i > 0 {
					flaggerUpdate(ctx, t, tool, v, split, step)
				}
				waitShares(ctx, t, ns, "podinfo", map[string]int64{"podinfo-canary": int64(step[0]), "podinfo-primary": int64(step[1])})
				counts := spread(ctx, t, host, 1000)
				t.Logf("canary %d / primary %d: %s", step[0], step[1], harness.FormatCounts(counts))
				if got := harness.Share(counts, "canary"); math.Abs(got-float64(step[0])/100) > tolerance || counts["canary"]+counts["primary"] != 1000 {
					t.Fatalf("canary weight %d: want its share within %.0f%% over 1000 answered requests, got %s", step[0], 100*tolerance, harness.FormatCounts(counts))
				}
				if step[0] == 50 {
					// Calls to a backend Service directly are not split.
					if direct := spread(ctx, t, "podinfo-canary."+ns, 200); direct["canary"] != 200 {
						t.Fatalf("direct calls to podinfo-canary must all reach the canary, got %s", harness.FormatCounts(direct))
					}
				}
			}
			// Flagger diffs the spec (weights aside) and re-updates on any difference: the
			// spec must read back exactly as written, and only Flagger's writes moved it.
			got := v.build(ns, "", "", nil, nil)
			if err := tool.Get(ctx, client.ObjectKeyFromObject(split), got); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(v.spec(got), v.spec(split)) {
				t.Fatalf("spec changed behind Flagger's back:\nwrote %+v\nread  %+v", v.spec(split), v.spec(got))
			}
			if got.GetGeneration() != 4 {
				t.Fatalf("generation %d after Flagger's create and 3 updates: something else wrote the spec", got.GetGeneration())
			}
			expectAccepted(ctx, t, client.ObjectKeyFromObject(split), metav1.ConditionTrue, mesh.ReasonAccepted)
		})
	}
}

func flaggerUpdate(ctx context.Context, t *testing.T, tool client.Client, v smiVersion, split client.Object, weights []int) {
	t.Helper()
	// A conflict with Braid's status writes makes Flagger try again (on its next tick).
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := tool.Get(ctx, client.ObjectKeyFromObject(split), split); err != nil {
			return err
		}
		v.setWeights(split, weights)
		return tool.Update(ctx, split)
	}); err != nil {
		t.Fatalf("Flagger's update to %v: %v", weights, err)
	}
}

// TestArgoRollouts drives a canary the way Argo Rollouts does
// (rollout/trafficrouting/smi/smi.go): without a rootService the stable Service is the
// apex and also a backend; the split is named after the Rollout and owned by it; weights
// change through a JSON merge patch of spec; on promotion the stable Service's selector
// moves to the new pods.
func TestArgoRollouts(t *testing.T) {
	for _, v := range smiVersions {
		t.Run(v.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			ns := "argo-" + v.name
			stable, canary := backend(t, "stable-pods"), backend(t, "canary-pods")
			app(ctx, t, ns, map[string][]*harness.Backend{"reviews": {stable}, "reviews-canary": {canary}})
			tool := toolClient(t)
			split := v.build(ns, "reviews-rollout", "reviews", []string{"reviews-canary", "reviews"}, []int{0, 100})
			split.SetOwnerReferences([]metav1.OwnerReference{{
				APIVersion: "argoproj.io/v1alpha1", Kind: "Rollout", Name: "reviews-rollout",
				UID: types.UID("9f5b1c1e-5d55-4b8a-9b0c-0c5f8a6c3d21"), Controller: ptrTo(true), BlockOwnerDeletion: ptrTo(true),
			}})
			if err := tool.Create(ctx, split); err != nil {
				t.Fatal(err)
			}
			host := "reviews." + ns
			for _, w := range []int{0, 20, 60} {
				if w > 0 {
					argoPatch(ctx, t, tool, v, split, []int{w, 100 - w})
				}
				waitShares(ctx, t, ns, "reviews", map[string]int64{"reviews-canary": int64(w), "reviews": int64(100 - w)})
				counts := spread(ctx, t, host, 1000)
				t.Logf("canary %d / stable %d: %s", w, 100-w, harness.FormatCounts(counts))
				if got := harness.Share(counts, "canary-pods"); math.Abs(got-float64(w)/100) > tolerance || counts["canary-pods"]+counts["stable-pods"] != 1000 {
					t.Fatalf("canary weight %d: want its share within %.0f%% over 1000 answered requests, got %s", w, 100*tolerance, harness.FormatCounts(counts))
				}
			}
			// Promotion: the stable Service now selects the new pods, and all weight
			// returns to stable.
			setEndpoints(ctx, t, ns, "reviews", canary)
			argoPatch(ctx, t, tool, v, split, []int{0, 100})
			waitShares(ctx, t, ns, "reviews", map[string]int64{"reviews-canary": 0, "reviews": 100})
			if _, err := env.proxy.WaitForConfig(ctx, func(s *api.Snapshot) bool {
				for _, b := range harness.Backends(harness.FindPort(s, ns, "reviews", 80)) {
					if b.GetService() == "reviews" {
						return len(b.GetEndpoints()) == 1 && b.GetEndpoints()[0].GetPort() == uint32(canary.Addr.Port())
					}
				}
				return false
			}); err != nil {
				t.Fatal(err)
			}
			if counts := spread(ctx, t, host, 300); counts["canary-pods"] != 300 {
				t.Fatalf("after promotion every request must reach the promoted pods, got %s", harness.FormatCounts(counts))
			}
			expectAccepted(ctx, t, client.ObjectKeyFromObject(split), metav1.ConditionTrue, mesh.ReasonAccepted)
		})
	}
}

// argoPatch writes the weights as Argo Rollouts does: a JSON merge patch of spec built
// from the SDK type, in the split's own version.
func argoPatch(ctx context.Context, t *testing.T, tool client.Client, v smiVersion, split client.Object, weights []int) {
	t.Helper()
	desired := v.build(split.GetNamespace(), split.GetName(), "reviews", []string{"reviews-canary", "reviews"}, weights)
	body, err := json.Marshal(map[string]any{"spec": v.spec(desired)})
	if err != nil {
		t.Fatal(err)
	}
	if err := tool.Patch(ctx, split, client.RawPatch(types.MergePatchType, body)); err != nil {
		t.Fatalf("Argo Rollouts' patch to %v (%s): %v", weights, body, err)
	}
}

func ptrTo[T any](v T) *T { return &v }
