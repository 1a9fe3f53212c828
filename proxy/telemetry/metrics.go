// Package telemetry holds the proxy's Prometheus metrics: requests and their latency per
// destination Service port, and the state of its configuration. Every label value comes
// from the proxy's configuration or from a fixed set, never from a request, so the number
// of series is bounded by the Service ports the proxy may route to.
package telemetry

import (
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
)

// codeClasses and results are the values of the code_class and result labels, indexed
// by classOf and Result.
var (
	codeClasses = [...]string{"1xx", "2xx", "3xx", "4xx", "5xx"}
	results     = [...]string{Success: "success", Failure: "failure", ProxyError: "proxy_error"}
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
}

type destKey struct {
	service string
	port    uint32
}

// New returns the proxy's metrics, registered with a new registry together with the Go
// runtime and process collectors.
func New() *Metrics {
	labels := []string{"direction", "dst_service", "dst_port"}
	m := &Metrics{
		registry: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "braid_proxy_requests_total",
			Help: "Requests the proxy answered, by destination Service port, status code class and result " +
				"(success: the application answered below 500; failure: from 500, or its answer broke off; " +
				"proxy_error: the proxy answered itself).",
		}, append(labels, "code_class", "result")),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "braid_proxy_response_latency_seconds",
			Help:    "Time from a request's arrival at the proxy to the end of its response, by destination Service port.",
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
// the series of Service ports the table no longer has, so that removed Services do not
// stay in the metrics forever.
func (m *Metrics) ConfigApplied(table *router.Table) {
	if m == nil {
		return
	}
	m.configVersion.Set(float64(table.Version()))
	keep := map[destKey]bool{}
	for p := range table.Ports() {
		keep[destKey{p.Service, p.Number}] = true
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.byPort.Clear()
	for key, d := range m.dests {
		if !keep[key] {
			delete(m.dests, key)
			m.requests.DeletePartialMatch(d.labels)
			m.latency.DeletePartialMatch(d.labels)
			m.tcp.forget(d.labels)
			m.resilience.forget(d.labels)
		}
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
	return &Destination{
		labels:     labels,
		requests:   m.requests.MustCurryWith(labels),
		latency:    m.latency.With(labels),
		resilience: m.newDestinationResilience(labels),
	}
}

// Destination records the requests for one Service port.
type Destination struct {
	labels   prometheus.Labels
	requests *prometheus.CounterVec // curried with labels
	latency  prometheus.Observer
	// counters holds the counter of each (code class, result) pair once a request has
	// had it: series appear when they first count, not as zeros for every pair.
	counters   [len(codeClasses) * len(results)]atomic.Pointer[counter]
	resilience destinationResilience
}

type counter struct{ prometheus.Counter }

// Record counts one answered request: its status code, its result and the time it took.
func (d *Destination) Record(status int, result Result, elapsed time.Duration) {
	if d == nil {
		return
	}
	class := classOf(status)
	slot := &d.counters[class*len(results)+int(result)]
	c := slot.Load()
	if c == nil {
		// Racing first requests may both get here; the vector returns the same counter.
		c = &counter{d.requests.WithLabelValues(codeClasses[class], results[result])}
		slot.Store(c)
	}
	c.Inc()
	d.latency.Observe(elapsed.Seconds())
}

// classOf returns the index in codeClasses of a status code; codes outside 100–599 count
// with the nearest class.
func classOf(status int) int {
	return min(max(status/100, 1), 5) - 1
}
