package controllers

import (
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/braidmesh/braid/internal/mesh"
	"github.com/braidmesh/braid/internal/smi"
)

// toMeshSplit normalises a TrafficSplit for the compiler. A backend without a weight
// (allowed by v1alpha1) has weight 0.
func toMeshSplit(ts *smi.TrafficSplit) mesh.Split {
	s := mesh.Split{
		Namespace:  ts.Namespace,
		Name:       ts.Name,
		Generation: ts.Generation,
		Created:    ts.CreationTimestamp.Time,
		Root:       ts.Spec.Service,
		Backends:   make([]mesh.SplitBackend, 0, len(ts.Spec.Backends)),
	}
	for _, b := range ts.Spec.Backends {
		var milli int64
		if b.Weight != nil {
			milli = milliWeight(*b.Weight)
		}
		s.Backends = append(s.Backends, mesh.SplitBackend{Service: b.Service, MilliWeight: milli})
	}
	s.Matches = routeGroupNames(ts)
	return s
}

// milliWeight converts a weight to thousandths without overflow: a weight beyond
// mesh.MaxWeight (either sign) maps to just beyond it, which CheckSplit refuses.
func milliWeight(q resource.Quantity) int64 {
	bound := resource.NewQuantity(mesh.MaxWeight, resource.DecimalSI)
	switch {
	case q.Cmp(*bound) > 0:
		return mesh.MaxWeight*1000 + 1
	case q.Sign() < 0 && q.CmpInt64(-mesh.MaxWeight) < 0:
		return -1
	}
	return q.MilliValue()
}

// routeGroupNames lists the HTTPRouteGroups a split matches on (the CRD admits no other kind).
func routeGroupNames(ts *smi.TrafficSplit) []string {
	var names []string
	for _, m := range ts.Spec.Matches {
		if m.Kind == "HTTPRouteGroup" {
			names = append(names, m.Name)
		}
	}
	return names
}

// toRouteGroup converts an HTTPRouteGroup for the compiler.
func toRouteGroup(g *smi.HTTPRouteGroup) *mesh.RouteGroup {
	out := &mesh.RouteGroup{Namespace: g.Namespace, Name: g.Name}
	for _, m := range g.Spec.Matches {
		out.Matches = append(out.Matches, mesh.RouteMatch{Name: m.Name, PathRegex: m.PathRegex, Methods: m.Methods, Headers: m.Headers})
	}
	return out
}
