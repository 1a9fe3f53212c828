package controllers

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/api/meta"
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
	cond := condition(ConditionAccepted, v.Accepted, v.Reason, v.Message)
	cond.ObservedGeneration = g.Generation
	before := g.DeepCopy()
	if !meta.SetStatusCondition(&g.Status.Conditions, cond) {
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
