package controllers

import (
	"fmt"
	"slices"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/braidmesh/braid/internal/mesh"
)

// ControllerName is the controllerName of the status.parents entries Braid writes on the
// HTTPRoutes whose parent is a Service.
const ControllerName gatewayv1.GatewayController = "braid.dev/mesh-controller"

// serviceParent returns the Service a parentRef names, its namespace resolved, or false
// when the parentRef names something else (a Gateway). The API server defaults group and
// kind to a Gateway's, so a Service parent spells out group "" and kind Service.
func serviceParent(hr *gatewayv1.HTTPRoute, ref gatewayv1.ParentReference) (mesh.ServiceParent, bool) {
	if ref.Group == nil || *ref.Group != "" || ref.Kind == nil || *ref.Kind != "Service" {
		return mesh.ServiceParent{}, false
	}
	p := mesh.ServiceParent{Namespace: hr.Namespace, Name: string(ref.Name)}
	if ref.Namespace != nil && *ref.Namespace != "" {
		p.Namespace = string(*ref.Namespace)
	}
	if ref.SectionName != nil {
		p.SectionName = string(*ref.SectionName)
	}
	if ref.Port != nil {
		p.Port = *ref.Port
	}
	return p, true
}

// toMeshHTTPRoute converts an HTTPRoute for the compiler, applying the defaults the API
// server would (a backendRef's kind Service and weight 1, a path match's PathPrefix "/").
func toMeshHTTPRoute(hr *gatewayv1.HTTPRoute) mesh.HTTPRoute {
	r := mesh.HTTPRoute{Namespace: hr.Namespace, Name: hr.Name, Generation: hr.Generation, Created: hr.CreationTimestamp.Time}
	for _, ref := range hr.Spec.ParentRefs {
		if p, ok := serviceParent(hr, ref); ok {
			r.Parents = append(r.Parents, p)
		}
	}
	for _, rule := range hr.Spec.Rules {
		r.Rules = append(r.Rules, toMeshRule(hr.Namespace, rule))
	}
	return r
}

func toMeshRule(namespace string, rule gatewayv1.HTTPRouteRule) mesh.HTTPRouteRule {
	out := mesh.HTTPRouteRule{Unsupported: unsupportedFeatures(rule)}
	if rule.Name != nil {
		out.Name = string(*rule.Name)
	}
	for _, m := range rule.Matches {
		out.Matches = append(out.Matches, toMeshMatch(m))
	}
	for _, b := range rule.BackendRefs {
		ref := toMeshBackend(namespace, b.BackendRef)
		ref.RequestHeaders, ref.ResponseHeaders = headerFilters(b.Filters)
		out.Backends = append(out.Backends, ref)
	}
	out.RequestHeaders, out.ResponseHeaders = headerFilters(rule.Filters)
	if t := rule.Timeouts; t != nil {
		out.Timeouts = mesh.HTTPRouteTimeouts{Request: durationString(t.Request), BackendRequest: durationString(t.BackendRequest)}
	}
	for _, f := range rule.Filters {
		if f.Type != gatewayv1.HTTPRouteFilterRequestMirror || f.RequestMirror == nil {
			continue
		}
		m := mesh.HTTPRouteMirror{Backend: toMeshBackend(namespace, gatewayv1.BackendRef{BackendObjectReference: f.RequestMirror.BackendRef})}
		switch rm := f.RequestMirror; {
		case rm.Percent != nil:
			m.Percent = *rm.Percent
		case rm.Fraction != nil && rm.Fraction.Denominator != nil && *rm.Fraction.Denominator > 0:
			if rm.Fraction.Numerator <= 0 {
				continue // mirror nothing
			}
			m.Percent = max(1, rm.Fraction.Numerator*100 / *rm.Fraction.Denominator)
		}
		out.Mirrors = append(out.Mirrors, m)
	}
	if r := rule.Retry; r != nil {
		out.Retry = &mesh.HTTPRouteRetry{Attempts: r.Attempts, Backoff: durationString(r.Backoff)}
		for _, c := range r.Codes {
			out.Retry.Codes = append(out.Retry.Codes, int(c))
		}
	}
	return out
}

// headerFilters returns the RequestHeaderModifier and ResponseHeaderModifier of filters.
func headerFilters(filters []gatewayv1.HTTPRouteFilter) (request, response *mesh.HeaderModifier) {
	for _, f := range filters {
		switch {
		case f.Type == gatewayv1.HTTPRouteFilterRequestHeaderModifier && f.RequestHeaderModifier != nil:
			request = toMeshHeaderModifier(f.RequestHeaderModifier)
		case f.Type == gatewayv1.HTTPRouteFilterResponseHeaderModifier && f.ResponseHeaderModifier != nil:
			response = toMeshHeaderModifier(f.ResponseHeaderModifier)
		}
	}
	return request, response
}

func toMeshHeaderModifier(f *gatewayv1.HTTPHeaderFilter) *mesh.HeaderModifier {
	out := &mesh.HeaderModifier{Remove: slices.Clone(f.Remove)}
	for _, h := range f.Set {
		out.Set = append(out.Set, mesh.HTTPHeader{Name: string(h.Name), Value: h.Value})
	}
	for _, h := range f.Add {
		out.Add = append(out.Add, mesh.HTTPHeader{Name: string(h.Name), Value: h.Value})
	}
	return out
}

// runsFilter says whether proxies carry out a filter type.
func runsFilter(t gatewayv1.HTTPRouteFilterType) bool {
	switch t {
	case gatewayv1.HTTPRouteFilterRequestMirror, gatewayv1.HTTPRouteFilterRequestHeaderModifier, gatewayv1.HTTPRouteFilterResponseHeaderModifier:
		return true
	}
	return false
}

func durationString(d *gatewayv1.Duration) string {
	if d == nil {
		return ""
	}
	return string(*d)
}

func toMeshMatch(m gatewayv1.HTTPRouteMatch) mesh.HTTPRouteMatch {
	out := mesh.HTTPRouteMatch{QueryParams: len(m.QueryParams)}
	if m.Path != nil {
		out.PathType, out.PathValue = mesh.PathMatchPathPrefix, "/"
		if m.Path.Type != nil {
			out.PathType = string(*m.Path.Type)
		}
		if m.Path.Value != nil {
			out.PathValue = *m.Path.Value
		}
	}
	if m.Method != nil {
		out.Method = string(*m.Method)
	}
	for _, h := range m.Headers {
		typ := mesh.HeaderMatchExact
		if h.Type != nil {
			typ = string(*h.Type)
		}
		out.Headers = append(out.Headers, mesh.HTTPHeaderMatch{Type: typ, Name: string(h.Name), Value: h.Value})
	}
	return out
}

func toMeshBackend(namespace string, b gatewayv1.BackendRef) mesh.HTTPBackendRef {
	out := mesh.HTTPBackendRef{Kind: "Service", Namespace: namespace, Name: string(b.Name), Weight: 1}
	if b.Group != nil {
		out.Group = string(*b.Group)
	}
	if b.Kind != nil {
		out.Kind = string(*b.Kind)
	}
	if b.Namespace != nil && *b.Namespace != "" {
		out.Namespace = string(*b.Namespace)
	}
	if b.Port != nil {
		out.Port = *b.Port
	}
	if b.Weight != nil {
		out.Weight = *b.Weight
	}
	return out
}

// unsupportedFeatures names what a rule sets that proxies cannot do yet.
func unsupportedFeatures(rule gatewayv1.HTTPRouteRule) []string {
	var out []string
	if rule.SessionPersistence != nil {
		out = append(out, "sessionPersistence")
	}
	for _, f := range rule.Filters {
		if !runsFilter(f.Type) {
			out = append(out, fmt.Sprintf("filter %s", f.Type))
		}
	}
	for i, b := range rule.BackendRefs {
		for _, f := range b.Filters {
			if f.Type != gatewayv1.HTTPRouteFilterRequestHeaderModifier && f.Type != gatewayv1.HTTPRouteFilterResponseHeaderModifier {
				out = append(out, fmt.Sprintf("backendRefs[%d] filter %s", i, f.Type))
			}
		}
	}
	return out
}

// routeParentNames lists the Services of the route's own namespace that it names as
// parents: the Services whose configuration it may change (producer routes).
func routeParentNames(hr *gatewayv1.HTTPRoute) []string {
	return toMeshHTTPRoute(hr).ProducerParents()
}

// routeBackendNames lists the Services of the route's own namespace that its backendRefs name.
func routeBackendNames(hr *gatewayv1.HTTPRoute) []string {
	return toMeshHTTPRoute(hr).BackendServices()
}
