package controllers

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	"github.com/braidmesh/braid/internal/mesh"
	"github.com/braidmesh/braid/internal/smi"
)

// HTTPRouteGroupReconciler tells users whether every match of an HTTPRouteGroup can run
// in a proxy (regexes compile, methods exist, header names are valid). A match that
// cannot run is never programmed: it matches nothing.
type HTTPRouteGroupReconciler struct {
	Client client.Client
}

// +kubebuilder:rbac:groups=specs.smi-spec.io,resources=httproutegroups,verbs=get;list;watch
// +kubebuilder:rbac:groups=specs.smi-spec.io,resources=httproutegroups/status,verbs=get;update;patch

// Reconcile checks the group and records the verdict in its Accepted condition.
func (r *HTTPRouteGroupReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var g smi.HTTPRouteGroup
	if err := r.Client.Get(ctx, req.NamespacedName, &g); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	v := mesh.CheckRouteGroup(*toRouteGroup(&g))
	before := g.DeepCopy()
	changed := false
	for _, cond := range specConditions(v, g.Namespace) {
		cond.ObservedGeneration = g.Generation
		changed = meta.SetStatusCondition(&g.Status.Conditions, cond) || changed
	}
	if !changed {
		return ctrl.Result{}, nil
	}
	if err := r.Client.Status().Patch(ctx, &g, client.MergeFrom(before)); err != nil {
		return ctrl.Result{}, fmt.Errorf("writing the status of HTTPRouteGroup %s: %w", req.NamespacedName, err)
	}
	return ctrl.Result{}, nil
}

// SetupWithManager registers the reconciler.
func (r *HTTPRouteGroupReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("httproutegroup").
		For(&smi.HTTPRouteGroup{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Complete(r)
}

// specConditions are the conditions of a spec object (HTTPRouteGroup, TCPRoute, UDPRoute):
// it references nothing, and once accepted it is available to the splits and targets of
// its namespace, whose own Programmed conditions say when proxies run them.
func specConditions(v mesh.Verdict, namespace string) []metav1.Condition {
	programmed := condition(ConditionProgrammed, true, ReasonProgrammed, fmt.Sprintf(
		"available to the TrafficSplits and TrafficTargets of namespace %s; their Programmed conditions say when proxies run them", namespace))
	if !v.Accepted {
		programmed = condition(ConditionProgrammed, false, ReasonNotAccepted, "not accepted (see Accepted): the parts that cannot run are never programmed")
	}
	return []metav1.Condition{
		condition(ConditionAccepted, v.Accepted, v.Reason, v.Message),
		condition(ConditionResolvedRefs, true, ReasonResolvedRefs, "a spec references no other object"),
		programmed,
	}
}
