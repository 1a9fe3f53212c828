package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
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

	"github.com/braidmesh/braid/internal/mesh"
	"github.com/braidmesh/braid/internal/smi"
)

// ConditionAccepted is the condition that says whether Braid can program an object.
const ConditionAccepted = "Accepted"

// TrafficSplitReconciler tells users, through status conditions, whether each
// TrafficSplit can be programmed and why not. It never changes a split's spec.
type TrafficSplitReconciler struct {
	Client client.Client
}

// +kubebuilder:rbac:groups=split.smi-spec.io,resources=trafficsplits,verbs=get;list;watch
// +kubebuilder:rbac:groups=split.smi-spec.io,resources=trafficsplits/status,verbs=get;update;patch

// Reconcile checks the split req names and records the verdict in its Accepted condition.
func (r *TrafficSplitReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var ts smi.TrafficSplit
	if err := r.Client.Get(ctx, req.NamespacedName, &ts); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	rootExists, err := r.serviceExists(ctx, types.NamespacedName{Namespace: ts.Namespace, Name: ts.Spec.Service})
	if err != nil {
		return ctrl.Result{}, err
	}
	v := mesh.CheckSplit(toMeshSplit(&ts), rootExists)
	cond := metav1.Condition{
		Type:               ConditionAccepted,
		Status:             metav1.ConditionTrue,
		ObservedGeneration: ts.Generation,
		Reason:             v.Reason,
		Message:            v.Message,
	}
	if !v.Accepted {
		cond.Status = metav1.ConditionFalse
	}
	before := ts.DeepCopy()
	if !meta.SetStatusCondition(&ts.Status.Conditions, cond) {
		return ctrl.Result{}, nil
	}
	if err := r.Client.Status().Patch(ctx, &ts, client.MergeFrom(before)); err != nil {
		return ctrl.Result{}, fmt.Errorf("writing the status of traffic split %s: %w", req.NamespacedName, err)
	}
	log.FromContext(ctx).V(1).Info("Updated traffic split status", "accepted", v.Accepted, "reason", v.Reason)
	return ctrl.Result{}, nil
}

func (r *TrafficSplitReconciler) serviceExists(ctx context.Context, key types.NamespacedName) (bool, error) {
	var svc corev1.Service
	err := r.Client.Get(ctx, key, &svc)
	switch {
	case apierrors.IsNotFound(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("reading root service %s: %w", key, err)
	}
	return true, nil
}

// SetupWithManager registers the reconciler: a split is checked again when its spec
// changes or its root Service appears or disappears.
func (r *TrafficSplitReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("trafficsplit").
		For(&smi.TrafficSplit{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&corev1.Service{}, handler.EnqueueRequestsFromMapFunc(r.splitsRootedAt),
			builder.WithPredicates(predicate.Funcs{
				// Only a Service's existence matters to a split's verdict.
				UpdateFunc: func(event.UpdateEvent) bool { return false },
			})).
		Complete(r)
}

func (r *TrafficSplitReconciler) splitsRootedAt(ctx context.Context, o client.Object) []reconcile.Request {
	var list smi.TrafficSplitList
	if err := r.Client.List(ctx, &list, client.InNamespace(o.GetNamespace()), client.MatchingFields{indexSplitRoot: o.GetName()}); err != nil {
		log.FromContext(ctx).Error(err, "Listing traffic splits by root failed", "service", client.ObjectKeyFromObject(o))
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(list.Items))
	for i := range list.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
	}
	return reqs
}
