package controllers

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/braidmesh/braid/internal/mesh"
)

// ConditionPartiallyInvalid is Gateway API's condition of a route some of whose rules
// are dropped.
const ConditionPartiallyInvalid = string(gatewayv1.RouteConditionPartiallyInvalid)

// conflictRetry is how soon a status write that lost a race with another writer is retried.
const conflictRetry = 100 * time.Millisecond

// HTTPRouteReconciler tells users, through status.parents, whether each Service parent of
// an HTTPRoute (GAMMA) accepts the route and whether its backendRefs resolve. It writes
// one entry per Service parentRef, under ControllerName, whose parentRef is the spec's
// parentRef exactly (Flagger finds it with DeepEqual), and leaves the entries of other
// controllers alone. It never changes a route's spec.
type HTTPRouteReconciler struct {
	Client client.Client
	// Acks and Programs say whether the proxies run the compile of each parent Service
	// that carries the route's generation (the Programmed condition).
	Acks     AckCounter
	Programs *RoutePrograms
}

// +kubebuilder:rbac:groups=gateway.networking.k8s.io,resources=httproutes,verbs=get;list;watch
// +kubebuilder:rbac:groups=gateway.networking.k8s.io,resources=httproutes/status,verbs=get;update;patch

// Reconcile computes the route's parent statuses and writes them if they changed.
func (r *HTTPRouteReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var hr gatewayv1.HTTPRoute
	if err := r.Client.Get(ctx, req.NamespacedName, &hr); err != nil {
		if apierrors.IsNotFound(err) {
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, fmt.Errorf("reading HTTPRoute %s: %w", req.NamespacedName, err)
	}
	route := toMeshHTTPRoute(&hr)
	refs, err := r.resolvedRefs(ctx, route)
	if err != nil {
		return ctrl.Result{}, err
	}
	var ours []gatewayv1.RouteParentStatus
	for _, ref := range hr.Spec.ParentRefs {
		p, ok := serviceParent(&hr, ref)
		if !ok {
			continue // a Gateway's business
		}
		st, err := r.parentStatus(ctx, &hr, route, ref, p, refs)
		if err != nil {
			return ctrl.Result{}, err
		}
		ours = append(ours, st)
	}
	parents := mergeParents(hr.Status.Parents, ours)
	if equality.Semantic.DeepEqual(parents, hr.Status.Parents) {
		return ctrl.Result{}, nil
	}
	hr.Status.Parents = parents
	if err := r.Client.Status().Update(ctx, &hr); err != nil {
		if apierrors.IsConflict(err) {
			// Another controller wrote the route meanwhile: read it again and recompute.
			log.FromContext(ctx).V(1).Info("Retrying HTTPRoute status update after a conflict")
			return ctrl.Result{RequeueAfter: conflictRetry}, nil
		}
		return ctrl.Result{}, fmt.Errorf("writing the status of HTTPRoute %s: %w", req.NamespacedName, err)
	}
	log.FromContext(ctx).V(1).Info("Updated HTTPRoute status", "parents", len(ours), "resolvedRefs", refs.Reason)
	return ctrl.Result{}, nil
}

// parentStatus computes the status entry of one Service parentRef, keeping the transition
// times of conditions that did not change.
func (r *HTTPRouteReconciler) parentStatus(ctx context.Context, hr *gatewayv1.HTTPRoute, route mesh.HTTPRoute,
	ref gatewayv1.ParentReference, p mesh.ServiceParent, refs mesh.RefsVerdict) (gatewayv1.RouteParentStatus, error) {
	var svc *corev1.Service
	if route.IsProducer(p) {
		var err error
		if svc, err = getService(ctx, r.Client, p.Namespace, p.Name); err != nil {
			return gatewayv1.RouteParentStatus{}, err
		}
	}
	accepted := mesh.CheckHTTPRouteParent(route, p, svc)
	conds := []metav1.Condition{
		condition(ConditionAccepted, accepted.Accepted, accepted.Reason, accepted.Message),
		condition(ConditionResolvedRefs, refs.Resolved, refs.Reason, refs.Message),
	}
	if dropped := mesh.DroppedMatches(route); accepted.Accepted && len(dropped) > 0 {
		conds = append(conds, condition(ConditionPartiallyInvalid, true, mesh.ReasonUnsupportedValue,
			"Dropped Rule matches that proxies cannot run (a rule left without matches is dropped): "+strings.Join(dropped, "; ")))
	}
	prev := findParent(hr.Status.Parents, ref)
	conds = append(conds, r.programmed(hr, p, accepted, prev))
	st := gatewayv1.RouteParentStatus{ParentRef: *ref.DeepCopy(), ControllerName: ControllerName}
	if prev != nil {
		st.Conditions = slices.DeleteFunc(slices.Clone(prev.Conditions), func(c metav1.Condition) bool {
			return !slices.ContainsFunc(conds, func(n metav1.Condition) bool { return n.Type == c.Type })
		})
	}
	for _, c := range conds {
		c.ObservedGeneration = hr.Generation
		meta.SetStatusCondition(&st.Conditions, c)
	}
	return st, nil
}

// programmed says whether every connected proxy runs the compile of the parent Service
// that carries this generation of the route. Once True for a generation it stays True, as
// for TrafficSplits.
func (r *HTTPRouteReconciler) programmed(hr *gatewayv1.HTTPRoute, p mesh.ServiceParent, accepted mesh.Verdict, prev *gatewayv1.RouteParentStatus) metav1.Condition {
	if !accepted.Accepted {
		return condition(ConditionProgrammed, false, ReasonNotAccepted, "the parent does not accept the route (see Accepted), so proxies do not run it there")
	}
	if prev != nil {
		if cur := meta.FindStatusCondition(prev.Conditions, ConditionProgrammed); cur != nil &&
			cur.Status == metav1.ConditionTrue && cur.ObservedGeneration == hr.Generation {
			return *cur
		}
	}
	key := RouteParent{Route: types.NamespacedName{Namespace: hr.Namespace, Name: hr.Name}, Parent: types.NamespacedName{Namespace: p.Namespace, Name: p.Name}}
	c, ok := r.Programs.Get(key)
	if !ok || c.Generation != hr.Generation {
		return condition(ConditionProgrammed, false, ReasonPending, fmt.Sprintf("generation %d is not compiled into Service %s yet", hr.Generation, p.Name))
	}
	r.Programs.AwaitAcks(key) // before counting, so no acknowledgement is missed
	return ackedCondition(r.Acks, p.Namespace+"/"+p.Name, c.Version, fmt.Sprintf("generation %d for Service %s", hr.Generation, p.Name))
}

// resolvedRefs resolves the route's backendRefs against the Services of its namespace.
func (r *HTTPRouteReconciler) resolvedRefs(ctx context.Context, route mesh.HTTPRoute) (mesh.RefsVerdict, error) {
	services := map[string]*corev1.Service{}
	for _, name := range route.BackendServices() {
		svc, err := getService(ctx, r.Client, route.Namespace, name)
		if err != nil {
			return mesh.RefsVerdict{}, err
		}
		services[name] = svc
	}
	return mesh.CheckHTTPRouteRefs(route, services), nil
}

// findParent finds Braid's status entry for a parentRef.
func findParent(parents []gatewayv1.RouteParentStatus, ref gatewayv1.ParentReference) *gatewayv1.RouteParentStatus {
	for i := range parents {
		if parents[i].ControllerName == ControllerName && reflect.DeepEqual(parents[i].ParentRef, ref) {
			return &parents[i]
		}
	}
	return nil
}

// mergeParents keeps the entries other controllers wrote, in their order, followed by
// Braid's in spec order. Braid's entries for parentRefs the spec no longer has go.
func mergeParents(current, ours []gatewayv1.RouteParentStatus) []gatewayv1.RouteParentStatus {
	out := make([]gatewayv1.RouteParentStatus, 0, len(current)+len(ours))
	for _, p := range current {
		if p.ControllerName != ControllerName {
			out = append(out, p)
		}
	}
	return append(out, ours...)
}

// getService reads a Service, or returns nil when it does not exist.
func getService(ctx context.Context, c client.Client, namespace, name string) (*corev1.Service, error) {
	var svc corev1.Service
	err := c.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name}, &svc)
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("reading service %s/%s: %w", namespace, name, err)
	}
	return &svc, nil
}

// SetupWithManager registers the reconciler: a route is looked at again when its spec
// changes, when a Service it names as parent or backend appears, goes, or changes its
// ports or type, when a parent Service is compiled with it, and when proxies acknowledge
// a version it waits for.
func (r *HTTPRouteReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("httproute").
		For(&gatewayv1.HTTPRoute{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&corev1.Service{}, handler.EnqueueRequestsFromMapFunc(r.routesNaming),
			builder.WithPredicates(predicate.Funcs{UpdateFunc: portsOrTypeChanged})).
		WatchesRawSource(source.Channel(r.Programs.Events(), &handler.TypedEnqueueRequestForObject[*gatewayv1.HTTPRoute]{})).
		Complete(r)
}

func portsOrTypeChanged(e event.UpdateEvent) bool {
	o, ok1 := e.ObjectOld.(*corev1.Service)
	n, ok2 := e.ObjectNew.(*corev1.Service)
	return ok1 && ok2 && (o.Spec.Type != n.Spec.Type || !reflect.DeepEqual(o.Spec.Ports, n.Spec.Ports))
}

// routesNaming maps a Service to the routes that name it as parent or backend.
func (r *HTTPRouteReconciler) routesNaming(ctx context.Context, o client.Object) []reconcile.Request {
	var reqs []reconcile.Request
	for _, index := range []string{indexHTTPRouteParent, indexHTTPRouteBackend} {
		routes := routesBy(ctx, r.Client, o.GetNamespace(), index, o.GetName())
		for i := range routes {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&routes[i])})
		}
	}
	return reqs
}
