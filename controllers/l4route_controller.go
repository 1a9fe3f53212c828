package controllers

import (
	"context"
	"fmt"
	"reflect"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	"github.com/braidmesh/braid/internal/mesh"
	"github.com/braidmesh/braid/internal/smi"
)

// ReasonInvalidPort is the reason of a TCPRoute or UDPRoute with a port out of range.
const ReasonInvalidPort = "InvalidPort"

// L4RouteReconciler tells users whether a TCPRoute or UDPRoute is valid: its ports are
// real port numbers (none means every port). TrafficTargets reference routes; the access
// reconciler reports on those references.
type L4RouteReconciler[T client.Object] struct {
	Client client.Client
	Kind   string
	// New returns an empty route of the reconciled kind; Ports and Status read it.
	New    func() T
	Ports  func(T) []int
	Status func(T) *smi.Status
}

// +kubebuilder:rbac:groups=specs.smi-spec.io,resources=tcproutes/status;udproutes/status,verbs=get;update;patch

// Reconcile checks the route and records the verdict.
func (r *L4RouteReconciler[T]) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	route := r.New()
	if err := r.Client.Get(ctx, req.NamespacedName, route); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	var bad []string
	for i, p := range r.Ports(route) {
		if p < 1 || p > 65535 {
			bad = append(bad, fmt.Sprintf("spec.matches.ports[%d]: %d is not a port number (1-65535)", i, p))
		}
	}
	v := mesh.Verdict{Accepted: true, Reason: ReasonAccepted, Message: describePorts(r.Ports(route))}
	if len(bad) > 0 {
		v = mesh.Verdict{Reason: ReasonInvalidPort, Message: strings.Join(bad, "; ") + "; TrafficTargets get no port from them"}
	}
	before := route.DeepCopyObject().(client.Object)
	beforeStatus := *r.Status(route)
	beforeStatus.Conditions = append([]metav1.Condition(nil), beforeStatus.Conditions...)
	for _, c := range specConditions(v, route.GetNamespace()) {
		c.ObservedGeneration = route.GetGeneration()
		meta.SetStatusCondition(&r.Status(route).Conditions, c)
	}
	if reflect.DeepEqual(beforeStatus, *r.Status(route)) {
		return ctrl.Result{}, nil
	}
	if err := r.Client.Status().Patch(ctx, route, client.MergeFrom(before)); err != nil {
		return ctrl.Result{}, fmt.Errorf("writing the status of %s %s: %w", r.Kind, req.NamespacedName, err)
	}
	return ctrl.Result{}, nil
}

func describePorts(ports []int) string {
	if len(ports) == 0 {
		return "admits every port"
	}
	return fmt.Sprintf("admits ports %v", ports)
}

// Reasons shared with internal/mesh's verdicts.
const (
	ReasonAccepted     = "Accepted"
	ReasonResolvedRefs = "ResolvedRefs"
)

func setupL4RouteReconcilers(mgr ctrl.Manager) error {
	tcp := &L4RouteReconciler[*smi.TCPRoute]{
		Client: mgr.GetClient(), Kind: "TCPRoute", New: func() *smi.TCPRoute { return &smi.TCPRoute{} },
		Ports: func(r *smi.TCPRoute) []int { return r.Spec.Matches.Ports }, Status: func(r *smi.TCPRoute) *smi.Status { return &r.Status },
	}
	udp := &L4RouteReconciler[*smi.UDPRoute]{
		Client: mgr.GetClient(), Kind: "UDPRoute", New: func() *smi.UDPRoute { return &smi.UDPRoute{} },
		Ports: func(r *smi.UDPRoute) []int { return r.Spec.Matches.Ports }, Status: func(r *smi.UDPRoute) *smi.Status { return &r.Status },
	}
	if err := setupL4(mgr, tcp); err != nil {
		return err
	}
	return setupL4(mgr, udp)
}

func setupL4[T client.Object](mgr ctrl.Manager, r *L4RouteReconciler[T]) error {
	err := ctrl.NewControllerManagedBy(mgr).
		Named(strings.ToLower(r.Kind)).
		For(r.New(), builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Complete(r)
	if err != nil {
		return fmt.Errorf("setting up the %s reconciler: %w", r.Kind, err)
	}
	return nil
}
