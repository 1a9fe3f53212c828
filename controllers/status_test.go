package controllers_test

import (
	"context"
	"strings"
	"testing"
	"time"

	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/braidmesh/braid/controllers"
	"github.com/braidmesh/braid/internal/mesh"
	"github.com/braidmesh/braid/internal/smi"
	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/test/harness"
)

func waitFor(ctx context.Context, t *testing.T, key types.NamespacedName, typ string, status metav1.ConditionStatus, reason string) metav1.Condition {
	t.Helper()
	var last metav1.Condition
	for {
		var ts smi.TrafficSplit
		if err := cp.Client.Get(ctx, key, &ts); err == nil {
			for _, c := range ts.Status.Conditions {
				if c.Type == typ {
					last = c
					if c.Status == status && c.Reason == reason && c.ObservedGeneration == ts.Generation {
						return c
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("want %s=%s %s on %s, last %s %s: %q", typ, status, reason, key, last.Status, last.Reason, last.Message)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func TestOnlyTheOldestSplitOfARootGoverns(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns := namespace(ctx, t)
	for _, s := range []string{"web", "web-v1", "web-v2"} {
		mustCreate(ctx, t, harness.Service(ns, s, 80))
	}
	first := harness.TrafficSplit("split.smi-spec.io/v1alpha2", ns, "first", "web", harness.Weighted{Service: "web-v1", Weight: 1})
	mustCreate(ctx, t, first)
	waitFor(ctx, t, types.NamespacedName{Namespace: ns, Name: "first"}, controllers.ConditionAccepted, metav1.ConditionTrue, mesh.ReasonAccepted)
	time.Sleep(1100 * time.Millisecond) // creationTimestamp has a one-second resolution
	mustCreate(ctx, t, harness.TrafficSplit("split.smi-spec.io/v1alpha2", ns, "second", "web", harness.Weighted{Service: "web-v2", Weight: 1}))

	second := types.NamespacedName{Namespace: ns, Name: "second"}
	cond := waitFor(ctx, t, second, controllers.ConditionAccepted, metav1.ConditionFalse, controllers.ReasonSuperseded)
	if !strings.Contains(cond.Message, "first") {
		t.Errorf("the condition should name the governing split: %q", cond.Message)
	}
	waitFor(ctx, t, second, controllers.ConditionProgrammed, metav1.ConditionFalse, controllers.ReasonNotAccepted)
	waitSnapshot(ctx, t, func(s *api.Snapshot) bool { return harness.FindPort(s, ns, "web", 80).GetSplit() == ns+"/first" })

	if err := cp.Client.Delete(ctx, first); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, second, controllers.ConditionAccepted, metav1.ConditionTrue, mesh.ReasonAccepted)
	waitSnapshot(ctx, t, func(s *api.Snapshot) bool { return harness.FindPort(s, ns, "web", 80).GetSplit() == ns+"/second" })
}

func TestResolvedRefs(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns := namespace(ctx, t)
	mustCreate(ctx, t, harness.Service(ns, "web", 8080))
	mustCreate(ctx, t, harness.Service(ns, "web-v1", 8080))
	split := harness.TrafficSplit("split.smi-spec.io/v1alpha2", ns, "web", "web",
		harness.Weighted{Service: "web-v1", Weight: 100}, harness.Weighted{Service: "web-canary", Weight: 0})
	mustCreate(ctx, t, split)
	key := client.ObjectKeyFromObject(split)

	// A weight-0 backend may not exist yet (the documented rollout order).
	cond := waitFor(ctx, t, key, controllers.ConditionResolvedRefs, metav1.ConditionTrue, mesh.ReasonResolvedRefs)
	if !strings.Contains(cond.Message, "web-canary") {
		t.Errorf("the message should mention the backend that does not exist yet: %q", cond.Message)
	}
	// Once it has a weight, its absence is a problem.
	setWeights(ctx, t, split, harness.Weighted{Service: "web-v1", Weight: 90}, harness.Weighted{Service: "web-canary", Weight: 10})
	waitFor(ctx, t, key, controllers.ConditionResolvedRefs, metav1.ConditionFalse, mesh.ReasonBackendNotFound)

	// A backend without the root's port gets a condition and a Warning Event.
	mustCreate(ctx, t, harness.Service(ns, "web-canary", 1024))
	cond = waitFor(ctx, t, key, controllers.ConditionResolvedRefs, metav1.ConditionFalse, mesh.ReasonBackendLacksPort)
	if !strings.Contains(cond.Message, "web-canary (lacks port 8080)") {
		t.Errorf("the message should name the backend and the port: %q", cond.Message)
	}
	for {
		var list eventsv1.EventList
		if err := cp.Client.List(ctx, &list, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		found := false
		for _, e := range list.Items {
			found = found || (e.Regarding.Name == "web" && e.Regarding.Kind == "TrafficSplit" && e.Type == "Warning" && e.Reason == mesh.ReasonBackendLacksPort)
		}
		if found {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no Warning event %s on the split; events: %v", mesh.ReasonBackendLacksPort, list.Items)
		case <-time.After(20 * time.Millisecond):
		}
	}
	// The backend is left out of the root port.
	waitSnapshot(ctx, t, func(s *api.Snapshot) bool {
		w := harness.Weights(s, ns, "web", 8080)
		_, has := w["web-canary"]
		return len(w) == 1 && !has
	})
}

// Programmed waits for every connected proxy to acknowledge the version that carries the
// split's generation.
func TestProgrammedWaitsForEveryConnectedProxy(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns := namespace(ctx, t)
	proxy, err := harness.StartAckingProxy(ctx, cp.ConfigAddr, "slow-proxy", ns)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = proxy.Close() }()
	mustCreate(ctx, t, harness.Service(ns, "web", 80))
	mustCreate(ctx, t, harness.Service(ns, "web-v1", 80))
	waitSnapshot(ctx, t, func(s *api.Snapshot) bool { return harness.FindPort(s, ns, "web-v1", 80) != nil })

	proxy.SetAcking(false)
	split := harness.TrafficSplit("split.smi-spec.io/v1alpha2", ns, "web", "web", harness.Weighted{Service: "web-v1", Weight: 1})
	mustCreate(ctx, t, split)
	key := client.ObjectKeyFromObject(split)
	waitSnapshot(ctx, t, func(s *api.Snapshot) bool { return harness.FindPort(s, ns, "web", 80).GetSplit() == ns+"/web" })
	time.Sleep(300 * time.Millisecond) // the proxy has had the split for a while, but not acknowledged it
	cond := waitFor(ctx, t, key, controllers.ConditionProgrammed, metav1.ConditionFalse, controllers.ReasonPending)
	if !strings.Contains(cond.Message, "0 of 1 connected proxies") {
		t.Errorf("the pending message should count proxies: %q", cond.Message)
	}

	proxy.SetAcking(true)
	cond = waitFor(ctx, t, key, controllers.ConditionProgrammed, metav1.ConditionTrue, controllers.ReasonProgrammed)
	if !strings.Contains(cond.Message, "all 1 connected proxies") {
		t.Errorf("unexpected message: %q", cond.Message)
	}
}

func setWeights(ctx context.Context, t *testing.T, split *unstructured.Unstructured, backends ...harness.Weighted) {
	t.Helper()
	if err := harness.SetWeights(ctx, cp.Client, split, backends...); err != nil {
		t.Fatal(err)
	}
}

func TestHTTPRouteGroupWithABadRegexIsNotAccepted(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns := namespace(ctx, t)
	group := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup",
		"metadata": map[string]any{"namespace": ns, "name": "api"},
		"spec": map[string]any{"matches": []any{
			map[string]any{"name": "ok", "pathRegex": "/api"},
			map[string]any{"name": "broken", "pathRegex": "/api/(v1", "headers": []any{map[string]any{"x-team": "a.*"}}},
		}},
	}}
	mustCreate(ctx, t, group)
	for {
		var g smi.HTTPRouteGroup
		if err := cp.Client.Get(ctx, client.ObjectKeyFromObject(group), &g); err == nil {
			if c := findCondition(g.Status.Conditions, controllers.ConditionAccepted); c != nil && c.Status == metav1.ConditionFalse {
				if c.Reason != mesh.ReasonInvalidMatch || !strings.Contains(c.Message, "spec.matches[1].pathRegex") {
					t.Fatalf("want InvalidMatch naming spec.matches[1].pathRegex, got %s: %q", c.Reason, c.Message)
				}
				if g.Spec.Matches[1].Headers["x-team"] != "a.*" {
					t.Fatalf("the SDK's list form of headers must decode, got %v", g.Spec.Matches[1].Headers)
				}
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatal("the HTTPRouteGroup never got Accepted=False")
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func findCondition(conds []metav1.Condition, typ string) *metav1.Condition {
	for i := range conds {
		if conds[i].Type == typ {
			return &conds[i]
		}
	}
	return nil
}

// A proxy that rejects the version carrying a split makes Programmed False with its error.
func TestProgrammedReportsRejections(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns := namespace(ctx, t)
	proxy, err := harness.DialConfig(ctx, cp.ConfigAddr, "picky-proxy", ns)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = proxy.Close() }()
	go func() {
		for {
			snap, err := proxy.Recv()
			if err != nil {
				return
			}
			reason := ""
			for _, s := range snap.GetServices() {
				if s.GetNamespace() == ns && len(s.GetPorts()) > 0 && s.GetPorts()[0].GetSplit() != "" {
					reason = "cannot build route: out of memory (simulated)"
				}
			}
			_ = proxy.Ack(snap.GetVersion(), reason)
		}
	}()
	mustCreate(ctx, t, harness.Service(ns, "web", 80))
	mustCreate(ctx, t, harness.Service(ns, "web-v1", 80))
	split := harness.TrafficSplit("split.smi-spec.io/v1alpha2", ns, "web", "web", harness.Weighted{Service: "web-v1", Weight: 1})
	mustCreate(ctx, t, split)
	cond := waitFor(ctx, t, client.ObjectKeyFromObject(split), controllers.ConditionProgrammed, metav1.ConditionFalse, controllers.ReasonRejected)
	if !strings.Contains(cond.Message, "picky-proxy") || !strings.Contains(cond.Message, "simulated") {
		t.Fatalf("the condition should name the proxy and its error: %q", cond.Message)
	}
}

// A proxy that applies a version except one Service it cannot build makes only the
// splits of that Service Rejected: the others are Programmed.
func TestOneRejectedServiceRejectsOnlyItsSplits(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns := namespace(ctx, t)
	proxy, err := harness.StartAckingProxy(ctx, cp.ConfigAddr, "partial-proxy", ns)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = proxy.Close() }()
	proxy.RejectServices(map[string]string{ns + "/web": "route 0: invalid regex (simulated)"})
	var splits []*unstructured.Unstructured
	for _, root := range []string{"web", "api"} {
		mustCreate(ctx, t, harness.Service(ns, root, 80))
		mustCreate(ctx, t, harness.Service(ns, root+"-v1", 80))
		split := harness.TrafficSplit("split.smi-spec.io/v1alpha2", ns, root, root, harness.Weighted{Service: root + "-v1", Weight: 1})
		mustCreate(ctx, t, split)
		splits = append(splits, split)
	}
	cond := waitFor(ctx, t, client.ObjectKeyFromObject(splits[0]), controllers.ConditionProgrammed, metav1.ConditionFalse, controllers.ReasonRejected)
	if !strings.Contains(cond.Message, "partial-proxy") || !strings.Contains(cond.Message, "simulated") {
		t.Errorf("the condition should name the proxy and why it rejected web: %q", cond.Message)
	}
	waitFor(ctx, t, client.ObjectKeyFromObject(splits[1]), controllers.ConditionProgrammed, metav1.ConditionTrue, controllers.ReasonProgrammed)
}

// GAMMA routes take precedence: an HTTPRoute attached to every port of a split's root
// supersedes the split, and the split governs again once the route is gone.
func TestHTTPRouteSupersedesASplitOnItsPorts(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns := namespace(ctx, t)
	for _, s := range []string{"web", "web-v1", "web-v2"} {
		mustCreate(ctx, t, harness.Service(ns, s, 80))
	}
	split := harness.TrafficSplit("split.smi-spec.io/v1alpha2", ns, "web", "web", harness.Weighted{Service: "web-v1", Weight: 1})
	mustCreate(ctx, t, split)
	key := client.ObjectKeyFromObject(split)
	waitFor(ctx, t, key, controllers.ConditionAccepted, metav1.ConditionTrue, mesh.ReasonAccepted)

	route := harness.HTTPRoute(ns, "web", []gatewayv1.ParentReference{harness.ServiceParentRef("web")},
		harness.Rule(nil, harness.BackendRef("web-v2", 80, 1)))
	mustCreate(ctx, t, route)
	cond := waitFor(ctx, t, key, controllers.ConditionAccepted, metav1.ConditionFalse, controllers.ReasonSuperseded)
	if !strings.Contains(cond.Message, "HTTPRoutes [web]") {
		t.Errorf("the condition should name the route: %q", cond.Message)
	}
	waitFor(ctx, t, key, controllers.ConditionProgrammed, metav1.ConditionFalse, controllers.ReasonNotAccepted)
	waitSnapshot(ctx, t, func(s *api.Snapshot) bool {
		b := harness.Backends(harness.FindPort(s, ns, "web", 80))
		return len(b) == 1 && b[0].GetService() == "web-v2"
	})

	if err := cp.Client.Delete(ctx, route); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, key, controllers.ConditionAccepted, metav1.ConditionTrue, mesh.ReasonAccepted)
	waitSnapshot(ctx, t, func(s *api.Snapshot) bool { return harness.FindPort(s, ns, "web", 80).GetSplit() == ns+"/web" })
}
