package controllers

import (
	"context"
	"fmt"
	"slices"
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	braidv1alpha1 "github.com/braidmesh/braid/api/v1alpha1"
	"github.com/braidmesh/braid/internal/mesh"
	"github.com/braidmesh/braid/internal/smi"
	"github.com/braidmesh/braid/proxy/api"
)

// ConfigSink receives the compiled configuration of each Service (nil: the Service is
// gone) and says from which config version proxies run it.
type ConfigSink interface {
	SetService(namespace, name string, svc *api.Service) uint64
}

// ServiceReconciler compiles one Service at a time, with its EndpointSlices, the
// TrafficSplits rooted at it, the producer HTTPRoutes attached to it and the backends of
// both, and hands the result to the config server. A change to one Service, slice, split
// or route recompiles only the roots it affects.
type ServiceReconciler struct {
	Client   client.Client
	Sink     ConfigSink
	Programs *SplitPrograms
	// RoutePrograms records which generation of each HTTPRoute went into which version
	// of each parent Service; nil when the cluster serves no HTTPRoutes.
	RoutePrograms *RoutePrograms
	// GAMMA says whether the cluster serves Gateway API HTTPRoutes (v1). Without them the
	// reconciler neither reads nor watches routes.
	GAMMA bool

	mu sync.Mutex
	// lastGood holds, per root Service, the last accepted form of the split that governs
	// it, so a split that stops being valid keeps its last good weights.
	lastGood map[types.NamespacedName]mesh.Split
	// uses and usedBy record what each root's last compile read (backend Services and
	// HTTPRouteGroups, by dependencyKey), so a change to them recompiles the root even
	// when only a last-good form, no longer in any spec, still names them.
	uses   map[types.NamespacedName][]string
	usedBy map[string]map[types.NamespacedName]bool
	// routesOf holds, per root Service, the HTTPRoutes its last compile recorded.
	routesOf map[types.NamespacedName][]RouteParent
}

// +kubebuilder:rbac:groups="",resources=services,verbs=get;list;watch
// +kubebuilder:rbac:groups=discovery.k8s.io,resources=endpointslices,verbs=get;list;watch
// +kubebuilder:rbac:groups=split.smi-spec.io,resources=trafficsplits,verbs=get;list;watch
// +kubebuilder:rbac:groups=gateway.networking.k8s.io,resources=httproutes,verbs=get;list;watch

// Reconcile compiles the Service req names.
func (r *ServiceReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var svc corev1.Service
	if err := r.Client.Get(ctx, req.NamespacedName, &svc); err != nil {
		if apierrors.IsNotFound(err) {
			r.forget(req.NamespacedName)
			r.Sink.SetService(req.Namespace, req.Name, nil)
			r.recordRoutes(req.NamespacedName, nil, 0)
			r.recordDependencies(req.NamespacedName, mesh.ServiceInput{})
			return ctrl.Result{}, r.forgetSplitsExcept(ctx, req.NamespacedName, "")
		}
		return ctrl.Result{}, fmt.Errorf("reading service %s: %w", req.NamespacedName, err)
	}
	in, err := r.input(ctx, &svc)
	if err != nil {
		return ctrl.Result{}, err
	}
	out := mesh.CompileService(in)
	version := r.Sink.SetService(svc.Namespace, svc.Name, out)
	r.recordDependencies(req.NamespacedName, in)
	// A split is programmed where it governs a compiled port: not on an ExternalName
	// Service, nor where HTTPRoutes displace it from every port.
	recorded := ""
	if in.Split != nil && out != nil && (len(in.HTTPRoutes) == 0 || governs(out, in.Split.Key())) {
		r.Programs.Record(types.NamespacedName{Namespace: in.Split.Namespace, Name: in.Split.Name}, in.Split.Generation, version)
		recorded = in.Split.Name
	}
	if out != nil {
		r.recordRoutes(req.NamespacedName, in.HTTPRoutes, version)
	} else {
		r.recordRoutes(req.NamespacedName, nil, version)
	}
	log.FromContext(ctx).V(1).Info("Compiled service", "version", version, "split", in.Split != nil, "httpRoutes", len(in.HTTPRoutes))
	return ctrl.Result{}, r.forgetSplitsExcept(ctx, req.NamespacedName, recorded)
}

// forgetSplitsExcept drops from the tracker every split rooted at root but keep: what
// they last compiled into no longer runs, so it must not make them Programmed.
func (r *ServiceReconciler) forgetSplitsExcept(ctx context.Context, root types.NamespacedName, keep string) error {
	var list smi.TrafficSplitList
	if err := r.Client.List(ctx, &list, client.InNamespace(root.Namespace), client.MatchingFields{indexSplitRoot: root.Name}); err != nil {
		return fmt.Errorf("listing traffic splits rooted at %s: %w", root, err)
	}
	for i := range list.Items {
		if list.Items[i].Name != keep {
			r.Programs.Forget(client.ObjectKeyFromObject(&list.Items[i]))
		}
	}
	return nil
}

// recordRoutes notes that the generations of the HTTPRoutes attached to root run from
// version on, and forgets the routes its previous compile recorded that are attached no
// longer: what they compiled into no longer runs.
func (r *ServiceReconciler) recordRoutes(root types.NamespacedName, routes []mesh.HTTPRoute, version uint64) {
	if r.RoutePrograms == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.routesOf == nil {
		r.routesOf = map[types.NamespacedName][]RouteParent{}
	}
	now := make([]RouteParent, 0, len(routes))
	for _, hr := range routes {
		k := RouteParent{Route: types.NamespacedName{Namespace: hr.Namespace, Name: hr.Name}, Parent: root}
		r.RoutePrograms.Record(k, hr.Generation, version)
		now = append(now, k)
	}
	for _, k := range r.routesOf[root] {
		if !slices.Contains(now, k) {
			r.RoutePrograms.Forget(k)
		}
	}
	if len(now) == 0 {
		delete(r.routesOf, root)
		return
	}
	r.routesOf[root] = now
}

// dependencyKey names a Service or an HTTPRouteGroup a compile read.
func dependencyKey(kind, namespace, name string) string { return kind + "/" + namespace + "/" + name }

// recordDependencies replaces what root's last compile read.
func (r *ServiceReconciler) recordDependencies(root types.NamespacedName, in mesh.ServiceInput) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.usedBy == nil {
		r.usedBy = map[string]map[types.NamespacedName]bool{}
		r.uses = map[types.NamespacedName][]string{}
	}
	for _, dep := range r.uses[root] {
		delete(r.usedBy[dep], root)
		if len(r.usedBy[dep]) == 0 {
			delete(r.usedBy, dep)
		}
	}
	var deps []string
	for name := range in.Backends {
		deps = append(deps, dependencyKey("Service", root.Namespace, name))
	}
	if in.Split != nil {
		for _, name := range in.Split.Matches {
			deps = append(deps, dependencyKey("HTTPRouteGroup", root.Namespace, name))
		}
	}
	if len(deps) == 0 {
		delete(r.uses, root)
		return
	}
	r.uses[root] = deps
	for _, dep := range deps {
		if r.usedBy[dep] == nil {
			r.usedBy[dep] = map[types.NamespacedName]bool{}
		}
		r.usedBy[dep][root] = true
	}
}

// rootsUsing lists the roots whose last compile read the dependency.
func (r *ServiceReconciler) rootsUsing(dep string) []reconcile.Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	reqs := make([]reconcile.Request, 0, len(r.usedBy[dep]))
	for root := range r.usedBy[dep] {
		reqs = append(reqs, reconcile.Request{NamespacedName: root})
	}
	return reqs
}

// CompileAll compiles every Service once. The operator runs it when its cache has
// synced, before proxies are served, so no proxy ever receives a partial mesh.
func (r *ServiceReconciler) CompileAll(ctx context.Context) error {
	var list corev1.ServiceList
	if err := r.Client.List(ctx, &list); err != nil {
		return fmt.Errorf("listing services: %w", err)
	}
	for i := range list.Items {
		if _, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])}); err != nil {
			return fmt.Errorf("compiling service %s/%s: %w", list.Items[i].Namespace, list.Items[i].Name, err)
		}
	}
	return nil
}

// input gathers everything the Service's configuration depends on.
func (r *ServiceReconciler) input(ctx context.Context, svc *corev1.Service) (mesh.ServiceInput, error) {
	key := client.ObjectKeyFromObject(svc)
	in := mesh.ServiceInput{Backends: map[string]mesh.Endpoints{}, RouteGroups: map[string]*mesh.RouteGroup{}}
	var err error
	if in.Endpoints, err = r.endpoints(ctx, svc); err != nil {
		return in, err
	}
	if in.Split, err = r.split(ctx, key); err != nil {
		return in, err
	}
	if in.HTTPRoutes, err = r.httpRoutes(ctx, key); err != nil {
		return in, err
	}
	var names []string
	if in.Split != nil {
		for _, b := range in.Split.Backends {
			names = append(names, b.Service)
		}
		if err := r.routeGroups(ctx, svc.Namespace, in.Split.Matches, in.RouteGroups); err != nil {
			return in, err
		}
	}
	for _, route := range in.HTTPRoutes {
		names = append(names, route.BackendServices()...)
	}
	for _, name := range names {
		if _, done := in.Backends[name]; done {
			continue
		}
		if in.Backends[name], err = r.backend(ctx, svc.Namespace, name); err != nil {
			return in, err
		}
	}
	return in, r.workloads(ctx, &in)
}

// governs reports whether any port of a compiled Service was compiled from the split.
func governs(out *api.Service, split string) bool {
	for _, p := range out.GetPorts() {
		if p.GetSplit() == split {
			return true
		}
	}
	return false
}

// httpRoutes returns the producer HTTPRoutes whose parentRefs name the Service; the
// compiler decides which of its ports each attaches to.
func (r *ServiceReconciler) httpRoutes(ctx context.Context, svc types.NamespacedName) ([]mesh.HTTPRoute, error) {
	if !r.GAMMA {
		return nil, nil
	}
	return routesAttachedTo(ctx, r.Client, svc)
}

// routesAttachedTo lists the HTTPRoutes whose parentRefs name the Service svc.
func routesAttachedTo(ctx context.Context, c client.Client, svc types.NamespacedName) ([]mesh.HTTPRoute, error) {
	var list gatewayv1.HTTPRouteList
	if err := c.List(ctx, &list, client.InNamespace(svc.Namespace), client.MatchingFields{indexHTTPRouteParent: svc.Name}); err != nil {
		return nil, fmt.Errorf("listing HTTPRoutes attached to %s: %w", svc, err)
	}
	out := make([]mesh.HTTPRoute, 0, len(list.Items))
	for i := range list.Items {
		out = append(out, toMeshHTTPRoute(&list.Items[i]))
	}
	return out, nil
}

func (r *ServiceReconciler) endpoints(ctx context.Context, svc *corev1.Service) (mesh.Endpoints, error) {
	var list discoveryv1.EndpointSliceList
	if err := r.Client.List(ctx, &list, client.InNamespace(svc.Namespace), client.MatchingFields{indexSliceService: svc.Name}); err != nil {
		return mesh.Endpoints{}, fmt.Errorf("listing endpoint slices of %s/%s: %w", svc.Namespace, svc.Name, err)
	}
	ep := mesh.Endpoints{Service: svc, Slices: make([]*discoveryv1.EndpointSlice, 0, len(list.Items))}
	for i := range list.Items {
		ep.Slices = append(ep.Slices, &list.Items[i])
	}
	return ep, nil
}

// +kubebuilder:rbac:groups=specs.smi-spec.io,resources=httproutegroups,verbs=get;list;watch

func (r *ServiceReconciler) routeGroups(ctx context.Context, namespace string, names []string, into map[string]*mesh.RouteGroup) error {
	for _, name := range names {
		var g smi.HTTPRouteGroup
		err := r.Client.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name}, &g)
		switch {
		case apierrors.IsNotFound(err):
			continue
		case err != nil:
			return fmt.Errorf("reading HTTPRouteGroup %s/%s: %w", namespace, name, err)
		}
		into[name] = toRouteGroup(&g)
	}
	return nil
}

func (r *ServiceReconciler) backend(ctx context.Context, namespace, name string) (mesh.Endpoints, error) {
	var svc corev1.Service
	if err := r.Client.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name}, &svc); err != nil {
		if apierrors.IsNotFound(err) {
			return mesh.Endpoints{}, nil
		}
		return mesh.Endpoints{}, fmt.Errorf("reading backend service %s/%s: %w", namespace, name, err)
	}
	return r.endpoints(ctx, &svc)
}

// split returns the split that governs the root, in the form to program: the winner of
// the splits rooted there as it is now if it is valid, or as it was when last accepted.
// A split that was never valid is not programmed.
func (r *ServiceReconciler) split(ctx context.Context, root types.NamespacedName) (*mesh.Split, error) {
	var list smi.TrafficSplitList
	if err := r.Client.List(ctx, &list, client.InNamespace(root.Namespace), client.MatchingFields{indexSplitRoot: root.Name}); err != nil {
		return nil, fmt.Errorf("listing traffic splits rooted at %s: %w", root, err)
	}
	all := make([]mesh.Split, 0, len(list.Items))
	stored := map[string]*smi.AcceptedSplit{}
	for i := range list.Items {
		all = append(all, toMeshSplit(&list.Items[i]))
		stored[list.Items[i].Name] = list.Items[i].Status.LastAccepted
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	w, ok := mesh.Winner(all)
	switch {
	case !ok:
		delete(r.lastGood, root)
		return nil, nil
	case mesh.CheckSplit(w, true).Accepted:
		if r.lastGood == nil {
			r.lastGood = map[types.NamespacedName]mesh.Split{}
		}
		r.lastGood[root] = w
		return &w, nil
	}
	if old, ok := r.lastGood[root]; ok && old.Name == w.Name {
		return &old, nil
	}
	// After a restart the memory is empty: the split's status keeps its last accepted form.
	if last := stored[w.Name]; last != nil {
		old := fromAcceptedForm(w, last)
		if mesh.CheckSplit(old, true).Accepted {
			if r.lastGood == nil {
				r.lastGood = map[types.NamespacedName]mesh.Split{}
			}
			r.lastGood[root] = old
			return &old, nil
		}
	}
	delete(r.lastGood, root)
	return nil, nil
}

// fromAcceptedForm is split w as it was last accepted.
func fromAcceptedForm(w mesh.Split, last *smi.AcceptedSplit) mesh.Split {
	old := w
	old.Generation, old.Matches, old.Backends = last.Generation, last.Matches, nil
	for _, b := range last.Backends {
		old.Backends = append(old.Backends, mesh.SplitBackend{Service: b.Service, MilliWeight: b.MilliWeight})
	}
	return old
}

func (r *ServiceReconciler) forget(root types.NamespacedName) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.lastGood, root)
}

// SetupWithManager registers the reconciler: a Service is recompiled when it, one of its
// EndpointSlices, a pod of those slices, a split rooted at it, a backend of such a split,
// an HTTPRouteGroup the split matches on, an HTTPRoute naming it as parent, or a backend
// of such a route changes.
func (r *ServiceReconciler) SetupWithManager(mgr ctrl.Manager) error {
	b := ctrl.NewControllerManagedBy(mgr).
		Named("service").
		For(&corev1.Service{}).
		Watches(&corev1.Service{}, handler.EnqueueRequestsFromMapFunc(r.rootsOfBackend)).
		Watches(&discoveryv1.EndpointSlice{}, handler.EnqueueRequestsFromMapFunc(r.forSlice)).
		// A pod decides whether its endpoints are reached through its proxy, and under
		// which identity (workloads); the informers of pods and of EndpointSlices do not
		// keep each other's order, so a slice can arrive before the pod it points at.
		Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(r.forPod),
			builder.WithPredicates(predicate.Funcs{UpdateFunc: meshingChanged, GenericFunc: func(event.GenericEvent) bool { return false }})).
		Watches(&smi.TrafficSplit{}, handler.EnqueueRequestsFromMapFunc(rootOfSplit)).
		Watches(&smi.HTTPRouteGroup{}, handler.EnqueueRequestsFromMapFunc(r.rootsMatchingOn)).
		// Endpoint identities carry the trust domain: a new one recompiles every Service
		// (it also changes every certificate). No other MeshConfig field does.
		Watches(&braidv1alpha1.MeshConfig{}, handler.EnqueueRequestsFromMapFunc(r.allServices),
			builder.WithPredicates(predicate.Funcs{UpdateFunc: trustDomainChanged}))
	if r.GAMMA {
		// Status writes do not change a route's generation, and do not recompile anything.
		b = b.Watches(&gatewayv1.HTTPRoute{}, handler.EnqueueRequestsFromMapFunc(parentsOfRoute),
			builder.WithPredicates(predicate.GenerationChangedPredicate{}))
	}
	return b.Complete(r)
}

func (r *ServiceReconciler) forSlice(ctx context.Context, o client.Object) []reconcile.Request {
	name := o.GetLabels()[discoveryv1.LabelServiceName]
	if name == "" {
		return nil
	}
	svc := &corev1.Service{}
	svc.Namespace, svc.Name = o.GetNamespace(), name
	return append(r.rootsOfBackend(ctx, svc), reconcile.Request{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: name}})
}

// forPod maps a pod to the Services (and the roots using them) whose EndpointSlices point
// at it.
func (r *ServiceReconciler) forPod(ctx context.Context, o client.Object) []reconcile.Request {
	var list discoveryv1.EndpointSliceList
	if err := r.Client.List(ctx, &list, client.InNamespace(o.GetNamespace()), client.MatchingFields{indexSlicePod: o.GetName()}); err != nil {
		log.FromContext(ctx).Error(err, "Listing EndpointSlices by pod failed", "namespace", o.GetNamespace(), "pod", o.GetName())
		return nil
	}
	var reqs []reconcile.Request
	for i := range list.Items {
		reqs = append(reqs, r.forSlice(ctx, &list.Items[i])...)
	}
	return reqs
}

// meshingChanged tells whether a pod update changes what workloads reads of it: its IPs,
// whether it was injected, its ServiceAccount.
func meshingChanged(e event.UpdateEvent) bool {
	old, okOld := e.ObjectOld.(*corev1.Pod)
	pod, okNew := e.ObjectNew.(*corev1.Pod)
	if !okOld || !okNew {
		return true
	}
	return !slices.Equal(old.Status.PodIPs, pod.Status.PodIPs) ||
		old.Annotations[InjectedAnnotation] != pod.Annotations[InjectedAnnotation] ||
		old.Spec.ServiceAccountName != pod.Spec.ServiceAccountName
}

// rootsOfBackend maps a Service to the roots of the splits that name it as a backend, to
// the roots whose last compile read it (a last-good form no spec names any more), and to
// the parents of the HTTPRoutes that name it.
func (r *ServiceReconciler) rootsOfBackend(ctx context.Context, o client.Object) []reconcile.Request {
	reqs := rootsOf(splitsBy(ctx, r.Client, o.GetNamespace(), indexSplitBackend, o.GetName()))
	reqs = append(reqs, r.rootsUsing(dependencyKey("Service", o.GetNamespace(), o.GetName()))...)
	if r.GAMMA {
		routes := routesBy(ctx, r.Client, o.GetNamespace(), indexHTTPRouteBackend, o.GetName())
		for i := range routes {
			reqs = append(reqs, parentsOfRoute(ctx, &routes[i])...)
		}
	}
	return reqs
}

// parentsOfRoute maps an HTTPRoute to the Services of its namespace that it names as
// parents. On an update it is called with the old and the new route, so a parent the
// route leaves is recompiled too.
func parentsOfRoute(_ context.Context, o client.Object) []reconcile.Request {
	hr, ok := o.(*gatewayv1.HTTPRoute)
	if !ok {
		return nil
	}
	names := routeParentNames(hr)
	reqs := make([]reconcile.Request, 0, len(names))
	for _, name := range names {
		reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: hr.Namespace, Name: name}})
	}
	return reqs
}

// rootsMatchingOn maps an HTTPRouteGroup to the roots of the splits that match on it.
func (r *ServiceReconciler) rootsMatchingOn(ctx context.Context, o client.Object) []reconcile.Request {
	return append(rootsOf(splitsBy(ctx, r.Client, o.GetNamespace(), indexSplitMatch, o.GetName())),
		r.rootsUsing(dependencyKey("HTTPRouteGroup", o.GetNamespace(), o.GetName()))...)
}

func rootOfSplit(_ context.Context, o client.Object) []reconcile.Request {
	ts, ok := o.(*smi.TrafficSplit)
	if !ok || ts.Spec.Service == "" {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: ts.Namespace, Name: ts.Spec.Service}}}
}

func trustDomainChanged(e event.UpdateEvent) bool {
	o, ok1 := e.ObjectOld.(*braidv1alpha1.MeshConfig)
	n, ok2 := e.ObjectNew.(*braidv1alpha1.MeshConfig)
	return ok1 && ok2 && o.Spec.EffectiveTrustDomain() != n.Spec.EffectiveTrustDomain()
}

// allServices enqueues every Service.
func (r *ServiceReconciler) allServices(ctx context.Context, _ client.Object) []reconcile.Request {
	var list corev1.ServiceList
	if err := r.Client.List(ctx, &list); err != nil {
		log.FromContext(ctx).Error(err, "Listing services after a trust domain change")
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(list.Items))
	for i := range list.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
	}
	return reqs
}
