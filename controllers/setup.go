package controllers

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	braidv1alpha1 "github.com/braidmesh/braid/api/v1alpha1"
	"github.com/braidmesh/braid/internal/smi"
)

// NewScheme returns a scheme of every type the operator reads or writes.
func NewScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, braidv1alpha1.AddToScheme, smi.AddToScheme, gatewayv1.Install} {
		if err := add(s); err != nil {
			return nil, fmt.Errorf("building the scheme: %w", err)
		}
	}
	return s, nil
}

// setupGAMMA registers the HTTPRoute indexes and reconciler when the cluster serves
// HTTPRoutes, and reports whether it does.
func setupGAMMA(ctx context.Context, mgr manager.Manager, acks AckCounter, programs *RoutePrograms) (bool, error) {
	gamma, err := servesHTTPRoutes(mgr)
	if err != nil {
		return false, err
	}
	if !gamma {
		mgr.GetLogger().Info("Gateway API HTTPRoutes are not served; GAMMA routes are ignored until their CRDs are installed and the operator restarts",
			"group", gatewayv1.GroupName, "version", gatewayv1.GroupVersion.Version)
		return false, nil
	}
	if err := setupHTTPRouteIndexes(ctx, mgr); err != nil {
		return false, err
	}
	if err := (&HTTPRouteReconciler{Client: mgr.GetClient(), Acks: acks, Programs: programs}).SetupWithManager(mgr); err != nil {
		return false, fmt.Errorf("setting up the HTTPRoute reconciler: %w", err)
	}
	return true, nil
}

// servesHTTPRoutes reports whether the API server serves gateway.networking.k8s.io/v1
// HTTPRoutes. Users install the Gateway API CRDs themselves; without them Braid runs
// without GAMMA rather than failing to start.
func servesHTTPRoutes(mgr manager.Manager) (bool, error) {
	gk := schema.GroupKind{Group: gatewayv1.GroupName, Kind: "HTTPRoute"}
	_, err := mgr.GetRESTMapper().RESTMapping(gk, gatewayv1.GroupVersion.Version)
	switch {
	case meta.IsNoMatchError(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("looking up whether the API server serves HTTPRoutes: %w", err)
	}
	return true, nil
}

// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch;create;update;patch;delete,namespace=braid-system
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch

// ConfigServer is what the reconcilers need of the config server: somewhere to put
// compiled configuration, and news of what proxies acknowledged.
type ConfigServer interface {
	ConfigSink
	PolicySink
	AckCounter
	OnAcks(func())
	// MarkReady releases the proxies' streams once every Service is compiled.
	MarkReady()
}

// Setup registers every reconciler and index with the manager, feeding srv.
func Setup(ctx context.Context, mgr manager.Manager, srv ConfigServer) error {
	if err := SetupIndexes(ctx, mgr); err != nil {
		return err
	}
	programs, routePrograms := NewPrograms(), NewRoutePrograms()
	waiter := NewNamespaceWaiter()
	srv.OnAcks(func() { programs.AcksChanged(); routePrograms.AcksChanged(); waiter.AcksChanged() })
	for _, start := range []func(context.Context) error{programs.Start, routePrograms.Start} {
		if err := mgr.Add(manager.RunnableFunc(start)); err != nil {
			return fmt.Errorf("adding a program tracker: %w", err)
		}
	}
	gamma, err := setupGAMMA(ctx, mgr, srv, routePrograms)
	if err != nil {
		return err
	}
	services := &ServiceReconciler{Client: mgr.GetClient(), Sink: srv, Programs: programs, GAMMA: gamma}
	if gamma {
		services.RoutePrograms = routePrograms
	}
	if err := services.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the service reconciler: %w", err)
	}
	access := &AccessReconciler{Client: mgr.GetClient(), Sink: srv, Waiting: waiter}
	if err := access.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the access reconciler: %w", err)
	}
	// Proxies get nothing until the whole mesh is compiled: a restarted or newly elected
	// operator must not hand reconnecting proxies an empty or partial mesh.
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		if !mgr.GetCache().WaitForCacheSync(ctx) {
			return nil // stopping before the cache synced
		}
		if err := services.CompileAll(ctx); err != nil {
			return fmt.Errorf("compiling the mesh at start: %w", err)
		}
		if err := access.CompileAll(ctx); err != nil {
			return fmt.Errorf("compiling access policies at start: %w", err)
		}
		srv.MarkReady()
		mgr.GetLogger().Info("Compiled the mesh; serving proxies")
		return nil
	})); err != nil {
		return fmt.Errorf("adding the initial compile: %w", err)
	}
	split := &TrafficSplitReconciler{Client: mgr.GetClient(), Acks: srv, Programs: programs, Events: mgr.GetEventRecorder("braid"), GAMMA: gamma}
	if err := split.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the traffic split reconciler: %w", err)
	}
	if err := (&HTTPRouteGroupReconciler{Client: mgr.GetClient()}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the HTTPRouteGroup reconciler: %w", err)
	}
	if err := setupL4RouteReconcilers(mgr); err != nil {
		return err
	}
	return nil
}
