package controllers

import (
	"context"
	"fmt"
	"reflect"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
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
	"github.com/braidmesh/braid/internal/smi"
)

// Condition types Braid writes on SMI objects.
const (
	ConditionAccepted     = "Accepted"
	ConditionResolvedRefs = "ResolvedRefs"
	ConditionProgrammed   = "Programmed"
)

// Reasons of conditions written here (the others come from internal/mesh).
const (
	ReasonSuperseded  = "Superseded"
	ReasonNotAccepted = "NotAccepted"
	ReasonPending     = "Pending"
	ReasonProgrammed  = "Programmed"
	ReasonRejected    = "Rejected"
)

// AckCounter says how many connected proxies run the configuration of a Service
// (namespace/name) from a config version on, and how many rejected it (the version, or
// that Service in it).
type AckCounter interface {
	AckStatusForService(version uint64, service string) (acked, rejected, connected int, rejection string)
}

// TrafficSplitReconciler tells users, through status conditions, whether each
// TrafficSplit is accepted, whether its backends resolve, and whether every connected
// proxy runs it. It never changes a split's spec.
type TrafficSplitReconciler struct {
	Client   client.Client
	Acks     AckCounter
	Programs *SplitPrograms
	Events   events.EventRecorder
	// GAMMA says whether the cluster serves HTTPRoutes, which take precedence over
	// TrafficSplits on the ports they attach to.
	GAMMA bool
}

// +kubebuilder:rbac:groups=split.smi-spec.io,resources=trafficsplits,verbs=get;list;watch
// +kubebuilder:rbac:groups=split.smi-spec.io,resources=trafficsplits/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile computes the split's conditions and writes those that changed.
func (r *TrafficSplitReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var ts smi.TrafficSplit
	if err := r.Client.Get(ctx, req.NamespacedName, &ts); err != nil {
		if apierrors.IsNotFound(err) {
			r.Programs.Forget(req.NamespacedName)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	split := toMeshSplit(&ts)
	root, err := getService(ctx, r.Client, ts.Namespace, split.Root)
	if err != nil {
		return ctrl.Result{}, err
	}
	accepted, err := r.accepted(ctx, split, root)
	if err != nil {
		return ctrl.Result{}, err
	}
	refs, err := r.resolvedRefs(ctx, split, root)
	if err != nil {
		return ctrl.Result{}, err
	}
	before := ts.DeepCopy()
	conds := []metav1.Condition{
		condition(ConditionAccepted, accepted.Accepted, accepted.Reason, accepted.Message),
		condition(ConditionResolvedRefs, refs.Resolved, refs.Reason, refs.Message),
		r.programmed(req.NamespacedName, &ts, accepted),
	}
	for _, c := range conds {
		c.ObservedGeneration = ts.Generation
		meta.SetStatusCondition(&ts.Status.Conditions, c)
	}
	if accepted.Accepted {
		ts.Status.LastAccepted = acceptedForm(split)
	}
	if reflect.DeepEqual(before.Status, ts.Status) {
		return ctrl.Result{}, nil
	}
	if err := r.Client.Status().Patch(ctx, &ts, client.MergeFrom(before)); err != nil {
		return ctrl.Result{}, fmt.Errorf("writing the status of traffic split %s: %w", req.NamespacedName, err)
	}
	r.eventOnNewPortGap(before, &ts, refs)
	log.FromContext(ctx).V(1).Info("Updated traffic split status", "accepted", accepted.Reason, "resolvedRefs", refs.Reason)
	return ctrl.Result{}, nil
}

func condition(typ string, ok bool, reason, message string) metav1.Condition {
	c := metav1.Condition{Type: typ, Status: metav1.ConditionTrue, Reason: reason, Message: message}
	if !ok {
		c.Status = metav1.ConditionFalse
	}
	return c
}

// accepted adds to mesh.CheckSplit the rules that need other objects: only the oldest
// split of a root governs it, and HTTPRoutes attached to a port of the root take it over.
func (r *TrafficSplitReconciler) accepted(ctx context.Context, split mesh.Split, root *corev1.Service) (mesh.Verdict, error) {
	v := mesh.CheckSplit(split, root != nil)
	if !v.Accepted {
		return v, nil
	}
	if v, err := r.displacedByRoutes(ctx, split, root, v); err != nil || !v.Accepted {
		return v, err
	}
	var list smi.TrafficSplitList
	if err := r.Client.List(ctx, &list, client.InNamespace(split.Namespace), client.MatchingFields{indexSplitRoot: split.Root}); err != nil {
		return v, fmt.Errorf("listing traffic splits rooted at %s/%s: %w", split.Namespace, split.Root, err)
	}
	all := make([]mesh.Split, 0, len(list.Items))
	for i := range list.Items {
		all = append(all, toMeshSplit(&list.Items[i]))
	}
	if w, ok := mesh.Winner(all); ok && w.Name != split.Name {
		return mesh.Verdict{Reason: ReasonSuperseded, Message: fmt.Sprintf(
			"traffic split %s, created earlier, already governs root service %s; one split applies per root service, so this one is ignored until %s is deleted",
			w.Name, split.Root, w.Name)}, nil
	}
	return v, nil
}

// displacedByRoutes tells whether GAMMA HTTPRoutes govern the root's ports: all of them
// (the split applies nowhere) or some (it applies to the others).
func (r *TrafficSplitReconciler) displacedByRoutes(ctx context.Context, split mesh.Split, root *corev1.Service, v mesh.Verdict) (mesh.Verdict, error) {
	if !r.GAMMA {
		return v, nil
	}
	routes, err := routesAttachedTo(ctx, r.Client, client.ObjectKeyFromObject(root))
	if err != nil {
		return v, err
	}
	routed := mesh.RoutedPorts(root, routes)
	if len(routed) == 0 {
		return v, nil
	}
	names := make([]string, 0, len(routes))
	for _, rt := range routes {
		names = append(names, rt.Name)
	}
	if len(routed) == len(mesh.TCPPorts(root)) {
		return mesh.Verdict{Reason: ReasonSuperseded, Message: fmt.Sprintf(
			"HTTPRoutes %v govern every port of root service %s, and GAMMA routes take precedence over traffic splits, so this split applies nowhere",
			names, split.Root)}, nil
	}
	v.Message += fmt.Sprintf("; ports %v are governed by HTTPRoutes %v, which take precedence", routed, names)
	return v, nil
}

func (r *TrafficSplitReconciler) resolvedRefs(ctx context.Context, split mesh.Split, root *corev1.Service) (mesh.RefsVerdict, error) {
	services := map[string]*corev1.Service{}
	for _, b := range split.Backends {
		svc, err := getService(ctx, r.Client, split.Namespace, b.Service)
		if err != nil {
			return mesh.RefsVerdict{}, err
		}
		services[b.Service] = svc
	}
	groups := map[string]bool{}
	for _, name := range split.Matches {
		var g smi.HTTPRouteGroup
		err := r.Client.Get(ctx, types.NamespacedName{Namespace: split.Namespace, Name: name}, &g)
		switch {
		case err == nil:
			groups[name] = true
		case !apierrors.IsNotFound(err):
			return mesh.RefsVerdict{}, fmt.Errorf("reading HTTPRouteGroup %s/%s: %w", split.Namespace, name, err)
		}
	}
	return mesh.CheckRefs(split, root, services, groups), nil
}

// programmed says whether every connected proxy runs this generation. Once True for a
// generation it stays True: proxies that connect later are brought up to date by the
// config server, and the condition describes the split, not each proxy.
func (r *TrafficSplitReconciler) programmed(key types.NamespacedName, ts *smi.TrafficSplit, accepted mesh.Verdict) metav1.Condition {
	if !accepted.Accepted {
		msg := "the split is not accepted (see Accepted), so proxies do not run this generation"
		if c, ok := r.Programs.Get(key); ok {
			msg += fmt.Sprintf("; they keep running generation %d, the last accepted one", c.Generation)
		}
		return condition(ConditionProgrammed, false, ReasonNotAccepted, msg)
	}
	if cur := meta.FindStatusCondition(ts.Status.Conditions, ConditionProgrammed); cur != nil &&
		cur.Status == metav1.ConditionTrue && cur.ObservedGeneration == ts.Generation {
		return *cur
	}
	c, ok := r.Programs.Get(key)
	if !ok || c.Generation != ts.Generation {
		return condition(ConditionProgrammed, false, ReasonPending, fmt.Sprintf("generation %d is not compiled yet", ts.Generation))
	}
	r.Programs.AwaitAcks(key) // before counting, so no acknowledgement is missed
	return ackedCondition(r.Acks, ts.Namespace+"/"+ts.Spec.Service, c.Version, fmt.Sprintf("generation %d", ts.Generation))
}

// ackedCondition is the Programmed condition of what config version carries (carried,
// such as "generation 3" of an object) for Service (namespace/name): Rejected when a
// connected proxy rejected it, Pending until every connected proxy runs it.
func ackedCondition(acks AckCounter, service string, version uint64, carried string) metav1.Condition {
	acked, rejected, connected, rejection := acks.AckStatusForService(version, service)
	switch {
	case rejected > 0:
		return condition(ConditionProgrammed, false, ReasonRejected, fmt.Sprintf(
			"%d of %d connected proxies rejected config version %d, which carries %s, and keep their last good configuration; for example %s",
			rejected, connected, version, carried, rejection))
	case acked < connected:
		return condition(ConditionProgrammed, false, ReasonPending,
			fmt.Sprintf("%d of %d connected proxies run config version %d, which carries %s", acked, connected, version, carried))
	}
	return condition(ConditionProgrammed, true, ReasonProgrammed,
		fmt.Sprintf("all %d connected proxies run config version %d, which carries %s", connected, version, carried))
}

// eventOnNewPortGap records a Warning Event when backends newly lack a root port, so
// `kubectl describe trafficsplit` shows it once rather than on every reconcile.
func (r *TrafficSplitReconciler) eventOnNewPortGap(before, after *smi.TrafficSplit, refs mesh.RefsVerdict) {
	if len(refs.LacksPort) == 0 {
		return
	}
	old := meta.FindStatusCondition(before.Status.Conditions, ConditionResolvedRefs)
	if old != nil && old.Message == refs.Message {
		return
	}
	r.Events.Eventf(after, nil, corev1.EventTypeWarning, mesh.ReasonBackendLacksPort, "Resolve",
		"backends without a port of root service %s get no traffic on that port: %v", after.Spec.Service, refs.LacksPort)
}

// SetupWithManager registers the reconciler: a split is looked at again when its spec
// changes, another split on its root comes or goes, a Service it names appears, goes or
// changes ports, an HTTPRouteGroup it names appears or goes, it is compiled, or proxies
// acknowledge a version it waits for.
func (r *TrafficSplitReconciler) SetupWithManager(mgr ctrl.Manager) error {
	b := ctrl.NewControllerManagedBy(mgr)
	if r.GAMMA {
		b = b.Watches(&gatewayv1.HTTPRoute{}, handler.EnqueueRequestsFromMapFunc(r.splitsUnderRoute))
	}
	return b.
		Named("trafficsplit").
		For(&smi.TrafficSplit{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&smi.TrafficSplit{}, handler.EnqueueRequestsFromMapFunc(r.siblings),
			builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&corev1.Service{}, handler.EnqueueRequestsFromMapFunc(r.splitsNaming),
			builder.WithPredicates(predicate.Funcs{UpdateFunc: portsChanged})).
		Watches(&smi.HTTPRouteGroup{}, handler.EnqueueRequestsFromMapFunc(r.splitsMatchingOn),
			builder.WithPredicates(predicate.Funcs{UpdateFunc: func(event.UpdateEvent) bool { return false }})).
		WatchesRawSource(source.Channel(r.Programs.Events(), &handler.TypedEnqueueRequestForObject[*smi.TrafficSplit]{})).
		Complete(r)
}

func portsChanged(e event.UpdateEvent) bool {
	o, ok1 := e.ObjectOld.(*corev1.Service)
	n, ok2 := e.ObjectNew.(*corev1.Service)
	return ok1 && ok2 && !reflect.DeepEqual(o.Spec.Ports, n.Spec.Ports)
}

// siblings maps a split to the other splits on its root: which one governs may change.
func (r *TrafficSplitReconciler) siblings(ctx context.Context, o client.Object) []reconcile.Request {
	ts, ok := o.(*smi.TrafficSplit)
	if !ok {
		return nil
	}
	return r.list(ctx, ts.Namespace, indexSplitRoot, ts.Spec.Service, ts.Name)
}

// splitsUnderRoute maps an HTTPRoute to the splits rooted at the Services it attaches to.
func (r *TrafficSplitReconciler) splitsUnderRoute(ctx context.Context, o client.Object) []reconcile.Request {
	hr, ok := o.(*gatewayv1.HTTPRoute)
	if !ok {
		return nil
	}
	var reqs []reconcile.Request
	for _, parent := range routeParentNames(hr) {
		reqs = append(reqs, r.list(ctx, hr.Namespace, indexSplitRoot, parent, "")...)
	}
	return reqs
}

// splitsMatchingOn maps an HTTPRouteGroup to the splits that name it: its existence
// decides their ResolvedRefs.
func (r *TrafficSplitReconciler) splitsMatchingOn(ctx context.Context, o client.Object) []reconcile.Request {
	return r.list(ctx, o.GetNamespace(), indexSplitMatch, o.GetName(), "")
}

// splitsNaming maps a Service to the splits that name it as root or backend.
func (r *TrafficSplitReconciler) splitsNaming(ctx context.Context, o client.Object) []reconcile.Request {
	return append(r.list(ctx, o.GetNamespace(), indexSplitRoot, o.GetName(), ""),
		r.list(ctx, o.GetNamespace(), indexSplitBackend, o.GetName(), "")...)
}

func (r *TrafficSplitReconciler) list(ctx context.Context, namespace, index, value, except string) []reconcile.Request {
	splits := splitsBy(ctx, r.Client, namespace, index, value)
	reqs := make([]reconcile.Request, 0, len(splits))
	for i := range splits {
		if splits[i].Name != except {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&splits[i])})
		}
	}
	return reqs
}

// acceptedForm is what the status keeps of an accepted split, so that a restarted
// operator still knows the form proxies run while a later generation is not accepted.
func acceptedForm(s mesh.Split) *smi.AcceptedSplit {
	out := &smi.AcceptedSplit{Generation: s.Generation, Matches: s.Matches}
	for _, b := range s.Backends {
		out.Backends = append(out.Backends, smi.AcceptedBackend{Service: b.Service, MilliWeight: b.MilliWeight})
	}
	return out
}
