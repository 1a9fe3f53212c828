// Package metricsapi serves SMI TrafficMetrics, the aggregated API group
// metrics.smi-spec.io/v1alpha1, from the edge statistics every braid-proxy keeps on its
// admin port (/stats/edges): it resolves a Kubernetes resource to its pods, fetches their
// proxies' statistics, maps each peer back to a resource of the same kind and merges the
// counts and latency histograms. See docs/metrics.md.
package metricsapi

import (
	"math"
	"sort"
	"time"
)

// proxyStats is what a proxy's GET /stats/edges answers (proxy/telemetry.EdgeSnapshot;
// the proxy does not share packages with the operator, so the wire form is repeated here).
type proxyStats struct {
	Window          string          `json:"window"`
	Timestamp       time.Time       `json:"timestamp"`
	LatencyBoundsMs []float64       `json:"latencyBoundsMs"`
	Edges           []proxyEdgeStat `json:"edges"`
}

// proxyEdgeStat is one peer's requests in the window.
type proxyEdgeStat struct {
	Direction     string   `json:"direction"` // inbound or outbound
	PeerAddr      string   `json:"peerAddr"`
	PeerIdentity  string   `json:"peerIdentity"`
	Success       uint64   `json:"success"`
	Failure       uint64   `json:"failure"`
	LatencyCounts []uint64 `json:"latencyCounts"`
}

// Proxy edge directions.
const (
	directionInbound  = "inbound"
	directionOutbound = "outbound"
)

// totals are merged requests: counts, and a latency histogram keyed by bucket upper bound
// in milliseconds (+Inf for the overflow bucket), so proxies with other bounds still merge.
type totals struct {
	success, failure uint64
	latency          map[float64]uint64
}

func newTotals() *totals { return &totals{latency: map[float64]uint64{}} }

// add merges one proxy edge, whose counts follow bounds.
func (t *totals) add(e proxyEdgeStat, bounds []float64) {
	t.success += e.Success
	t.failure += e.Failure
	for i, c := range e.LatencyCounts {
		// Empty buckets are kept too: each bucket's lower bound is the bound before it.
		b := math.Inf(1)
		if i < len(bounds) {
			b = bounds[i]
		}
		t.latency[b] += c
	}
}

// merge adds o into t.
func (t *totals) merge(o *totals) {
	t.success += o.success
	t.failure += o.failure
	for b, c := range o.latency {
		t.latency[b] += c
	}
}

// percentile returns the q-quantile (0 < q ≤ 1) of the latency in milliseconds, linearly
// interpolated inside its bucket; requests above every bound count at the largest finite
// bound. It is 0 without requests.
func (t *totals) percentile(q float64) float64 {
	bounds := make([]float64, 0, len(t.latency))
	var total uint64
	for b, c := range t.latency {
		bounds = append(bounds, b)
		total += c
	}
	if total == 0 {
		return 0
	}
	sort.Float64s(bounds)
	rank := q * float64(total)
	var seen uint64
	lower := 0.0
	for _, b := range bounds {
		c := t.latency[b]
		if float64(seen+c) >= rank {
			if math.IsInf(b, 1) {
				return lower
			}
			return lower + (b-lower)*(rank-float64(seen))/float64(c)
		}
		seen += c
		if !math.IsInf(b, 1) {
			lower = b
		}
	}
	return lower
}
