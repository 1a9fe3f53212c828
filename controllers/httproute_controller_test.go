package controllers_test

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

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

// waitRouteCondition waits until Braid's status entry for parent ref of the route has
// condition typ with status and reason, observing the route's generation.
func waitRouteCondition(ctx context.Context, t *testing.T, key types.NamespacedName, ref gatewayv1.ParentReference,
	typ gatewayv1.RouteConditionType, status metav1.ConditionStatus, reason gatewayv1.RouteConditionReason) gatewayv1.RouteParentStatus {
	t.Helper()
	var last *metav1.Condition
	for {
		p, err := harness.WaitForRouteParent(ctx, cp.Client, key, controllers.ControllerName, ref)
		if err != nil {
			t.Fatalf("want %s=%s %s on parent %s of %s, last %+v: %v", typ, status, reason, ref.Name, key, last, err)
		}
		if last = harness.RouteCondition(p, typ); last != nil && last.Status == status && last.Reason == string(reason) {
			return p
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The status entry echoes the spec's parentRef exactly, as Flagger's gatewayapi provider
// finds it with reflect.DeepEqual, keeps up with the generation, and leaves other
// controllers' entries alone.
func TestHTTPRouteStatusEchoesTheParentRef(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns := namespace(ctx, t)
	for _, s := range []string{"web", "web-primary", "web-canary"} {
		mustCreate(ctx, t, harness.Service(ns, s, 80))
	}
	parent := harness.ServiceParentRef("web")
	parent.Port = ptr.To(gatewayv1.PortNumber(80))
	gateway := gatewayv1.ParentReference{Name: "public"} // the API server defaults group and kind to a Gateway's
	route := harness.HTTPRoute(ns, "web", []gatewayv1.ParentReference{parent, gateway},
		harness.Rule(nil, harness.BackendRef("web-primary", 80, 100), harness.BackendRef("web-canary", 80, 0)))
	mustCreate(ctx, t, route)
	key := client.ObjectKeyFromObject(route)

	var stored gatewayv1.HTTPRoute
	if err := cp.Client.Get(ctx, key, &stored); err != nil {
		t.Fatal(err)
	}
	specRef := stored.Spec.ParentRefs[0]
	p := waitRouteCondition(ctx, t, key, specRef, gatewayv1.RouteConditionAccepted, metav1.ConditionTrue, gatewayv1.RouteReasonAccepted)
	if !reflect.DeepEqual(p.ParentRef, specRef) {
		t.Fatalf("status parentRef %+v differs from the spec's %+v", p.ParentRef, specRef)
	}
	if c := harness.RouteCondition(p, gatewayv1.RouteConditionResolvedRefs); c == nil || c.Status != metav1.ConditionTrue || c.ObservedGeneration != stored.Generation {
		t.Fatalf("want ResolvedRefs True at generation %d, got %+v", stored.Generation, c)
	}
	waitSnapshot(ctx, t, func(s *api.Snapshot) bool {
		return harness.SameShares(harness.Weights(s, ns, "web", 80), map[string]int64{"web-primary": 100, "web-canary": 0})
	})

	// Another controller's entry (the Gateway's) survives Braid's writes.
	foreign := addForeignParent(ctx, t, key, 1)
	// Flagger's step: weights changed in place, a new generation (Braid writes status
	// meanwhile, so the update is retried on conflict, as Flagger's is).
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := cp.Client.Get(ctx, key, &stored); err != nil {
			return err
		}
		stored.Spec.Rules[0].BackendRefs[0].Weight = ptr.To(int32(90))
		stored.Spec.Rules[0].BackendRefs[1].Weight = ptr.To(int32(10))
		return cp.Client.Update(ctx, &stored)
	}); err != nil {
		t.Fatal(err)
	}
	p = waitRouteCondition(ctx, t, key, specRef, gatewayv1.RouteConditionAccepted, metav1.ConditionTrue, gatewayv1.RouteReasonAccepted)
	if c := harness.RouteCondition(p, gatewayv1.RouteConditionAccepted); c.ObservedGeneration != 2 {
		t.Fatalf("want observedGeneration 2, got %d", c.ObservedGeneration)
	}
	waitSnapshot(ctx, t, func(s *api.Snapshot) bool {
		return harness.SameShares(harness.Weights(s, ns, "web", 80), map[string]int64{"web-primary": 90, "web-canary": 10})
	})
	checkParents(ctx, t, key, foreign)
}

// addForeignParent writes, as a Gateway controller would, a status entry for the route's
// parentRef at index i.
func addForeignParent(ctx context.Context, t *testing.T, key types.NamespacedName, i int) gatewayv1.RouteParentStatus {
	t.Helper()
	var foreign gatewayv1.RouteParentStatus
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error { // Braid writes status too
		var hr gatewayv1.HTTPRoute
		if err := cp.Client.Get(ctx, key, &hr); err != nil {
			return err
		}
		foreign = gatewayv1.RouteParentStatus{
			ParentRef: hr.Spec.ParentRefs[i], ControllerName: "example.com/gateway-controller",
			Conditions: []metav1.Condition{{Type: "Accepted", Status: metav1.ConditionTrue, Reason: "Accepted", LastTransitionTime: metav1.Now(), ObservedGeneration: hr.Generation}},
		}
		hr.Status.Parents = append([]gatewayv1.RouteParentStatus{foreign}, hr.Status.Parents...)
		return cp.Client.Status().Update(ctx, &hr)
	}); err != nil {
		t.Fatal(err)
	}
	return foreign
}

// checkParents checks that the route's status holds the foreign entry and Braid's entry
// for its Service parent, and nothing else.
func checkParents(ctx context.Context, t *testing.T, key types.NamespacedName, foreign gatewayv1.RouteParentStatus) {
	t.Helper()
	var hr gatewayv1.HTTPRoute
	if err := cp.Client.Get(ctx, key, &hr); err != nil {
		t.Fatal(err)
	}
	var kept, ours int
	for _, st := range hr.Status.Parents {
		switch {
		case st.ControllerName == foreign.ControllerName && reflect.DeepEqual(st.ParentRef, foreign.ParentRef):
			kept++
		case st.ControllerName == controllers.ControllerName && reflect.DeepEqual(st.ParentRef, hr.Spec.ParentRefs[0]):
			ours++
		}
	}
	if kept != 1 || ours != 1 || len(hr.Status.Parents) != 2 {
		t.Fatalf("want the gateway controller's entry kept next to Braid's one entry, got %+v", hr.Status.Parents)
	}
}

func TestHTTPRouteWithoutItsParentServiceIsNotAccepted(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns := namespace(ctx, t)
	mustCreate(ctx, t, harness.Service(ns, "web-v1", 80))
	parent := harness.ServiceParentRef("web")
	route := harness.HTTPRoute(ns, "web", []gatewayv1.ParentReference{parent}, harness.Rule(nil, harness.BackendRef("web-v1", 80, 1)))
	mustCreate(ctx, t, route)
	key := client.ObjectKeyFromObject(route)

	p := waitRouteCondition(ctx, t, key, parent, gatewayv1.RouteConditionAccepted, metav1.ConditionFalse, gatewayv1.RouteReasonNoMatchingParent)
	if c := harness.RouteCondition(p, gatewayv1.RouteConditionAccepted); !strings.Contains(c.Message, "web") {
		t.Errorf("the message should name the missing service: %q", c.Message)
	}
	mustCreate(ctx, t, harness.Service(ns, "web", 80))
	waitRouteCondition(ctx, t, key, parent, gatewayv1.RouteConditionAccepted, metav1.ConditionTrue, gatewayv1.RouteReasonAccepted)
	waitSnapshot(ctx, t, func(s *api.Snapshot) bool { return harness.Weights(s, ns, "web", 80)["web-v1"] == 1 })
}

func TestHTTPRouteToAMissingBackendDoesNotResolve(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns := namespace(ctx, t)
	mustCreate(ctx, t, harness.Service(ns, "web", 80))
	mustCreate(ctx, t, harness.Service(ns, "web-v1", 80))
	parent := harness.ServiceParentRef("web")
	route := harness.HTTPRoute(ns, "web", []gatewayv1.ParentReference{parent},
		harness.Rule(nil, harness.BackendRef("web-v1", 80, 1), harness.BackendRef("web-v2", 80, 1)))
	mustCreate(ctx, t, route)
	key := client.ObjectKeyFromObject(route)

	p := waitRouteCondition(ctx, t, key, parent, gatewayv1.RouteConditionResolvedRefs, metav1.ConditionFalse, gatewayv1.RouteReasonBackendNotFound)
	if c := harness.RouteCondition(p, gatewayv1.RouteConditionResolvedRefs); !strings.Contains(c.Message, "web-v2") {
		t.Errorf("the message should name the missing backend: %q", c.Message)
	}
	if c := harness.RouteCondition(p, gatewayv1.RouteConditionAccepted); c == nil || c.Status != metav1.ConditionTrue {
		t.Errorf("a missing backend does not make the parent refuse the route: %+v", c)
	}
	// Its share is kept and fails, rather than moving to web-v1.
	waitSnapshot(ctx, t, func(s *api.Snapshot) bool {
		for _, b := range harness.Backends(harness.FindPort(s, ns, "web", 80)) {
			if b.GetService() == "web-v2" {
				return b.GetWeight() == 1 && strings.Contains(b.GetUnavailable(), "does not exist")
			}
		}
		return false
	})
	mustCreate(ctx, t, harness.Service(ns, "web-v2", 80))
	waitRouteCondition(ctx, t, key, parent, gatewayv1.RouteConditionResolvedRefs, metav1.ConditionTrue, gatewayv1.RouteReasonResolvedRefs)
}

// A route in another namespace than its parent Service is a consumer route, which Braid
// does not support yet: it says so, and the Service is not changed.
func TestConsumerHTTPRouteIsNotSupportedYet(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns := namespace(ctx, t)
	mustCreate(ctx, t, harness.Service(ns, "web", 80))
	parent := harness.ServiceParentRef("web")
	parent.Namespace = ptr.To(gatewayv1.Namespace("elsewhere"))
	route := harness.HTTPRoute(ns, "consumer", []gatewayv1.ParentReference{parent}, harness.Rule(nil, harness.BackendRef("web", 80, 1)))
	mustCreate(ctx, t, route)
	p := waitRouteCondition(ctx, t, client.ObjectKeyFromObject(route), parent, gatewayv1.RouteConditionAccepted, metav1.ConditionFalse, gatewayv1.RouteReasonUnsupportedValue)
	if c := harness.RouteCondition(p, gatewayv1.RouteConditionAccepted); !strings.Contains(c.Message, "consumer routes") {
		t.Errorf("the message should say consumer routes are not supported: %q", c.Message)
	}
}

// GAMMA timeouts reach the proxies' routes, and the route is accepted without a note
// about them. (Retries map the same way, from the experimental channel's CRDs.)
func TestHTTPRouteTimeoutsAreProgrammed(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns := namespace(ctx, t)
	mustCreate(ctx, t, harness.Service(ns, "web", 80))
	mustCreate(ctx, t, harness.Service(ns, "web-v1", 80))
	parent := harness.ServiceParentRef("web")
	rule := harness.Rule(nil, harness.BackendRef("web-v1", 80, 1))
	rule.Timeouts = &gatewayv1.HTTPRouteTimeouts{Request: ptr.To(gatewayv1.Duration("2s")), BackendRequest: ptr.To(gatewayv1.Duration("500ms"))}
	// retry is in Gateway API's experimental channel: the standard CRDs prune it.
	route := harness.HTTPRoute(ns, "web", []gatewayv1.ParentReference{parent}, rule)
	mustCreate(ctx, t, route)
	p := waitRouteCondition(ctx, t, client.ObjectKeyFromObject(route), parent, gatewayv1.RouteConditionAccepted, metav1.ConditionTrue, gatewayv1.RouteReasonAccepted)
	if c := harness.RouteCondition(p, gatewayv1.RouteConditionAccepted); strings.Contains(c.Message, "timeouts") {
		t.Errorf("timeouts are supported; the Accepted message must not say otherwise: %q", c.Message)
	}
	waitSnapshot(ctx, t, func(s *api.Snapshot) bool {
		port := harness.FindPort(s, ns, "web", 80)
		if port == nil || len(port.GetRoutes()) == 0 {
			return false
		}
		r := port.GetRoutes()[0]
		return r.GetTimeout().AsDuration() == 2*time.Second && r.GetBackendRequestTimeout().AsDuration() == 500*time.Millisecond
	})
}

// An HTTPRoute is Programmed on a Service parent once every connected proxy runs the
// compile of that Service that carries the route's generation.
func TestHTTPRouteIsProgrammedOnceProxiesRunIt(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns := namespace(ctx, t)
	proxy, err := harness.StartAckingProxy(ctx, cp.ConfigAddr, "slow-route-proxy", ns)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = proxy.Close() }()
	for _, s := range []string{"web", "web-v2"} {
		mustCreate(ctx, t, harness.Service(ns, s, 80))
	}
	waitSnapshot(ctx, t, func(s *api.Snapshot) bool { return harness.FindPort(s, ns, "web-v2", 80) != nil })

	proxy.SetAcking(false)
	parent := harness.ServiceParentRef("web")
	route := harness.HTTPRoute(ns, "web", []gatewayv1.ParentReference{parent}, harness.Rule(nil, harness.BackendRef("web-v2", 80, 1)))
	mustCreate(ctx, t, route)
	key := client.ObjectKeyFromObject(route)
	waitSnapshot(ctx, t, func(s *api.Snapshot) bool {
		p := harness.FindPort(s, ns, "web", 80)
		return len(harness.Backends(p)) == 1 && harness.Backends(p)[0].GetService() == "web-v2"
	})
	for { // Pending says first that the generation is not compiled, then counts proxies
		st := waitRouteCondition(ctx, t, key, parent, "Programmed", metav1.ConditionFalse, "Pending")
		c := harness.RouteCondition(st, "Programmed")
		if strings.Contains(c.Message, "0 of 1 connected proxies") && c.ObservedGeneration == 1 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the pending condition should count proxies and observe generation 1: %+v", c)
		}
		time.Sleep(10 * time.Millisecond)
	}

	proxy.SetAcking(true)
	st := waitRouteCondition(ctx, t, key, parent, "Programmed", metav1.ConditionTrue, "Programmed")
	if c := harness.RouteCondition(st, "Programmed"); !strings.Contains(c.Message, "all 1 connected proxies") {
		t.Errorf("unexpected message: %q", c.Message)
	}
	// A parent that does not accept the route does not program it.
	missing := harness.ServiceParentRef("nowhere")
	other := harness.HTTPRoute(ns, "lost", []gatewayv1.ParentReference{missing}, harness.Rule(nil, harness.BackendRef("web-v2", 80, 1)))
	mustCreate(ctx, t, other)
	waitRouteCondition(ctx, t, client.ObjectKeyFromObject(other), missing, "Programmed", metav1.ConditionFalse, "NotAccepted")
}
