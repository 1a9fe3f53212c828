// Package controllers holds Braid's reconcilers. They read the cluster through
// controller-runtime's cache, compile with internal/mesh, feed the config server and write
// status; they never talk to proxies.
package controllers

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/braidmesh/braid/internal/smi"
)

// Field indexes on the cache, used to map a changed object to the roots it affects.
const (
	// indexSplitRoot indexes TrafficSplits by the name of their root Service.
	indexSplitRoot = "braid.dev/split-root"
	// indexSplitBackend indexes TrafficSplits by the names of their backend Services.
	indexSplitBackend = "braid.dev/split-backend"
	// indexSplitMatch indexes TrafficSplits by the names of the HTTPRouteGroups they match on.
	indexSplitMatch = "braid.dev/split-match"
	// indexSliceService indexes EndpointSlices by the name of the Service they belong to.
	indexSliceService = "braid.dev/slice-service"
	// indexSlicePod indexes EndpointSlices by the names of the pods their endpoints are.
	indexSlicePod = "braid.dev/slice-pod"
	// indexHTTPRouteParent indexes HTTPRoutes by the names of the Services of their own
	// namespace that they name as parents (producer routes).
	indexHTTPRouteParent = "braid.dev/httproute-parent"
	// indexHTTPRouteBackend indexes HTTPRoutes by the names of the Services of their own
	// namespace that their backendRefs name.
	indexHTTPRouteBackend = "braid.dev/httproute-backend"
	// indexTargetSourceNamespace indexes TrafficTargets by the namespaces of their sources.
	indexTargetSourceNamespace = "braid.dev/target-source-namespace"
)

// SetupIndexes registers the field indexes the reconcilers use. Call it once per manager,
// before the reconcilers are set up.
func SetupIndexes(ctx context.Context, mgr manager.Manager) error {
	idx := mgr.GetFieldIndexer()
	if err := idx.IndexField(ctx, &smi.TrafficSplit{}, indexSplitRoot, func(o client.Object) []string {
		return []string{o.(*smi.TrafficSplit).Spec.Service}
	}); err != nil {
		return fmt.Errorf("indexing TrafficSplits by root: %w", err)
	}
	if err := idx.IndexField(ctx, &smi.TrafficSplit{}, indexSplitBackend, func(o client.Object) []string {
		ts := o.(*smi.TrafficSplit)
		names := make([]string, 0, len(ts.Spec.Backends))
		for _, b := range ts.Spec.Backends {
			names = append(names, b.Service)
		}
		return names
	}); err != nil {
		return fmt.Errorf("indexing TrafficSplits by backend: %w", err)
	}
	if err := idx.IndexField(ctx, &smi.TrafficSplit{}, indexSplitMatch, func(o client.Object) []string {
		return routeGroupNames(o.(*smi.TrafficSplit))
	}); err != nil {
		return fmt.Errorf("indexing TrafficSplits by route group: %w", err)
	}
	if err := idx.IndexField(ctx, &discoveryv1.EndpointSlice{}, indexSliceService, func(o client.Object) []string {
		if name := o.GetLabels()[discoveryv1.LabelServiceName]; name != "" {
			return []string{name}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("indexing EndpointSlices by service: %w", err)
	}
	if err := idx.IndexField(ctx, &discoveryv1.EndpointSlice{}, indexSlicePod, slicePods); err != nil {
		return fmt.Errorf("indexing EndpointSlices by pod: %w", err)
	}
	if err := idx.IndexField(ctx, &smi.TrafficTarget{}, indexTargetSourceNamespace, func(o client.Object) []string {
		tt := o.(*smi.TrafficTarget)
		var out []string
		for _, s := range tt.Spec.Sources {
			if ns := cmp.Or(s.Namespace, tt.Namespace); !slices.Contains(out, ns) {
				out = append(out, ns)
			}
		}
		return out
	}); err != nil {
		return fmt.Errorf("indexing TrafficTargets by source namespace: %w", err)
	}
	return nil
}

// slicePods returns the names of the pods an EndpointSlice's endpoints are.
func slicePods(o client.Object) []string {
	var names []string
	for _, e := range o.(*discoveryv1.EndpointSlice).Endpoints {
		if ref := e.TargetRef; ref != nil && ref.Kind == "Pod" && ref.Name != "" && !slices.Contains(names, ref.Name) {
			names = append(names, ref.Name)
		}
	}
	return names
}

// setupHTTPRouteIndexes registers the field indexes on HTTPRoutes. Call it once per
// manager, and only when the cluster serves HTTPRoutes.
func setupHTTPRouteIndexes(ctx context.Context, mgr manager.Manager) error {
	idx := mgr.GetFieldIndexer()
	if err := idx.IndexField(ctx, &gatewayv1.HTTPRoute{}, indexHTTPRouteParent, func(o client.Object) []string {
		return routeParentNames(o.(*gatewayv1.HTTPRoute))
	}); err != nil {
		return fmt.Errorf("indexing HTTPRoutes by parent service: %w", err)
	}
	if err := idx.IndexField(ctx, &gatewayv1.HTTPRoute{}, indexHTTPRouteBackend, func(o client.Object) []string {
		return routeBackendNames(o.(*gatewayv1.HTTPRoute))
	}); err != nil {
		return fmt.Errorf("indexing HTTPRoutes by backend service: %w", err)
	}
	return nil
}

// routesBy lists the HTTPRoutes in namespace whose index holds value. A failure is logged
// and maps to nothing, as in splitsBy.
func routesBy(ctx context.Context, c client.Client, namespace, index, value string) []gatewayv1.HTTPRoute {
	var list gatewayv1.HTTPRouteList
	if err := c.List(ctx, &list, client.InNamespace(namespace), client.MatchingFields{index: value}); err != nil {
		log.FromContext(ctx).Error(err, "Listing HTTPRoutes failed", "index", index, "value", value, "namespace", namespace)
		return nil
	}
	return list.Items
}

// splitsBy lists the splits in namespace whose index holds value. A failure is logged
// and maps to nothing: map functions cannot return errors, and the next event catches up.
func splitsBy(ctx context.Context, c client.Client, namespace, index, value string) []smi.TrafficSplit {
	var list smi.TrafficSplitList
	if err := c.List(ctx, &list, client.InNamespace(namespace), client.MatchingFields{index: value}); err != nil {
		log.FromContext(ctx).Error(err, "Listing traffic splits failed", "index", index, "value", value, "namespace", namespace)
		return nil
	}
	return list.Items
}

// rootsOf maps splits to reconcile requests for their root Services.
func rootsOf(splits []smi.TrafficSplit) []reconcile.Request {
	reqs := make([]reconcile.Request, 0, len(splits))
	for i := range splits {
		reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: splits[i].Namespace, Name: splits[i].Spec.Service}})
	}
	return reqs
}
