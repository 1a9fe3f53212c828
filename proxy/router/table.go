// Package router turns a config snapshot into the proxy's routing table: which Service a
// request's authority names, which backend gets it by weight, and which endpoint serves it.
package router

import (
	"errors"
	"fmt"
	"iter"
	"math/bits"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/braidmesh/braid/proxy/api"
)

// Table is an immutable routing table built from one snapshot.
type Table struct {
	version   uint64
	namespace string
	domain    string
	// services holds each Service's ports, in the snapshot's order: a Service has few,
	// and a slice of them takes a tenth of a map's memory.
	services map[serviceKey][]*Port
	// byAddr finds a Service port by one of its cluster IPs and its port number.
	byAddr map[netip.AddrPort]*Port
}

type serviceKey struct{ namespace, name string }

// portNumbered returns the port of ports with number n.
func portNumbered(ports []*Port, n uint32) (*Port, bool) {
	for _, p := range ports {
		if p.Number == n {
			return p, true
		}
	}
	return nil, false
}

// MaxRouteLabels bounds the distinct route labels of a port (see Route.Label): routes
// past this many share the label "other".
const MaxRouteLabels = 32

// Port is one routable Service port.
type Port struct {
	Service string // namespace/name
	Number  uint32
	Split   string
	// Protocol is how the port's traffic is carried.
	Protocol api.Protocol
	// Denied, when set, says why the proxy's own workload may not reach the Service
	// (api.Service.denied): the port has no routes, and the proxy refuses its traffic.
	Denied string
	routes []*Route
}

// Host is the port's Service as "<name>.<namespace>", for messages.
func (p *Port) Host() string {
	ns, name, _ := strings.Cut(p.Service, "/")
	return name + "." + ns
}

// Routes returns the port's routes, in order.
func (p *Port) Routes() []*Route { return p.routes }

// Route carries the requests its matches admit (all of them when it has none) to its
// backends, by weight.
type Route struct {
	// Name names the route in the proxy's answers: its configured name, or
	// "<service> port <n> route <index>".
	Name string
	// Label names the route in metrics: its configured name, or its index in the port
	// ("0", "1", …); "other" from the MaxRouteLabels-th route on, so that a port has a
	// bounded number of route labels.
	Label string
	// Timeout bounds a whole request, retries included; BackendRequestTimeout each
	// attempt at an endpoint. Zero: none.
	Timeout, BackendRequestTimeout time.Duration
	// Retries is the most times a request is retried; RetryOn the statuses retried
	// (connection failures always are).
	Retries int
	RetryOn []int
	// BackoffBase and BackoffMax space the retries (see Backoff); a zero base sends them
	// at once.
	BackoffBase, BackoffMax time.Duration
	// Budget limits the route's retries.
	Budget *Budget

	// Mirrors receive copies of a share of the route's requests.
	Mirrors []Mirror
	// RequestHeaders and ResponseHeaders change the requests the route carries and their
	// answers (before the backend's own); nil: none.
	RequestHeaders, ResponseHeaders *HeaderModifier

	matches  []match
	backends []*Backend
	total    uint64
	// picks counts the backend choices made on this route: see Pick.
	picks atomic.Uint64
}

// RetriesStatus reports whether the route retries answers with status code.
func (r *Route) RetriesStatus(code int) bool { return slices.Contains(r.RetryOn, code) }

type match struct {
	name    string
	path    *regexp.Regexp // nil: any path
	methods []string       // empty: any method
	headers []headerMatch
}

type headerMatch struct {
	name  string
	value *regexp.Regexp
}

// Backend is a weighted backend of a Route.
type Backend struct {
	Service     string
	Weight      uint32
	Unavailable string
	// RequestHeaders and ResponseHeaders are the backendRef's own header filters,
	// applied after the route's; nil: none.
	RequestHeaders, ResponseHeaders *HeaderModifier
	endpoints                       []*EndpointState
	// limit caps the requests in flight to each endpoint; outlier says when one is
	// ejected (the route's policies).
	limit   int64
	outlier outlierConfig
	budget  *Budget    // the route's
	ejectMu sync.Mutex // one ejection decision at a time, so that the cap holds
}

// Endpoint is one ready address of a backend.
type Endpoint struct {
	// Addr is the address the application serves on.
	Addr netip.AddrPort
	// Identity is the SPIFFE ID of the endpoint's workload when it is meshed: the proxy
	// then reaches it through its peer proxy at ProxyPort, over mTLS, and verifies that
	// the peer presents exactly this identity. Empty: plaintext, straight to Addr.
	Identity  string
	ProxyPort uint16
}

// Meshed reports whether the endpoint is reached through its peer proxy.
func (e Endpoint) Meshed() bool { return e.Identity != "" && e.ProxyPort != 0 }

// ProxyAddr is the address of the endpoint's peer proxy.
func (e Endpoint) ProxyAddr() netip.AddrPort { return netip.AddrPortFrom(e.Addr.Addr(), e.ProxyPort) }

// Build validates a snapshot and builds its table, with endpoint state of its own (see
// Registry.Build). namespace is the proxy's own namespace, which a bare service name
// resolves in; domain is the cluster domain (cluster.local).
func Build(snap *api.Snapshot, namespace, domain string) (*Table, error) {
	return NewRegistry(nil).Build(snap, namespace, domain)
}

// builder builds one table. It reuses the endpoint state and retry budgets of the
// registry's last table for the endpoints and routes the new one shares with it, and
// makes the rest.
type builder struct {
	reg       *Registry
	endpoints map[Endpoint]*EndpointState
	budgets   map[budgetKey]*Budget
}

// Build validates a snapshot and builds its table, like the package's Build, with the
// live state of the endpoints and routes the table shares with the last table the
// registry built. State that the new table does not use is left to the tables that
// still hold it.
func (r *Registry) Build(snap *api.Snapshot, namespace, domain string) (*Table, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	b := &builder{reg: r, endpoints: map[Endpoint]*EndpointState{}, budgets: map[budgetKey]*Budget{}}
	b.reuse(r.last)
	t, err := b.build(snap, namespace, domain)
	if err != nil {
		return nil, err
	}
	r.last = t
	return t, nil
}

// reuse indexes the state of last (nil: none) for the build. The index lives only as
// long as the build: kept between builds, its maps cost about 400 bytes per Service of
// a large configuration, a quarter of what its table kept then.
func (b *builder) reuse(last *Table) {
	if last == nil {
		return
	}
	for p := range last.Ports() {
		for i, r := range p.routes {
			b.budgets[r.Budget.key(p, i)] = r.Budget
			for _, be := range r.backends {
				b.reuseEndpoints(be)
			}
			for _, m := range r.Mirrors {
				b.reuseEndpoints(m.Backend)
			}
		}
	}
}

func (b *builder) reuseEndpoints(be *Backend) {
	for _, e := range be.endpoints {
		b.endpoints[e.Endpoint] = e
	}
}

func (b *builder) endpoint(ep Endpoint) *EndpointState {
	if s, ok := b.endpoints[ep]; ok {
		return s
	}
	s := &EndpointState{Endpoint: ep, reg: b.reg, stamp: b.reg.now()}
	b.endpoints[ep] = s
	return s
}

func (b *builder) budget(key budgetKey) *Budget {
	if s, ok := b.budgets[key]; ok {
		return s
	}
	s := &Budget{reg: b.reg, percent: int64(key.percent), reserve: int64(key.minRate) * budgetBuckets}
	b.budgets[key] = s
	return s
}

func (b *builder) build(snap *api.Snapshot, namespace, domain string) (*Table, error) {
	t := &Table{
		version: snap.GetVersion(), namespace: namespace, domain: domain,
		services: make(map[serviceKey][]*Port, len(snap.GetServices())), byAddr: map[netip.AddrPort]*Port{},
	}
	for _, s := range snap.GetServices() {
		key := serviceKey{s.GetNamespace(), s.GetName()}
		if key.namespace == "" || key.name == "" {
			return nil, errors.New("a service has no namespace or name")
		}
		if _, dup := t.services[key]; dup {
			return nil, fmt.Errorf("service %s/%s appears twice", key.namespace, key.name)
		}
		ports := make([]*Port, 0, len(s.GetPorts()))
		for _, p := range s.GetPorts() {
			if _, dup := portNumbered(ports, p.GetPort()); dup {
				return nil, fmt.Errorf("service %s/%s: port %d appears twice", key.namespace, key.name, p.GetPort())
			}
			port, err := b.buildPort(key, p, s.GetDenied())
			if err != nil {
				return nil, fmt.Errorf("service %s/%s: %w", key.namespace, key.name, err)
			}
			ports = append(ports, port)
		}
		t.services[key] = ports
		if err := t.indexClusterIPs(ports, s.GetClusterIps()); err != nil {
			return nil, fmt.Errorf("service %s/%s: %w", key.namespace, key.name, err)
		}
	}
	return t, nil
}

func (t *Table) indexClusterIPs(ports []*Port, ips []string) error {
	for _, s := range ips {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("invalid cluster IP %q", s)
		}
		for _, p := range ports {
			addr := netip.AddrPortFrom(ip.Unmap(), uint16(p.Number))
			if other, dup := t.byAddr[addr]; dup {
				return fmt.Errorf("cluster IP %s is also %s's", addr, other.Service)
			}
			t.byAddr[addr] = p
		}
	}
	return nil
}

// ResolveAddr finds the Service port a connection's original destination names: one of
// the Service's cluster IPs with one of its ports.
func (t *Table) ResolveAddr(dst netip.AddrPort) (*Port, bool) {
	p, ok := t.byAddr[netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())]
	return p, ok
}

// buildPort builds one port of svc; a port of a Service the workload may not reach
// (denied says why) keeps no routes, whatever the snapshot carries.
func (b *builder) buildPort(svc serviceKey, p *api.ServicePort, denied string) (*Port, error) {
	if p.GetPort() < 1 || p.GetPort() > 65535 {
		return nil, fmt.Errorf("port %d is out of range", p.GetPort())
	}
	out := &Port{Service: svc.namespace + "/" + svc.name, Number: p.GetPort(), Split: p.GetSplit(), Protocol: p.GetProtocol(), Denied: denied}
	if denied != "" {
		return out, nil
	}
	for i, r := range p.GetRoutes() {
		route, err := b.buildRoute(out, i, r)
		if err != nil {
			return nil, fmt.Errorf("port %d route %d: %w", p.GetPort(), i, err)
		}
		out.routes = append(out.routes, route)
	}
	return out, nil
}

func (b *builder) buildRoute(port *Port, index int, r *api.Route) (*Route, error) {
	out := &Route{Name: r.GetName(), Label: r.GetName()}
	if out.Name == "" {
		out.Name = fmt.Sprintf("%s port %d route %d", port.Service, port.Number, index)
		out.Label = strconv.Itoa(index)
	}
	if index >= MaxRouteLabels {
		out.Label = "other"
	}
	out.picks.Store(rand.Uint64()) // proxies do not start in step
	for _, m := range r.GetMatches() {
		built, err := buildMatch(m)
		if err != nil {
			return nil, err
		}
		out.matches = append(out.matches, built)
	}
	outlier, err := b.policies(port, index, r, out)
	if err != nil {
		return nil, err
	}
	if out.RequestHeaders, err = buildHeaderModifier(r.GetRequestHeaders()); err != nil {
		return nil, fmt.Errorf("route %s: request headers: %w", out.Name, err)
	}
	if out.ResponseHeaders, err = buildHeaderModifier(r.GetResponseHeaders()); err != nil {
		return nil, fmt.Errorf("route %s: response headers: %w", out.Name, err)
	}
	limit := int64(cmpOr(r.GetMaxRequestsPerEndpoint(), DefaultMaxRequestsPerEndpoint))
	for _, be := range r.GetBackends() {
		built, err := b.buildBackend(be, limit, outlier, out.Budget)
		if err != nil {
			return nil, err
		}
		out.total += uint64(built.Weight)
		out.backends = append(out.backends, built)
	}
	for _, m := range r.GetMirrors() {
		if m.GetPercent() > 100 {
			return nil, fmt.Errorf("mirror %s: percent %d is above 100", m.GetBackend().GetService(), m.GetPercent())
		}
		// Mirrors never retry and count in no budget: their answers are dropped.
		built, err := b.buildBackend(m.GetBackend(), limit, outlier, nil)
		if err != nil {
			return nil, err
		}
		out.Mirrors = append(out.Mirrors, Mirror{Backend: built, Percent: cmpOr(m.GetPercent(), 100)})
	}
	return out, nil
}

// Mirror is a backend that receives copies of Percent% of a route's requests.
type Mirror struct {
	Backend *Backend
	Percent uint32
}

func (b *builder) buildBackend(be *api.Backend, limit int64, outlier outlierConfig, budget *Budget) (*Backend, error) {
	built := &Backend{Service: be.GetService(), Weight: be.GetWeight(), Unavailable: be.GetUnavailable(), limit: limit, outlier: outlier, budget: budget}
	var err error
	if built.RequestHeaders, err = buildHeaderModifier(be.GetRequestHeaders()); err != nil {
		return nil, fmt.Errorf("backend %s: request headers: %w", be.GetService(), err)
	}
	if built.ResponseHeaders, err = buildHeaderModifier(be.GetResponseHeaders()); err != nil {
		return nil, fmt.Errorf("backend %s: response headers: %w", be.GetService(), err)
	}
	for _, e := range be.GetEndpoints() {
		ep, err := buildEndpoint(be.GetService(), e)
		if err != nil {
			return nil, err
		}
		if n := len(built.endpoints); n > 0 && built.endpoints[n-1].Identity == ep.Identity {
			// The endpoints of a backend mostly run as one ServiceAccount, and each
			// brings its own copy of the SPIFFE ID: keep one.
			ep.Identity = built.endpoints[n-1].Identity
		}
		built.endpoints = append(built.endpoints, b.endpoint(ep))
	}
	return built, nil
}

func buildEndpoint(backend string, e *api.Endpoint) (Endpoint, error) {
	ip, err := netip.ParseAddr(e.GetIp())
	if err != nil || e.GetPort() < 1 || e.GetPort() > 65535 {
		return Endpoint{}, fmt.Errorf("backend %s: invalid endpoint %s:%d", backend, e.GetIp(), e.GetPort())
	}
	ep := Endpoint{Addr: netip.AddrPortFrom(ip, uint16(e.GetPort())), Identity: e.GetIdentity()}
	if e.GetIdentity() != "" {
		if e.GetProxyPort() < 1 || e.GetProxyPort() > 65535 {
			return Endpoint{}, fmt.Errorf("backend %s: meshed endpoint %s:%d has no valid proxy port", backend, e.GetIp(), e.GetPort())
		}
		ep.ProxyPort = uint16(e.GetProxyPort())
	}
	return ep, nil
}

func buildMatch(m *api.HTTPMatch) (match, error) {
	out := match{name: m.GetName(), methods: m.GetMethods()}
	if m.GetPathRegex() != "" {
		re, err := api.PathRegexp(m.GetPathRegex())
		if err != nil {
			return match{}, fmt.Errorf("match %s: %w", m.GetName(), err)
		}
		out.path = re
	}
	for _, h := range m.GetHeaders() {
		re, err := api.HeaderRegexp(h.GetValueRegex())
		if err != nil {
			return match{}, fmt.Errorf("match %s: header %s: %w", m.GetName(), h.GetName(), err)
		}
		out.headers = append(out.headers, headerMatch{name: h.GetName(), value: re})
	}
	return out, nil
}

// Version is the snapshot version the table was built from.
func (t *Table) Version() uint64 { return t.version }

// Ports yields every Service port of the table, in no particular order.
func (t *Table) Ports() iter.Seq[*Port] {
	return func(yield func(*Port) bool) {
		for _, ports := range t.services {
			for _, p := range ports {
				if !yield(p) {
					return
				}
			}
		}
	}
}

// ErrNoRoute is returned (wrapped) when an authority names no Service port of the mesh.
var ErrNoRoute = errors.New("no route")

// Resolve finds the Service port an HTTP authority (Host header) names: <svc>, <svc>.<ns>,
// <svc>.<ns>.svc or <svc>.<ns>.svc.<domain>, with an optional port (80 when absent).
func (t *Table) Resolve(authority string) (*Port, error) {
	host, port, err := splitAuthority(authority)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoRoute, err)
	}
	key, ok := t.serviceKey(host)
	if !ok {
		return nil, fmt.Errorf("%w: host %q is not a mesh service name", ErrNoRoute, host)
	}
	ports, ok := t.services[key]
	if !ok {
		return nil, fmt.Errorf("%w: no mesh service %s/%s (host %q)", ErrNoRoute, key.namespace, key.name, host)
	}
	p, ok := portNumbered(ports, port)
	if !ok {
		return nil, fmt.Errorf("%w: service %s/%s has no port %d (host %q)", ErrNoRoute, key.namespace, key.name, port, authority)
	}
	return p, nil
}

func splitAuthority(authority string) (string, uint32, error) {
	if authority == "" {
		return "", 0, errors.New("the request has no Host")
	}
	if !strings.ContainsAny(authority, ":[]") {
		// No port: the whole authority is the host, and HTTP's default port applies.
		return strings.ToLower(strings.TrimSuffix(authority, ".")), 80, nil
	}
	host, portStr, err := net.SplitHostPort(authority)
	if err != nil {
		return "", 0, fmt.Errorf("malformed host %q", authority)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return "", 0, fmt.Errorf("malformed port in host %q", authority)
	}
	return strings.ToLower(strings.TrimSuffix(host, ".")), uint32(port), nil
}

// serviceKey names the Service a host names: name, name.namespace,
// name.namespace.svc or name.namespace.svc.<cluster domain>.
func (t *Table) serviceKey(host string) (serviceKey, bool) {
	name, rest, more := strings.Cut(host, ".")
	if !more {
		return serviceKey{t.namespace, name}, true
	}
	namespace, rest, more := strings.Cut(rest, ".")
	if !more {
		return serviceKey{namespace, name}, true
	}
	svc, domain, more := strings.Cut(rest, ".")
	if svc != "svc" || more && domain != t.domain {
		return serviceKey{}, false
	}
	return serviceKey{namespace, name}, true
}

// Route returns the first route of the port that admits a request, or nil when none does.
func (p *Port) Route(method, path string, header http.Header) *Route {
	for _, r := range p.routes {
		if r.admits(method, path, header) {
			return r
		}
	}
	return nil
}

func (r *Route) admits(method, path string, header http.Header) bool {
	if len(r.matches) == 0 {
		return true
	}
	for i := range r.matches {
		if r.matches[i].admits(method, path, header) {
			return true
		}
	}
	return false
}

func (m *match) admits(method, path string, header http.Header) bool {
	if len(m.methods) > 0 && !slices.Contains(m.methods, method) {
		return false
	}
	if m.path != nil && !m.path.MatchString(path) {
		return false
	}
	for _, h := range m.headers {
		if !slices.ContainsFunc(header.Values(h.name), h.value.MatchString) {
			return false
		}
	}
	return true
}

// goldenStep is 2^64 divided by the golden ratio: stepping by it visits [0, 2^64) as
// evenly as any sequence can (a Weyl sequence of lowest discrepancy).
const goldenStep = 0x9E3779B97F4A7C15

// Pick chooses a backend by weight. It returns nil when no backend has a weight.
//
// Successive picks on a route follow a golden-ratio sequence rather than random draws, so
// every run of requests, however short, is split within a few requests of the weights
// (random draws would stray by ±1.5 points over 1000 requests at 60/40), with one atomic
// add per request and no lock.
func (r *Route) Pick() *Backend {
	if r.total == 0 {
		return nil
	}
	n, _ := bits.Mul64(r.picks.Add(1)*goldenStep, r.total) // ⌊x·total⌋ for x in [0, 1)
	for _, b := range r.backends {
		if n < uint64(b.Weight) {
			return b
		}
		n -= uint64(b.Weight)
	}
	return nil // unreachable: total is the sum of the weights
}

// Backends returns the route's backends, in configuration order.
func (r *Route) Backends() []*Backend { return r.backends }

// Endpoints returns the state of the backend's endpoints, in configuration order.
func (b *Backend) Endpoints() []*EndpointState { return b.endpoints }
