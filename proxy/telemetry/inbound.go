package telemetry

import (
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Inbound records what the proxy's inbound listener served, by the client's verified
// identity ("plaintext" for clients without one) and the application port.
type Inbound struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	conns    *prometheus.CounterVec

	mu    sync.Mutex
	ports map[uint32]string // the port labels handed out so far
}

// Plaintext is the source identity of clients without a mesh identity.
const Plaintext = "plaintext"

// maxPortLabels bounds the distinct port labels: the target port of a request comes from
// its client, so past this many the others count as "other".
const maxPortLabels = 64

// Inbound results.
const (
	InboundSuccess = "success"
	InboundFailure = "failure"
	InboundDenied  = "denied"
)

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
		m.registry.MustRegister(in.requests, in.latency, in.conns)
		m.inbound = in
	})
	return m.inbound
}

func (in *Inbound) port(p uint32) string {
	in.mu.Lock()
	defer in.mu.Unlock()
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

// Request records one HTTP request.
func (in *Inbound) Request(identity string, port uint32, status int, result string, elapsed time.Duration) {
	if in == nil {
		return
	}
	src, p := source(identity), in.port(port)
	in.requests.WithLabelValues(src, p, codeClasses[classOf(status)], StatusLabel(status), result).Inc()
	in.latency.WithLabelValues(src, p).Observe(elapsed.Seconds())
}

// Connection records one opaque connection.
func (in *Inbound) Connection(identity string, port uint32, result string) {
	if in == nil {
		return
	}
	in.conns.WithLabelValues(source(identity), in.port(port), result).Inc()
}
