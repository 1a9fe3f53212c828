package mesh

import (
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/braidmesh/braid/proxy/api"
)

// Endpoints is a Service with its EndpointSlices.
type Endpoints struct {
	Service *corev1.Service
	Slices  []*discoveryv1.EndpointSlice
}

// ServiceInput is everything one Service's proxy configuration depends on.
type ServiceInput struct {
	Endpoints
	// Split is the TrafficSplit that governs this Service (see Winner), in its last
	// accepted form; nil when none applies.
	Split *Split
	// HTTPRoutes are the producer HTTPRoutes (GAMMA) whose parentRefs name this Service.
	// On a port one of them attaches to they govern, instead of any split.
	HTTPRoutes []HTTPRoute
	// Backends holds, by name, every Service of the namespace that the split names as a
	// backend (the root itself included when it is one) and that the HTTPRoutes' backendRefs
	// name; a name that is absent or maps to a nil Service is a backend Service that does
	// not exist (yet).
	Backends map[string]Endpoints
	// RouteGroups holds, by name, the HTTPRouteGroups the split names; an absent name is a
	// group that does not exist.
	RouteGroups map[string]*RouteGroup
	// Workloads holds, by pod IP, the pods behind the endpoints; meshed ones are reached
	// through their proxy, over mTLS, under the identity of their ServiceAccount in
	// TrustDomain.
	Workloads   map[string]Workload
	TrustDomain string
}

// Workload is a pod behind an endpoint, as the mesh sees it.
type Workload struct {
	ServiceAccount string
	// Meshed says the pod runs a proxy (it was injected).
	Meshed bool
}

// InboundPort is where a meshed pod's proxy accepts mTLS from other proxies.
const InboundPort = 15006

// maxWireWeight bounds the weights sent to proxies; relative shares are kept.
const maxWireWeight = 1_000_000

// CompileService compiles one Service into the configuration proxies use to reach it:
// for each TCP port, the backends that share its traffic and their ready endpoints.
// It returns nil for a Service proxies cannot route to (ExternalName).
func CompileService(in ServiceInput) *api.Service {
	svc := in.Service
	if svc == nil || svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil
	}
	out := &api.Service{Namespace: svc.Namespace, Name: svc.Name, ClusterIps: clusterIPs(svc)}
	opaque := OpaquePorts(svc)
	for _, p := range svc.Spec.Ports {
		if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
			continue
		}
		port := compilePort(in, p)
		port.Protocol = PortProtocol(p, opaque)
		out.Ports = append(out.Ports, port)
	}
	markMeshed(out, in.Workloads, in.TrustDomain)
	return out
}

// markMeshed gives every endpoint served by a meshed pod its identity and proxy port.
func markMeshed(svc *api.Service, workloads map[string]Workload, trustDomain string) {
	if len(workloads) == 0 {
		return
	}
	for _, p := range svc.GetPorts() {
		for _, r := range p.GetRoutes() {
			for _, b := range r.GetBackends() {
				for _, e := range b.GetEndpoints() {
					w, ok := workloads[e.GetIp()]
					if !ok || !w.Meshed {
						continue
					}
					e.Identity = fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", trustDomain, svc.GetNamespace(), w.ServiceAccount)
					e.ProxyPort = InboundPort
				}
			}
		}
	}
}

// clusterIPs returns the virtual IPs of a Service; a headless Service has none.
func clusterIPs(svc *corev1.Service) []string {
	var out []string
	for _, ip := range svc.Spec.ClusterIPs {
		if _, err := netip.ParseAddr(ip); err == nil {
			out = append(out, ip)
		}
	}
	if len(out) == 0 {
		if _, err := netip.ParseAddr(svc.Spec.ClusterIP); err == nil {
			out = append(out, svc.Spec.ClusterIP)
		}
	}
	return out
}

// compilePort routes one port: by the rules of the HTTPRoutes attached to it, if any (and
// then requests that no rule matches are refused); otherwise to the Service itself without
// a split; to the split's backends with one; and with a split that has matches, the
// matching requests to the split's backends and the others to the Service itself.
func compilePort(in ServiceInput, p corev1.ServicePort) *api.ServicePort {
	port := &api.ServicePort{Name: p.Name, Port: uint32(p.Port)}
	if routes := attachedRoutes(in, p); len(routes) > 0 {
		port.Routes = httpRouteRoutes(routes, in.Backends)
		return port
	}
	self := &api.Route{Backends: []*api.Backend{{Service: in.Service.Name, Weight: 1, Endpoints: endpointsFor(in.Endpoints, p.Port)}}}
	if in.Split == nil {
		port.Routes = []*api.Route{self}
		return port
	}
	port.Split = in.Split.Key()
	split := &api.Route{Backends: splitBackends(*in.Split, p.Port, in.Backends)}
	if len(in.Split.Matches) == 0 {
		port.Routes = []*api.Route{split}
		return port
	}
	// A split whose groups match nothing (missing, or none valid) splits nothing.
	if split.Matches = splitMatches(*in.Split, in.RouteGroups); len(split.Matches) > 0 {
		port.Routes = append(port.Routes, split)
	}
	port.Routes = append(port.Routes, self)
	return port
}

// attachedRoutes lists the HTTPRoutes that govern a port.
func attachedRoutes(in ServiceInput, p corev1.ServicePort) []HTTPRoute {
	var out []HTTPRoute
	for _, r := range in.HTTPRoutes {
		if r.attachesTo(in.Service, p) {
			out = append(out, r)
		}
	}
	return out
}

// splitBackends resolves a split's backends for one root port. A backend Service without
// that port is left out of the port (SMI: backends must expose the root's port); a
// backend Service that does not exist keeps its share, which then fails with a 503 that
// names it rather than silently moving to the other backends.
func splitBackends(s Split, port int32, services map[string]Endpoints) []*api.Backend {
	weights := make([]int64, 0, len(s.Backends))
	backends := make([]*api.Backend, 0, len(s.Backends))
	for _, b := range s.Backends {
		ep, ok := services[b.Service]
		out := &api.Backend{Service: b.Service}
		switch {
		case !ok || ep.Service == nil:
			out.Unavailable = fmt.Sprintf("backend service %s/%s does not exist", s.Namespace, b.Service)
		case !hasPort(ep.Service, port):
			continue
		default:
			out.Endpoints = endpointsFor(ep, port)
		}
		weights = append(weights, b.MilliWeight)
		backends = append(backends, out)
	}
	for i, w := range scaleWeights(weights) {
		backends[i].Weight = w
	}
	return backends
}

func hasPort(svc *corev1.Service, port int32) bool {
	_, ok := servicePort(svc, port)
	return ok
}

func servicePort(svc *corev1.Service, port int32) (corev1.ServicePort, bool) {
	for _, p := range svc.Spec.Ports {
		if p.Port == port && (p.Protocol == "" || p.Protocol == corev1.ProtocolTCP) {
			return p, true
		}
	}
	return corev1.ServicePort{}, false
}

// endpointsFor lists the ready endpoints of a Service port, with the target port each
// EndpointSlice resolved for the port's name, sorted and without duplicates.
func endpointsFor(ep Endpoints, port int32) []*api.Endpoint {
	sp, ok := servicePort(ep.Service, port)
	if !ok {
		return nil
	}
	var addrs []netip.AddrPort
	seen := map[netip.AddrPort]bool{}
	for _, slice := range ep.Slices {
		if slice.AddressType != discoveryv1.AddressTypeIPv4 && slice.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		target, ok := slicePort(slice, sp.Name)
		if !ok {
			continue
		}
		for _, e := range slice.Endpoints {
			if !ready(e) {
				continue
			}
			for _, a := range e.Addresses {
				ip, err := netip.ParseAddr(a)
				if err != nil {
					continue
				}
				ap := netip.AddrPortFrom(ip.Unmap(), uint16(target))
				if seen[ap] {
					continue
				}
				seen[ap] = true
				addrs = append(addrs, ap)
			}
		}
	}
	slices.SortFunc(addrs, func(a, b netip.AddrPort) int { return a.Compare(b) })
	out := make([]*api.Endpoint, 0, len(addrs))
	for _, ap := range addrs {
		out = append(out, &api.Endpoint{Ip: ap.Addr().String(), Port: uint32(ap.Port())})
	}
	return out
}

func slicePort(slice *discoveryv1.EndpointSlice, name string) (int32, bool) {
	for _, p := range slice.Ports {
		pname := ""
		if p.Name != nil {
			pname = *p.Name
		}
		if pname != name || p.Port == nil || (p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP) {
			continue
		}
		if *p.Port < 1 || *p.Port > 65535 {
			return 0, false
		}
		return *p.Port, true
	}
	return 0, false
}

// ready reports whether an endpoint may take new requests: Kubernetes reads a missing
// ready condition as ready, and a terminating endpoint is never ready.
func ready(e discoveryv1.Endpoint) bool {
	if e.Conditions.Terminating != nil && *e.Conditions.Terminating {
		return false
	}
	return e.Conditions.Ready == nil || *e.Conditions.Ready
}

// scaleWeights reduces milli-weights to the smallest integers with the same ratios, and
// scales them into maxWireWeight when they are still larger. Negative weights count as 0.
func scaleWeights(milli []int64) []uint32 {
	var g, top int64
	for _, w := range milli {
		if w > 0 {
			g = gcd(g, w)
			top = max(top, w)
		}
	}
	out := make([]uint32, len(milli))
	if g == 0 {
		return out
	}
	for i, w := range milli {
		if w <= 0 {
			continue
		}
		w /= g
		if top/g > maxWireWeight {
			// Keep every positive weight positive: a backend with a share gets traffic.
			w = max(1, int64(float64(w)*maxWireWeight/float64(top/g)))
		}
		out[i] = uint32(w)
	}
	return out
}

func gcd(a, b int64) int64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
