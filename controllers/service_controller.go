package controllers

import (
	"context"
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

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
// TrafficSplits rooted at it and their backends, and hands the result to the config
// server. A change to one Service, slice or split recompiles only the roots it affects.
type ServiceReconciler struct {
	Client   client.Client
	Sink     ConfigSink
	Programs *Programs

	mu sync.Mutex
	// lastGood holds, per root Service, the last accepted form of the split that governs
	// it, so a split that stops being valid keeps its last good weights.
	lastGood map[types.NamespacedName]mesh.Split
}

// +kubebuilder:rbac:groups="",resources=services,verbs=get;list;watch
// +kubebuilder:rbac:groups=discovery.k8s.io,resources=endpointslices,verbs=get;list;watch
// +kubebuilder:rbac:groups=split.smi-spec.io,resources=trafficsplits,verbs=get;list;watch

// Reconcile compiles the Service req names.
func (r *ServiceReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var svc corev1.Service
	if err := r.Client.Get(ctx, req.NamespacedName, &svc); err != nil {
		if apierrors.IsNotFound(err) {
			r.forget(req.NamespacedName)
			r.Sink.SetService(req.Namespace, req.Name, nil)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, fmt.Errorf("reading service %s: %w", req.NamespacedName, err)
	}
	in := mesh.ServiceInput{Backends: map[string]mesh.Endpoints{}, RouteGroups: map[string]*mesh.RouteGroup{}}
	var err error
	if in.Endpoints, err = r.endpoints(ctx, &svc); err != nil {
		return ctrl.Result{}, err
	}
	if in.Split, err = r.split(ctx, req.NamespacedName); err != nil {
		return ctrl.Result{}, err
	}
	if in.Split != nil {
		for _, b := range in.Split.Backends {
			if _, done := in.Backends[b.Service]; done {
				continue
			}
			if in.Backends[b.Service], err = r.backend(ctx, req.Namespace, b.Service); err != nil {
				return ctrl.Result{}, err
			}
		}
		if err := r.routeGroups(ctx, req.Namespace, in.Split.Matches, in.RouteGroups); err != nil {
			return ctrl.Result{}, err
		}
	}
	version := r.Sink.SetService(svc.Namespace, svc.Name, mesh.CompileService(in))
	if in.Split != nil {
		r.Programs.Record(types.NamespacedName{Namespace: in.Split.Namespace, Name: in.Split.Name}, in.Split.Generation, version)
	}
	log.FromContext(ctx).V(1).Info("Compiled service", "version", version, "split", in.Split != nil)
	return ctrl.Result{}, nil
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
	for i := range list.Items {
		all = append(all, toMeshSplit(&list.Items[i]))
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
	delete(r.lastGood, root)
	return nil, nil
}

func (r *ServiceReconciler) forget(root types.NamespacedName) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.lastGood, root)
}

// SetupWithManager registers the reconciler: a Service is recompiled when it, one of its
// EndpointSlices, a split rooted at it, a backend of such a split, or an HTTPRouteGroup
// the split matches on changes.
func (r *ServiceReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("service").
		For(&corev1.Service{}).
		Watches(&corev1.Service{}, handler.EnqueueRequestsFromMapFunc(r.rootsOfBackend)).
		Watches(&discoveryv1.EndpointSlice{}, handler.EnqueueRequestsFromMapFunc(r.forSlice)).
		Watches(&smi.TrafficSplit{}, handler.EnqueueRequestsFromMapFunc(rootOfSplit)).
		Watches(&smi.HTTPRouteGroup{}, handler.EnqueueRequestsFromMapFunc(r.rootsMatchingOn)).
		Complete(r)
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

// rootsOfBackend maps a Service to the roots of the splits that name it as a backend.
func (r *ServiceReconciler) rootsOfBackend(ctx context.Context, o client.Object) []reconcile.Request {
	return rootsOf(splitsBy(ctx, r.Client, o.GetNamespace(), indexSplitBackend, o.GetName()))
}

// rootsMatchingOn maps an HTTPRouteGroup to the roots of the splits that match on it.
func (r *ServiceReconciler) rootsMatchingOn(ctx context.Context, o client.Object) []reconcile.Request {
	return rootsOf(splitsBy(ctx, r.Client, o.GetNamespace(), indexSplitMatch, o.GetName()))
}

func rootOfSplit(_ context.Context, o client.Object) []reconcile.Request {
	ts, ok := o.(*smi.TrafficSplit)
	if !ok || ts.Spec.Service == "" {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: ts.Namespace, Name: ts.Spec.Service}}}
}
