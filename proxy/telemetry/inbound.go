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
	// port seen, so that a request hashes no label values: copied on write, as
	// Destination.series.
	series atomic.Pointer[map[inboundKey]*series]

	mu    sync.Mutex        // serialises writers of series and ports
	ports map[uint32]string // the port labels handed out so far
}

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
			ports: map[uint32]string{},
		}
		in.series.Store(&map[inboundKey]*series{})
		m.registry.MustRegister(in.requests, in.latency, in.conns)
		m.inbound = in
	})
	return m.inbound
}

// port returns the label of port p; callers hold in.mu.
func (in *Inbound) port(p uint32) string {
	if l, ok := in.ports[p]; ok {
		return l
	}
	if len(in.ports) >= maxPortLabels {
		return "other"
	}
	l := strconv.FormatUint(uint64(p), 10)
	in.ports[p] = l
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
	s := in.seriesFor(inboundKey{identity, port})
	s.counter(status, result).Inc()
	s.latency.Observe(elapsed.Seconds())
}

func (in *Inbound) seriesFor(key inboundKey) *series {
	if s, ok := (*in.series.Load())[key]; ok {
		return s
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	old := *in.series.Load()
	if s, ok := old[key]; ok {
		return s
	}
	labels := prometheus.Labels{"src_identity": source(key.identity), "dst_port": in.port(key.port)}
	s := &series{labels: labels, requests: in.requests.MustCurryWith(labels), latency: in.latency.With(labels)}
	next := make(map[inboundKey]*series, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[key] = s
	in.series.Store(&next)
	return s
}

// Connection records one opaque connection, whose result is Success or Denied.
func (in *Inbound) Connection(identity string, port uint32, result Result) {
	if in == nil {
		return
	}
	in.mu.Lock()
	p := in.port(port)
	in.mu.Unlock()
	in.conns.WithLabelValues(source(identity), p, results[result]).Inc()
}
