// Package telemetry holds the proxy's Prometheus metrics: requests and their latency per
// destination Service port, route and workload identity, and the state of its
// configuration. Every label value comes from the proxy's configuration or from a fixed
// set, never from a request, so the number of series is bounded by the Service ports,
// routes and identities the proxy may route to.
package telemetry

import (
	"maps"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/braidmesh/braid/proxy/router"
)

// Unknown is the dst_service and dst_port of requests whose authority names no Service
// port of the mesh: the raw host would make the labels unbounded.
const Unknown = "unknown"

// Label values of requests that did not get as far as a route or an endpoint.
const (
	// NoRoute is the route label of requests no route carried: no Service port, no route
	// of the port admitted them, or the Service is denied.
	NoRoute = "none"
	// NoEndpoint is the dst_identity label of requests the proxy answered before trying
	// any endpoint.
	NoEndpoint = "none"
	// Unmeshed is the dst_identity label of endpoints without a mesh identity, which the
	// proxy reaches in plaintext.
	Unmeshed = "unmeshed"
	// Other is the label value shared by the routes and identities past a port's bounds
	// (router.MaxRouteLabels, MaxIdentityLabels).
	Other = "other"
)

// MaxIdentityLabels bounds the distinct dst_identity labels of a Service port.
const MaxIdentityLabels = 32

// DirectionOutbound is the direction label of requests from the workload to the mesh.
const DirectionOutbound = "outbound"

// LatencyBuckets are the response latency histogram's upper bounds, in seconds: from the
// tenth of a millisecond a proxy hop costs on a fast path to the seconds of a slow backend.
var LatencyBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// Result is how a request ended: the result label.
type Result uint8

// The results of requests.
const (
	// Success: the application answered, with a status below 500.
	Success Result = iota
	// Failure: the application answered with a status from 500, or its answer broke off.
	Failure
	// ProxyError: the proxy answered itself (the answers with a Braid-Proxy-Error header).
	ProxyError
	// Denied: the proxy refused the request itself, because its workload may not reach
	// the Service (a 403).
	Denied
)

// codeClasses and results are the values of the code_class and result labels, indexed
// by classOf and Result.
var (
	codeClasses = [...]string{"1xx", "2xx", "3xx", "4xx", "5xx"}
	results     = [...]string{Success: "success", Failure: "failure", ProxyError: "proxy_error", Denied: "denied"}
)

// Metrics are one proxy's metrics, in a registry of their own.
type Metrics struct {
	registry         *prometheus.Registry
	requests         *prometheus.CounterVec
	latency          *prometheus.HistogramVec
	configVersion    prometheus.Gauge
	configRejections prometheus.Counter
	tcp              tcpMetrics
	resilience       resilienceMetrics

	// byPort caches each resolved *router.Port's Destination, so that a request finds
	// its counters with one lock-free load and no allocation. It is emptied whenever a
	// new table is applied, since that table's ports are new values.
	byPort sync.Map // *router.Port → *Destination

	mu      sync.Mutex
	dests   map[destKey]*Destination // guarded by mu
	unknown *Destination

	inboundOnce sync.Once
	inbound     *Inbound

	edges *Edges // the requests per peer, for the SMI TrafficMetrics API (edges.go)
}

type destKey struct {
	service string
	port    uint32
}

// New returns the proxy's metrics, registered with a new registry together with the Go
// runtime and process collectors.
func New() *Metrics {
	labels := []string{"direction", "dst_service", "dst_port", "route", "dst_identity"}
	m := &Metrics{
		registry: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "braid_proxy_requests_total",
			Help: "Requests the proxy answered, by destination Service port, route, destination workload identity, " +
				"status code class, status code and result (success: the application answered below 500; failure: from 500, " +
				"or its answer broke off; proxy_error: the proxy answered itself; denied: the workload may not reach the Service).",
		}, append(labels, "code_class", "status_code", "result")),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "braid_proxy_response_latency_seconds",
			Help:    "Time from a request's arrival at the proxy to the end of its response, by destination Service port, route and workload identity.",
			Buckets: LatencyBuckets,
		}, labels),
		configVersion: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "braid_proxy_config_version", Help: "The version of the configuration the proxy runs (0: none yet).",
		}),
		configRejections: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "braid_proxy_config_rejections_total",
			Help: "Configurations the proxy rejected (NACKed, or a config file that did not load), keeping its last good one.",
		}),
		tcp:        newTCPMetrics(),
		resilience: newResilienceMetrics(),
		dests:      map[destKey]*Destination{},
		edges:      NewEdges(EdgesOptions{}),
	}
	m.registry.MustRegister(m.requests, m.latency, m.configVersion, m.configRejections,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.registry.MustRegister(m.tcp.collectors()...)
	m.registry.MustRegister(m.resilience.collectors()...)
	m.unknown = m.newDestination(Unknown, Unknown)
	return m
}

// Registry returns the registry the metrics are registered with.
func (m *Metrics) Registry() *prometheus.Registry { return m.registry }

// ConfigApplied records that the proxy now runs table: it sets the version, and forgets
// the series of Service ports the table no longer has, and those of routes and
// identities a port no longer has, so that removed Services do not stay in the metrics
// forever.
func (m *Metrics) ConfigApplied(table *router.Table) {
	if m == nil {
		return
	}
	m.configVersion.Set(float64(table.Version()))
	keep := map[destKey]*router.Port{}
	for p := range table.Ports() {
		keep[destKey{p.Service, p.Number}] = p
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.byPort.Clear()
	for key, d := range m.dests {
		port := keep[key]
		if port == nil {
			delete(m.dests, key)
			m.requests.DeletePartialMatch(d.labels)
			m.latency.DeletePartialMatch(d.labels)
			m.tcp.forget(d.labels)
			m.resilience.forget(d.labels)
			continue
		}
		d.prune(port)
	}
}

// ConfigRejected counts a configuration the proxy did not apply.
func (m *Metrics) ConfigRejected() {
	if m != nil {
		m.configRejections.Inc()
	}
}

// Destination returns the recorder of requests for a Service port; port nil stands for
// requests that named no Service port of the mesh. A nil *Metrics returns nil, which
// records nothing.
func (m *Metrics) Destination(port *router.Port) *Destination {
	switch {
	case m == nil:
		return nil
	case port == nil:
		return m.unknown
	}
	if d, ok := m.byPort.Load(port); ok {
		return d.(*Destination)
	}
	key := destKey{port.Service, port.Number}
	m.mu.Lock()
	defer m.mu.Unlock()
	d := m.dests[key]
	if d == nil {
		d = m.newDestination(port.Service, strconv.FormatUint(uint64(port.Number), 10))
		m.dests[key] = d
	}
	m.byPort.Store(port, d)
	return d
}

func (m *Metrics) newDestination(service, port string) *Destination {
	labels := prometheus.Labels{"direction": DirectionOutbound, "dst_service": service, "dst_port": port}
	d := &Destination{
		m:          m,
		labels:     labels,
		resilience: m.newDestinationResilience(labels),
		identities: map[string]bool{},
	}
	d.series.Store(&map[seriesKey]*series{})
	return d
}

// Destination records the requests for one Service port.
type Destination struct {
	m      *Metrics
	labels prometheus.Labels // direction, dst_service, dst_port
	// series maps a route and an identity label to their series. It is copied on write
	// (new series are rare), so that a request finds its series with one lock-free load
	// and a map lookup, without allocating.
	series     atomic.Pointer[map[seriesKey]*series]
	mu         sync.Mutex      // serialises writers of series
	identities map[string]bool // the dst_identity labels handed out; guarded by mu
	resilience destinationResilience
}

// seriesKey is what a request is recorded by within its Service port: the labels of its
// route and of its endpoint's identity as the request has them (before bounding).
type seriesKey struct{ route, identity string }

// series are the request counters and the latency histogram of one Service port, route
// and identity.
type series struct {
	labels   prometheus.Labels      // every label but code_class, status_code and result
	requests *prometheus.CounterVec // curried with labels
	latency  prometheus.Observer
	// counters holds the counter of each (status code, result) pair once a request has
	// had it: series appear when they first count, not as zeros for every pair. It is
	// copied on write, as Destination.series.
	counters atomic.Pointer[map[counterKey]prometheus.Counter]
	mu       sync.Mutex // serialises writers of counters
}

type counter struct{ prometheus.Counter }

type counterKey struct {
	status int
	result Result
}

// counter returns the counter of requests answered status with result.
func (s *series) counter(status int, result Result) prometheus.Counter {
	key := counterKey{status, result}
	if m := s.counters.Load(); m != nil {
		if c, ok := (*m)[key]; ok {
			return c
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var old map[counterKey]prometheus.Counter
	if m := s.counters.Load(); m != nil {
		old = *m
	}
	if c, ok := old[key]; ok {
		return c
	}
	c := s.requests.WithLabelValues(codeClasses[classOf(status)], StatusLabel(status), results[result])
	next := with(old, key, c)
	s.counters.Store(&next)
	return c
}

// StatusLabel is the status_code label of a status: its number from 100 to 599, "other"
// outside (the label must stay bounded whatever an application answers).
func StatusLabel(status int) string {
	if status < 100 || status > 599 {
		return Other
	}
	return strconv.Itoa(status)
}

// RouteLabel is the route label of requests carried by route (nil: none).
func RouteLabel(route *router.Route) string {
	if route == nil {
		return NoRoute
	}
	return route.Label
}

// IdentityLabel is the dst_identity label of requests sent to ep (nil: to no endpoint).
func IdentityLabel(ep *router.Endpoint) string {
	switch {
	case ep == nil:
		return NoEndpoint
	case ep.Identity == "":
		return Unmeshed
	}
	return ep.Identity
}

// Record counts one answered request: the route that carried it (nil: none), the
// endpoint that answered it or was tried last (nil: none), its status code, its result
// and the time it took.
func (d *Destination) Record(route *router.Route, ep *router.Endpoint, status int, result Result, elapsed time.Duration) {
	if d == nil {
		return
	}
	s := d.seriesFor(seriesKey{RouteLabel(route), IdentityLabel(ep)})
	s.counter(status, result).Inc()
	s.latency.Observe(elapsed.Seconds())
}

func (d *Destination) seriesFor(key seriesKey) *series {
	if s, ok := (*d.series.Load())[key]; ok {
		return s
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	old := *d.series.Load()
	if s, ok := old[key]; ok {
		return s
	}
	bounded := seriesKey{key.route, d.identityLabel(key.identity)}
	s, ok := old[bounded]
	if !ok {
		s = d.newSeries(bounded)
	}
	next := with(old, bounded, s)
	next[key] = s
	d.series.Store(&next)
	return s
}

// identityLabel bounds the identity labels of the port; callers hold d.mu.
func (d *Destination) identityLabel(identity string) string {
	if d.identities[identity] {
		return identity
	}
	if len(d.identities) >= MaxIdentityLabels {
		return Other
	}
	d.identities[identity] = true
	return identity
}

func (d *Destination) newSeries(key seriesKey) *series {
	labels := prometheus.Labels{"route": key.route, "dst_identity": key.identity}
	for k, v := range d.labels {
		labels[k] = v
	}
	return &series{labels: labels, requests: d.m.requests.MustCurryWith(labels), latency: d.m.latency.With(labels)}
}

// prune forgets the series of routes and identities port no longer has; callers hold
// m.mu.
func (d *Destination) prune(port *router.Port) {
	routes := map[string]bool{NoRoute: true}
	identities := map[string]bool{NoEndpoint: true, Unmeshed: true, Other: true}
	for _, r := range port.Routes() {
		routes[r.Label] = true
		for _, b := range r.Backends() {
			for _, e := range b.Endpoints() {
				identities[IdentityLabel(&e.Endpoint)] = true
			}
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	next := map[seriesKey]*series{}
	for k, s := range *d.series.Load() {
		if routes[k.route] && identities[k.identity] {
			next[k] = s
			continue
		}
		if s.labels["route"] == k.route && s.labels["dst_identity"] == k.identity {
			d.m.requests.DeletePartialMatch(s.labels)
			d.m.latency.Delete(s.labels)
		}
	}
	for id := range d.identities {
		if !identities[id] {
			delete(d.identities, id)
		}
	}
	d.series.Store(&next)
}

// classOf returns the index in codeClasses of a status code; codes outside 100–599 count
// with the nearest class.
func classOf(status int) int {
	return min(max(status/100, 1), 5) - 1
}

// with returns a copy of m (which may be nil) with k set to v: the copy-on-write step
// of the maps that requests read without a lock.
func with[K comparable, V any](m map[K]V, k K, v V) map[K]V {
	next := make(map[K]V, len(m)+1)
	maps.Copy(next, m)
	next[k] = v
	return next
}
