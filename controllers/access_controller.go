package controllers

import (
	"cmp"
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"

	accessv1alpha3 "github.com/servicemeshinterface/smi-sdk-go/pkg/apis/access/v1alpha3"
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
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	braidv1alpha1 "github.com/braidmesh/braid/api/v1alpha1"
	"github.com/braidmesh/braid/internal/configserver"
	"github.com/braidmesh/braid/internal/mesh"
	"github.com/braidmesh/braid/internal/smi"
)

// PolicySink receives the compiled inbound policy of each namespace (nil: the namespace
// is gone) and counts the acknowledgements of one workload identity's proxies.
type PolicySink interface {
	SetPolicy(namespace string, p *configserver.Policy) uint64
	AckStatusFor(version uint64, namespace, serviceAccount string) (acked, rejected, connected int, rejection string)
}

// AccessReconciler compiles the access policy of one namespace at a time: its
// TrafficTargets with the HTTPRouteGroups, TCPRoutes and UDPRoutes they reference, under
// the access mode of the MeshConfig and the namespace's annotation. It feeds the config
// server and writes every TrafficTarget's conditions. SMI scopes all of these to one
// namespace (a target's destination and specs live in its own namespace), so a change
// recompiles only its namespace.
type AccessReconciler struct {
	Client  client.Client
	Sink    PolicySink
	Waiting *NamespaceWaiter
}

// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups=braid.dev,resources=meshconfigs,verbs=get;list;watch
// +kubebuilder:rbac:groups=access.smi-spec.io,resources=traffictargets,verbs=get;list;watch
// +kubebuilder:rbac:groups=access.smi-spec.io,resources=traffictargets/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=specs.smi-spec.io,resources=tcproutes;udproutes,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=serviceaccounts,verbs=get;list;watch

// Reconcile compiles the namespace req.Name.
func (r *AccessReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	in, targets, err := r.input(ctx, req.Name)
	if err != nil || targets == nil {
		return ctrl.Result{}, err
	}
	policy, verdicts := mesh.CompileAccess(in)
	version := r.Sink.SetPolicy(in.Namespace, &configserver.Policy{Default: policy.Default, ByServiceAccount: policy.ByServiceAccount})
	var errs []error
	for i := range targets {
		if err := r.writeStatus(ctx, &targets[i], verdicts[client.ObjectKeyFromObject(&targets[i]).String()], in.Mode, version); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return ctrl.Result{}, fmt.Errorf("writing TrafficTarget status in namespace %s: %v", in.Namespace, errs)
	}
	return ctrl.Result{}, nil
}

// input reads everything namespace's policy depends on. targets is nil when the namespace
// is gone (its policy is then removed).
func (r *AccessReconciler) input(ctx context.Context, namespace string) (mesh.AccessInput, []smi.TrafficTarget, error) {
	var ns corev1.Namespace
	if err := r.Client.Get(ctx, types.NamespacedName{Name: namespace}, &ns); err != nil {
		if apierrors.IsNotFound(err) {
			r.Sink.SetPolicy(namespace, nil)
			return mesh.AccessInput{}, nil, nil
		}
		return mesh.AccessInput{}, nil, fmt.Errorf("reading namespace %s: %w", namespace, err)
	}
	var mc braidv1alpha1.MeshConfig
	spec := &mc.Spec
	if err := r.Client.Get(ctx, types.NamespacedName{Name: braidv1alpha1.MeshConfigName}, &mc); apierrors.IsNotFound(err) {
		spec = nil
	} else if err != nil {
		return mesh.AccessInput{}, nil, fmt.Errorf("reading the MeshConfig: %w", err)
	}
	in := mesh.AccessInput{
		Namespace: namespace, TrustDomain: spec.EffectiveTrustDomain(),
		Mode:        mesh.AccessMode(spec.EffectiveAccessMode(ns.Annotations[braidv1alpha1.AccessControlAnnotation])),
		RouteGroups: map[string]*mesh.RouteGroup{}, TCPRoutes: map[string]*mesh.L4Route{}, UDPRoutes: map[string]*mesh.L4Route{},
	}
	var targets smi.TrafficTargetList
	var groups smi.HTTPRouteGroupList
	var tcp smi.TCPRouteList
	var udp smi.UDPRouteList
	for _, l := range []client.ObjectList{&targets, &groups, &tcp, &udp} {
		if err := r.Client.List(ctx, l, client.InNamespace(namespace)); err != nil {
			return mesh.AccessInput{}, nil, fmt.Errorf("listing %T in namespace %s: %w", l, namespace, err)
		}
	}
	for i := range groups.Items {
		in.RouteGroups[groups.Items[i].Name] = toRouteGroup(&groups.Items[i])
	}
	for _, t := range tcp.Items {
		in.TCPRoutes[t.Name] = &mesh.L4Route{Name: t.Name, Ports: t.Spec.Matches.Ports}
	}
	for _, u := range udp.Items {
		in.UDPRoutes[u.Name] = &mesh.L4Route{Name: u.Name, Ports: u.Spec.Matches.Ports}
	}
	for i := range targets.Items {
		in.Targets = append(in.Targets, toMeshTarget(&targets.Items[i]))
	}
	accounts, err := r.serviceAccounts(ctx, in.Targets)
	if err != nil {
		return mesh.AccessInput{}, nil, err
	}
	in.ServiceAccounts = accounts
	if targets.Items == nil {
		targets.Items = []smi.TrafficTarget{}
	}
	return in, targets.Items, nil
}

// serviceAccounts reports which of the ServiceAccounts targets name exist.
func (r *AccessReconciler) serviceAccounts(ctx context.Context, targets []mesh.Target) (map[string]bool, error) {
	exist := map[string]bool{}
	for _, key := range mesh.ReferencedServiceAccounts(targets) {
		ns, name, _ := strings.Cut(key, "/")
		err := r.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &corev1.ServiceAccount{})
		switch {
		case err == nil:
			exist[key] = true
		case !apierrors.IsNotFound(err):
			return nil, fmt.Errorf("reading ServiceAccount %s: %w", key, err)
		}
	}
	return exist, nil
}

func toMeshTarget(tt *smi.TrafficTarget) mesh.Target {
	subject := func(s accessv1alpha3.IdentityBindingSubject) mesh.Subject {
		return mesh.Subject{Kind: s.Kind, Name: s.Name, Namespace: s.Namespace}
	}
	out := mesh.Target{Namespace: tt.Namespace, Name: tt.Name, Destination: subject(tt.Spec.Destination)}
	for _, s := range tt.Spec.Sources {
		out.Sources = append(out.Sources, subject(s))
	}
	for _, r := range tt.Spec.Rules {
		out.Rules = append(out.Rules, mesh.TargetRule{Kind: r.Kind, Name: r.Name, Matches: r.Matches})
	}
	return out
}

// writeStatus records what the compiler decided about a target, and whether the proxies
// of its destination run it.
func (r *AccessReconciler) writeStatus(ctx context.Context, tt *smi.TrafficTarget, v mesh.TargetVerdict, mode mesh.AccessMode, version uint64) error {
	before := tt.DeepCopy()
	resolved := condition(ConditionResolvedRefs, v.Resolved.Resolved, v.Resolved.Reason, v.Resolved.Message)
	if !v.Accepted.Accepted {
		resolved = condition(ConditionResolvedRefs, false, ReasonNotAccepted, "the target is not accepted (see Accepted), so its references were not resolved")
	}
	for _, c := range []metav1.Condition{
		condition(ConditionAccepted, v.Accepted.Accepted, v.Accepted.Reason, v.Accepted.Message),
		resolved,
		r.programmed(tt, v, mode, version),
	} {
		c.ObservedGeneration = tt.Generation
		meta.SetStatusCondition(&tt.Status.Conditions, c)
	}
	if reflect.DeepEqual(before.Status, tt.Status) {
		return nil
	}
	if err := r.Client.Status().Patch(ctx, tt, client.MergeFrom(before)); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("TrafficTarget %s: %w", tt.Name, err)
	}
	return nil
}

func (r *AccessReconciler) programmed(tt *smi.TrafficTarget, v mesh.TargetVerdict, mode mesh.AccessMode, version uint64) metav1.Condition {
	switch {
	case !v.Accepted.Accepted:
		return condition(ConditionProgrammed, false, ReasonNotAccepted, "the target is not accepted (see Accepted) and grants nothing")
	case !v.Enforced:
		return condition(ConditionProgrammed, false, mesh.ReasonNotEnforced, fmt.Sprintf(
			"namespace %s is in %s access mode: every client gets in and TrafficTargets are not enforced; set the namespace annotation %s to Targeted or Strict, or spec.accessControl.mode of MeshConfig %s, to enforce them",
			tt.Namespace, mode, braidv1alpha1.AccessControlAnnotation, braidv1alpha1.MeshConfigName))
	}
	sa := tt.Spec.Destination.Name
	r.Waiting.Await(tt.Namespace) // before counting, so no acknowledgement is missed
	acked, rejected, connected, rejection := r.ackStatus(tt, version)
	switch {
	case rejected > 0:
		return condition(ConditionProgrammed, false, ReasonRejected, fmt.Sprintf(
			"%d of %d connected proxies of ServiceAccount %s and of its sources rejected config version %d and keep their last good configuration; for example %s", rejected, connected, sa, version, rejection))
	case acked < connected:
		return condition(ConditionProgrammed, false, ReasonPending, fmt.Sprintf(
			"%d of %d connected proxies of ServiceAccount %s and of its sources run config version %d", acked, connected, sa, version))
	}
	return condition(ConditionProgrammed, true, ReasonProgrammed, fmt.Sprintf(
		"all %d connected proxies of ServiceAccount %s enforce it, and its sources' proxies reach it (config version %d)", connected, sa, version))
}

// ackStatus counts the connected proxies a target's grant must reach: those of its
// destination, which enforce it, and those of its sources, which are sent the
// destination's Services only once a grant lets them reach it (configserver scoping).
func (r *AccessReconciler) ackStatus(tt *smi.TrafficTarget, version uint64) (acked, rejected, connected int, rejection string) {
	type identity struct{ namespace, serviceAccount string }
	ids := []identity{{tt.Namespace, tt.Spec.Destination.Name}}
	for _, src := range tt.Spec.Sources {
		id := identity{cmp.Or(src.Namespace, tt.Namespace), src.Name}
		if src.Kind == "ServiceAccount" && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	for _, id := range ids {
		a, rj, c, why := r.Sink.AckStatusFor(version, id.namespace, id.serviceAccount)
		acked, rejected, connected = acked+a, rejected+rj, connected+c
		rejection = cmp.Or(rejection, why)
	}
	return acked, rejected, connected, rejection
}

// CompileAll compiles every namespace; the operator runs it once before serving proxies.
func (r *AccessReconciler) CompileAll(ctx context.Context) error {
	var list corev1.NamespaceList
	if err := r.Client.List(ctx, &list); err != nil {
		return fmt.Errorf("listing namespaces: %w", err)
	}
	for _, ns := range list.Items {
		if _, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Name: ns.Name}}); err != nil {
			return err
		}
	}
	return nil
}

// SetupWithManager registers the reconciler: a namespace is compiled again when it
// changes, when a TrafficTarget, HTTPRouteGroup, TCPRoute or UDPRoute in it changes, when
// the MeshConfig changes, and when proxies acknowledge a version its targets wait for.
func (r *AccessReconciler) SetupWithManager(mgr ctrl.Manager) error {
	toNamespace := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: o.GetNamespace()}}}
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("access").
		For(&corev1.Namespace{}).
		Watches(&smi.TrafficTarget{}, toNamespace).
		Watches(&smi.HTTPRouteGroup{}, toNamespace).
		Watches(&smi.TCPRoute{}, toNamespace).
		Watches(&smi.UDPRoute{}, toNamespace).
		Watches(&braidv1alpha1.MeshConfig{}, handler.EnqueueRequestsFromMapFunc(r.allNamespaces)).
		Watches(&corev1.ServiceAccount{}, handler.EnqueueRequestsFromMapFunc(r.namespacesNaming),
			builder.WithPredicates(predicate.Funcs{UpdateFunc: func(event.UpdateEvent) bool { return false }})).
		WatchesRawSource(source.Channel(r.Waiting.Events(), &handler.TypedEnqueueRequestForObject[*corev1.Namespace]{})).
		Complete(r)
}

// namespacesNaming maps a ServiceAccount that appeared or went to the namespaces whose
// targets may name it: its own, and those with targets admitting sources from it.
func (r *AccessReconciler) namespacesNaming(ctx context.Context, sa client.Object) []reconcile.Request {
	reqs := []reconcile.Request{{NamespacedName: types.NamespacedName{Name: sa.GetNamespace()}}}
	var list smi.TrafficTargetList
	if err := r.Client.List(ctx, &list, client.MatchingFields{indexTargetSourceNamespace: sa.GetNamespace()}); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Listing TrafficTargets by source namespace", "namespace", sa.GetNamespace())
		return reqs
	}
	for _, tt := range list.Items {
		if tt.Namespace != sa.GetNamespace() {
			reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Name: tt.Namespace}})
		}
	}
	return reqs
}

func (r *AccessReconciler) allNamespaces(ctx context.Context, _ client.Object) []reconcile.Request {
	var list corev1.NamespaceList
	if err := r.Client.List(ctx, &list); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Listing namespaces after a MeshConfig change")
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(list.Items))
	for _, ns := range list.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Name: ns.Name}})
	}
	return reqs
}

// NamespaceWaiter wakes the access reconciler for namespaces whose targets wait for
// proxies to acknowledge, whenever acknowledgements change.
type NamespaceWaiter struct {
	mu      sync.Mutex
	waiting map[string]bool
	events  chan event.TypedGenericEvent[*corev1.Namespace]
}

// NewNamespaceWaiter returns a waiter; Start delivers its events.
func NewNamespaceWaiter() *NamespaceWaiter {
	return &NamespaceWaiter{waiting: map[string]bool{}, events: make(chan event.TypedGenericEvent[*corev1.Namespace], 64)}
}

// Await asks for namespace to be reconciled when acknowledgements change.
func (w *NamespaceWaiter) Await(namespace string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.waiting[namespace] = true
}

// AcksChanged wakes every waiting namespace.
func (w *NamespaceWaiter) AcksChanged() {
	w.mu.Lock()
	names := make([]string, 0, len(w.waiting))
	for ns := range w.waiting {
		names = append(names, ns)
	}
	clear(w.waiting)
	w.mu.Unlock()
	slices.Sort(names)
	for _, ns := range names {
		ev := event.TypedGenericEvent[*corev1.Namespace]{Object: &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}}
		select {
		case w.events <- ev:
		default:
			// The queue is full of wake-ups already; re-arm so the next change wakes it.
			w.Await(ns)
		}
	}
}

// Events is the source of reconcile requests.
func (w *NamespaceWaiter) Events() <-chan event.TypedGenericEvent[*corev1.Namespace] { return w.events }
