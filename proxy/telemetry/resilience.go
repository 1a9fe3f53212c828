package telemetry

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// resilienceMetrics count what the proxy does for requests that fail: retries, retries
// the budget refused, endpoint ejections and timeouts, per destination Service port.
type resilienceMetrics struct {
	retries, retriesSkipped, ejections, timeouts *prometheus.CounterVec
}

func newResilienceMetrics() resilienceMetrics {
	labels := []string{"direction", "dst_service", "dst_port"}
	vec := func(name, help string, extra ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, append(labels, extra...))
	}
	return resilienceMetrics{
		retries: vec("braid_proxy_retries_total",
			"Requests the proxy sent again after a failed attempt, by destination Service port."),
		retriesSkipped: vec("braid_proxy_retries_skipped_total",
			"Failed attempts the route would have retried but its retry budget was spent, by destination Service port."),
		ejections: vec("braid_proxy_endpoint_ejections_total",
			"Endpoints ejected after consecutive failures, by the destination Service port of the failure that ejected them."),
		timeouts: vec("braid_proxy_timeouts_total",
			"Requests a route's timeout ended, by destination Service port and timeout (request: the whole request; backend_request: one attempt).",
			"timeout"),
	}
}

func (r *resilienceMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{r.retries, r.retriesSkipped, r.ejections, r.timeouts}
}

func (r *resilienceMetrics) forget(labels prometheus.Labels) {
	for _, v := range []*prometheus.CounterVec{r.retries, r.retriesSkipped, r.ejections, r.timeouts} {
		v.DeletePartialMatch(labels)
	}
}

// lazyCounter is a counter whose series appears when it first counts.
type lazyCounter struct {
	vec    *prometheus.CounterVec
	labels prometheus.Labels
	c      atomic.Pointer[counter]
}

func (l *lazyCounter) inc() {
	c := l.c.Load()
	if c == nil {
		c = &counter{l.vec.With(l.labels)} // racing first increments get the same counter
		l.c.Store(c)
	}
	c.Inc()
}

// destinationResilience are a Destination's resilience counters.
type destinationResilience struct {
	retries, retriesSkipped, ejections lazyCounter
	timeouts                           [2]lazyCounter // request, backend_request
}

func (m *Metrics) newDestinationResilience(labels prometheus.Labels) destinationResilience {
	with := func(extra string) prometheus.Labels {
		l := prometheus.Labels{"timeout": extra}
		for k, v := range labels {
			l[k] = v
		}
		return l
	}
	return destinationResilience{
		retries:        lazyCounter{vec: m.resilience.retries, labels: labels},
		retriesSkipped: lazyCounter{vec: m.resilience.retriesSkipped, labels: labels},
		ejections:      lazyCounter{vec: m.resilience.ejections, labels: labels},
		timeouts: [2]lazyCounter{
			{vec: m.resilience.timeouts, labels: with("request")},
			{vec: m.resilience.timeouts, labels: with("backend_request")},
		},
	}
}

// Retried counts a retry.
func (d *Destination) Retried() {
	if d != nil {
		d.resilience.retries.inc()
	}
}

// RetrySkipped counts a retry the retry budget refused.
func (d *Destination) RetrySkipped() {
	if d != nil {
		d.resilience.retriesSkipped.inc()
	}
}

// Ejected counts an endpoint ejection.
func (d *Destination) Ejected() {
	if d != nil {
		d.resilience.ejections.inc()
	}
}

// TimedOut counts a request a timeout ended: kind is "request" or "backend_request".
func (d *Destination) TimedOut(kind string) {
	if d == nil {
		return
	}
	if kind == "backend_request" {
		d.resilience.timeouts[1].inc()
	} else {
		d.resilience.timeouts[0].inc()
	}
}
