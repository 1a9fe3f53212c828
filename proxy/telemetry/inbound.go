package telemetry

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Inbound records what the proxy's inbound listener served, by the client's verified
// identity ("plaintext" for clients without one) and the application port.
type Inbound struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	conns    *prometheus.CounterVec

	// series holds the curried counters and the histogram of each client identity and
	// port label seen, so that a request hashes no label values; ports holds the port
	// labels handed out so far (at most maxPortLabels). Both are copied on write, as
	// Destination.series, so a request reads them without a lock.
	series atomic.Pointer[map[inboundKey]*series]
	ports  atomic.Pointer[map[uint32]string]
	mu     sync.Mutex // serialises writers of series and ports
}

// inboundKey is a client identity and an application port; port 0 stands for the ports
// past the labels' bound, which share the label "other" (no request targets port 0).
type inboundKey struct {
	identity string
	port     uint32
}

// Plaintext is the source identity of clients without a mesh identity.
const Plaintext = "plaintext"

// maxPortLabels bounds the distinct port labels: the target port of a request comes from
// its client, so past this many the others count as "other".
const maxPortLabels = 64

// Inbound returns the inbound metrics, registered with m's registry on first use.
func (m *Metrics) Inbound() *Inbound {
	m.inboundOnce.Do(func() {
		in := &Inbound{
			requests: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "braid_proxy_inbound_requests_total",
				Help: "HTTP requests the inbound listener answered, by client identity, application port, status code class, status code and result (success, failure, denied by the inbound policy).",
			}, []string{"src_identity", "dst_port", "code_class", "status_code", "result"}),
			latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
				Name:    "braid_proxy_inbound_response_latency_seconds",
				Help:    "Time from a request's arrival at the inbound listener to the end of its response, by client identity and application port.",
				Buckets: LatencyBuckets,
			}, []string{"src_identity", "dst_port"}),
			conns: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "braid_proxy_inbound_tcp_connections_total",
				Help: "Opaque connections the inbound listener took, by client identity, application port and result (success: admitted; denied).",
			}, []string{"src_identity", "dst_port", "result"}),
		}
		in.series.Store(&map[inboundKey]*series{})
		in.ports.Store(&map[uint32]string{})
		m.registry.MustRegister(in.requests, in.latency, in.conns)
		m.inbound = in
	})
	return m.inbound
}

// port returns the label of port p: its number, or Other past maxPortLabels ports.
func (in *Inbound) port(p uint32) string {
	if l, ok := (*in.ports.Load())[p]; ok {
		return l
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	old := *in.ports.Load()
	if l, ok := old[p]; ok {
		return l
	}
	if len(old) >= maxPortLabels {
		return Other
	}
	l := strconv.FormatUint(uint64(p), 10)
	next := with(old, p, l)
	in.ports.Store(&next)
	return l
}

func source(identity string) string {
	if identity == "" {
		return Plaintext
	}
	return identity
}

// Request records one HTTP request, whose result is Success, Failure or Denied.
func (in *Inbound) Request(identity string, port uint32, status int, result Result, elapsed time.Duration) {
	if in == nil {
		return
	}
	label := in.port(port)
	key := inboundKey{identity, port}
	if label == Other {
		key.port = 0 // the ports past the bound share one series: the map stays bounded
	}
	s := in.seriesFor(key, label)
	s.counter(status, result).Inc()
	s.latency.Observe(elapsed.Seconds())
}

// seriesFor returns the series of key, whose port's label is label.
func (in *Inbound) seriesFor(key inboundKey, label string) *series {
	if s, ok := (*in.series.Load())[key]; ok {
		return s
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	old := *in.series.Load()
	if s, ok := old[key]; ok {
		return s
	}
	labels := prometheus.Labels{"src_identity": source(key.identity), "dst_port": label}
	s := &series{labels: labels, requests: in.requests.MustCurryWith(labels), latency: in.latency.With(labels)}
	next := with(old, key, s)
	in.series.Store(&next)
	return s
}

// Connection records one opaque connection, whose result is Success or Denied.
func (in *Inbound) Connection(identity string, port uint32, result Result) {
	if in == nil {
		return
	}
	in.conns.WithLabelValues(source(identity), in.port(port), results[result]).Inc()
}
