package configserver

import (
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/braidmesh/braid/proxy/api"
)

// Scoping: each proxy receives in full only the Services its workload may reach. A Service
// is reachable by a workload when the inbound policy of at least one of the workloads
// behind it admits the workload's identity (every client in Permissive mode, or on a
// Targeted destination no TrafficTarget names), or when something behind it is not meshed
// (no identity to enforce), or when nothing is behind it yet. Any other Service is sent as
// a stub (see stubOf): its name, addresses and ports, with api.Service.denied set, so the
// client proxy refuses the traffic itself with a 403 naming the reason, and the workload
// never learns the addresses and identities it may not reach.

// workload is one SPIFFE identity that serves a Service's traffic.
type workload struct {
	trustDomain, namespace, serviceAccount string
}

// backing is what stands behind a compiled Service, for scoping.
type backing struct {
	// open: an endpoint without identity, or no endpoint at all; everyone may reach it.
	open      bool
	workloads []workload
}

// backingOf collects the identities of the endpoints a Service's routes lead to.
func backingOf(svc *api.Service) backing {
	var b backing
	seen := map[string]bool{}
	for _, port := range svc.GetPorts() {
		for _, route := range port.GetRoutes() {
			for _, be := range route.GetBackends() {
				for _, ep := range be.GetEndpoints() {
					id := ep.GetIdentity()
					w, ok := parseIdentity(id)
					if !ok {
						b.open = true // not meshed: there is no identity to enforce
						continue
					}
					if !seen[id] {
						seen[id] = true
						b.workloads = append(b.workloads, w)
					}
				}
			}
		}
	}
	if len(b.workloads) == 0 {
		b.open = true
	}
	return b
}

// parseIdentity splits spiffe://<trust domain>/ns/<namespace>/sa/<service account>.
func parseIdentity(id string) (workload, bool) {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return workload{}, false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 5 || parts[0] == "" || parts[1] != "ns" || parts[2] == "" || parts[3] != "sa" || parts[4] == "" {
		return workload{}, false
	}
	return workload{trustDomain: parts[0], namespace: parts[2], serviceAccount: parts[4]}, true
}

// indexBacking records what stands behind the Service key (nil: it went away); callers
// hold s.mu.
func (s *Server) indexBacking(key string, svc *api.Service) {
	for _, w := range s.backings[key].workloads {
		if keys := s.byWorkloadNS[w.namespace]; keys != nil {
			delete(keys, key)
			if len(keys) == 0 {
				delete(s.byWorkloadNS, w.namespace)
			}
		}
	}
	delete(s.backings, key)
	if svc == nil {
		delete(s.stubs, key)
		return
	}
	b := backingOf(svc)
	s.backings[key] = b
	for _, w := range b.workloads {
		if s.byWorkloadNS[w.namespace] == nil {
			s.byWorkloadNS[w.namespace] = map[string]struct{}{}
		}
		s.byWorkloadNS[w.namespace][key] = struct{}{}
	}
	stub := stubOf(svc)
	if old, ok := s.stubs[key]; !ok || !proto.Equal(old, stub) {
		s.stubs[key] = stub // an equal stub keeps its pointer: proxies holding it get nothing new
	}
}

// stubOf is what a workload that may not reach svc receives of it.
func stubOf(svc *api.Service) *api.Service {
	stub := &api.Service{
		Namespace: svc.GetNamespace(), Name: svc.GetName(), ClusterIps: svc.GetClusterIps(),
		Denied: fmt.Sprintf("no TrafficTarget in namespace %s admits this workload to the workloads of Service %s",
			svc.GetNamespace(), svc.GetName()),
	}
	for _, p := range svc.GetPorts() {
		stub.Ports = append(stub.Ports, &api.ServicePort{Name: p.GetName(), Port: p.GetPort(), Protocol: p.GetProtocol()})
	}
	return stub
}

// reachable reports whether the workload of the proxy that said hello may reach the
// Service key; callers hold s.mu.
func (s *Server) reachable(hello *api.Hello, key string) bool {
	b := s.backings[key]
	if b.open {
		return true
	}
	for _, w := range b.workloads {
		p, ok := s.policies[w.namespace]
		if !ok {
			return true // not compiled (yet): the destination's proxies decide
		}
		in := p.Default
		if x, ok := p.ByServiceAccount[w.serviceAccount]; ok {
			in = x
		}
		if admits(in, w.trustDomain, hello) {
			return true
		}
	}
	return false
}

// admits reports whether an inbound policy lets the workload of hello in at all (on some
// port, for some request), its identity taken in the trust domain of the destination.
func admits(in *api.Inbound, trustDomain string, hello *api.Hello) bool {
	if in.GetAllowAll() {
		return true
	}
	if hello.GetServiceAccount() == "" {
		return false // no workload identity: only open destinations admit it
	}
	id := "spiffe://" + trustDomain + "/ns/" + hello.GetNamespace() + "/sa/" + hello.GetServiceAccount()
	for _, a := range in.GetAuthorizations() {
		if slices.Contains(a.GetSources(), id) {
			return true
		}
	}
	return false
}

// scopedFull returns the services of the full snapshot as p's workload sees them, and
// records the stubs sent; callers hold s.mu.
func (s *Server) scopedFull(p *proxyConn, services []*api.Service) []*api.Service {
	p.denied = map[string]*api.Service{}
	out := services
	for i, svc := range services {
		key := svc.GetNamespace() + "/" + svc.GetName()
		if s.reachable(p.hello, key) {
			continue
		}
		if len(p.denied) == 0 {
			out = slices.Clone(services) // the shared snapshot stays untouched
		}
		stub := s.stubs[key]
		p.denied[key] = stub
		out[i] = stub
	}
	return out
}

// scopedDelta returns the changes after p.sent as p's workload sees them: the services
// that changed, and those of namespaces whose policy changed and whose reachability for p
// changed with it. It records the stubs sent; callers hold s.mu and ensure
// p.sent >= s.floor.
func (s *Server) scopedDelta(p *proxyConn) *api.Snapshot {
	snap := &api.Snapshot{Version: s.version}
	for key, changed := range s.changedSince(p.sent) {
		svc, ok := s.services[key]
		switch {
		case !ok:
			if changed {
				snap.Removed = append(snap.Removed, key)
			}
			delete(p.denied, key)
		case s.reachable(p.hello, key):
			if _, wasDenied := p.denied[key]; changed || wasDenied {
				snap.Services = append(snap.Services, svc)
			}
			delete(p.denied, key)
		default:
			if stub := s.stubs[key]; p.denied[key] != stub {
				snap.Services = append(snap.Services, stub)
				p.denied[key] = stub
			}
		}
	}
	sortServices(snap.Services)
	slices.Sort(snap.Removed)
	return snap
}

// changedSince maps each Service to reconsider after version to whether the Service itself
// changed (true) or only the policy of a namespace behind it (false); callers hold s.mu
// and do not modify the map. Proxies that are up to date ask for the same version at
// each change: the last answer is kept for them.
func (s *Server) changedSince(version uint64) map[string]bool {
	if c := s.lastChanged; c.out != nil && c.from == version && c.to == s.version {
		return c.out
	}
	out := map[string]bool{}
	defer func() { s.lastChanged = changedCache{from: version, to: s.version, out: out} }()
	for _, c := range s.changes[s.changeIndex(version+1):] {
		switch {
		case !c.policy:
			out[c.key] = true
		case c.key != "": // a namespace's inbound policy
			for key := range s.byWorkloadNS[c.key] {
				if _, ok := out[key]; !ok {
					out[key] = false
				}
			}
		}
	}
	return out
}

// changedCache is the last answer of changedSince: the Services to reconsider from
// version from to version to.
type changedCache struct {
	from, to uint64
	out      map[string]bool
}
