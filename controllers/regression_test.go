package controllers_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/braidmesh/braid/controllers"
	"github.com/braidmesh/braid/internal/mesh"
	"github.com/braidmesh/braid/internal/smi"
	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/test/harness"
)

// Programmed must not turn True while the only connected proxy has not acknowledged any
// version since the split's root Service was re-created.
func TestProgrammedIsNotTrueFromAStaleCompile(t *testing.T) {
	wrong := 0
	const runs = 4 // the stale state showed in 3 of 8 runs before the fix
	for i := range runs {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			ns := namespace(ctx, t)
			proxy, err := harness.StartAckingProxy(ctx, cp.ConfigAddr, "p", ns)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = proxy.Close() }()
			mustCreate(ctx, t, harness.Service(ns, "web", 80))
			mustCreate(ctx, t, harness.Service(ns, "web-v1", 80))
			split := harness.TrafficSplit("split.smi-spec.io/v1alpha2", ns, "web", "web", harness.Weighted{Service: "web-v1", Weight: 1})
			mustCreate(ctx, t, split)
			key := client.ObjectKeyFromObject(split)
			waitFor(ctx, t, key, controllers.ConditionProgrammed, metav1.ConditionTrue, controllers.ReasonProgrammed)

			if err := cp.Client.Delete(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"}}); err != nil {
				t.Fatal(err)
			}
			waitFor(ctx, t, key, controllers.ConditionProgrammed, metav1.ConditionFalse, controllers.ReasonNotAccepted)
			waitSnapshot(ctx, t, func(s *api.Snapshot) bool { return harness.FindPort(s, ns, "web", 80) == nil })
			time.Sleep(200 * time.Millisecond) // let the proxy ack the removal
			proxy.SetAcking(false)

			mustCreate(ctx, t, harness.Service(ns, "web", 80))
			deadline := time.Now().Add(2 * time.Second)
			for time.Now().Before(deadline) {
				var ts smi.TrafficSplit
				if err := cp.Client.Get(ctx, key, &ts); err == nil {
					if c := findCondition(ts.Status.Conditions, controllers.ConditionProgrammed); c != nil && c.Status == metav1.ConditionTrue {
						t.Logf("WRONG: Programmed=True while the proxy acknowledged nothing since the root came back: %q", c.Message)
						wrong++
						return
					}
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
	if wrong > 0 {
		t.Errorf("Programmed was wrongly True in %d of %d runs", wrong, runs)
	}
}

// A split compiled in its last good form keeps that form's backends, which the current
// spec no longer names: their endpoint changes must still recompile the root.
func TestLastGoodFormFollowsItsBackendsEndpoints(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns := namespace(ctx, t)
	mustCreate(ctx, t, harness.Service(ns, "web", 80))
	mustCreate(ctx, t, harness.Service(ns, "web-v1", 80))
	slice := harness.EndpointSlices(ns, "web-v1", netip.MustParseAddrPort("10.1.0.1:8080"))[0]
	mustCreate(ctx, t, slice)
	split := harness.TrafficSplit("split.smi-spec.io/v1alpha2", ns, "web", "web", harness.Weighted{Service: "web-v1", Weight: 1})
	mustCreate(ctx, t, split)
	ep := func(s *api.Snapshot, svc string) string {
		p := harness.FindPort(s, ns, svc, 80)
		for _, b := range harness.Backends(p) {
			if b.GetService() == "web-v1" && len(b.GetEndpoints()) > 0 {
				return b.GetEndpoints()[0].GetIp()
			}
		}
		return ""
	}
	waitSnapshot(ctx, t, func(s *api.Snapshot) bool { return ep(s, "web") == "10.1.0.1" })

	// An invalid edit (all weights 0) that also renames the backend: the last good form
	// (web-v1, weight 1) keeps being programmed.
	setWeights(ctx, t, split, harness.Weighted{Service: "web-v2", Weight: 0})
	waitFor(ctx, t, client.ObjectKeyFromObject(split), controllers.ConditionAccepted, metav1.ConditionFalse, mesh.ReasonAllWeightsZero)

	// web-v1's pods move.
	slice.Endpoints[0].Addresses = []string{"10.1.0.2"}
	if err := cp.Client.Update(ctx, slice); err != nil {
		t.Fatal(err)
	}
	waitSnapshot(ctx, t, func(s *api.Snapshot) bool { return ep(s, "web-v1") == "10.1.0.2" })
	soon, stop := context.WithTimeout(ctx, 10*time.Second)
	defer stop()
	waitSnapshot(soon, t, func(s *api.Snapshot) bool { return ep(s, "web") == "10.1.0.2" })
}
