package harness

import (
	"context"
	"fmt"
	"reflect"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// ServiceParentRef is a parentRef to a Service of the route's namespace, written as GAMMA
// users write it: group "" and kind Service spelled out, the rest left unset.
func ServiceParentRef(name string) gatewayv1.ParentReference {
	return gatewayv1.ParentReference{Group: ptr.To(gatewayv1.Group("")), Kind: ptr.To(gatewayv1.Kind("Service")), Name: gatewayv1.ObjectName(name)}
}

// HTTPRoute is an HTTPRoute with the given parents and rules.
func HTTPRoute(namespace, name string, parents []gatewayv1.ParentReference, rules ...gatewayv1.HTTPRouteRule) *gatewayv1.HTTPRoute {
	return &gatewayv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: gatewayv1.HTTPRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: parents},
			Rules:           rules,
		},
	}
}

// Rule is a route rule: requests any of matches admits (every request without matches)
// go to backends by weight.
func Rule(matches []gatewayv1.HTTPRouteMatch, backends ...gatewayv1.HTTPBackendRef) gatewayv1.HTTPRouteRule {
	return gatewayv1.HTTPRouteRule{Matches: matches, BackendRefs: backends}
}

// BackendRef is a backendRef to a Service of the route's namespace, on port, with weight.
func BackendRef(service string, port, weight int32) gatewayv1.HTTPBackendRef {
	return gatewayv1.HTTPBackendRef{BackendRef: gatewayv1.BackendRef{
		BackendObjectReference: gatewayv1.BackendObjectReference{Name: gatewayv1.ObjectName(service), Port: ptr.To(port)},
		Weight:                 ptr.To(weight),
	}}
}

// PathPrefix is a match on a path prefix.
func PathPrefix(prefix string) gatewayv1.HTTPRouteMatch {
	return gatewayv1.HTTPRouteMatch{Path: &gatewayv1.HTTPPathMatch{Type: ptr.To(gatewayv1.PathMatchPathPrefix), Value: ptr.To(prefix)}}
}

// WaitForRouteParent waits until the route has a status.parents entry written by
// controller for parentRef (compared with reflect.DeepEqual, as Flagger does) whose
// conditions all observe the route's current generation, and returns that entry.
func WaitForRouteParent(ctx context.Context, c client.Client, key types.NamespacedName, controller gatewayv1.GatewayController, ref gatewayv1.ParentReference) (gatewayv1.RouteParentStatus, error) {
	var err error
	for {
		var hr gatewayv1.HTTPRoute
		if err = c.Get(ctx, key, &hr); err == nil {
			for _, p := range hr.Status.Parents {
				if p.ControllerName == controller && reflect.DeepEqual(p.ParentRef, ref) && observes(p.Conditions, hr.Generation) {
					return p, nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return gatewayv1.RouteParentStatus{}, waitFailed(fmt.Sprintf("waiting for the status of parent %s of HTTPRoute %s", ref.Name, key), err, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func observes(conds []metav1.Condition, generation int64) bool {
	if len(conds) == 0 {
		return false
	}
	for _, c := range conds {
		if c.ObservedGeneration != generation {
			return false
		}
	}
	return true
}

// RouteCondition returns the condition of type typ of a route parent's status, or nil.
func RouteCondition(p gatewayv1.RouteParentStatus, typ gatewayv1.RouteConditionType) *metav1.Condition {
	return meta.FindStatusCondition(p.Conditions, string(typ))
}
