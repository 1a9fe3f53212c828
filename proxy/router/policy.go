package router

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/braidmesh/braid/proxy/api"
)

// Defaults of a route's endpoint policies.
const (
	DefaultMaxRequestsPerEndpoint = 10000
	DefaultConsecutiveFailures    = 5
	DefaultBaseEjectionTime       = 30 * time.Second
	DefaultMaxEjectionPercent     = 50
)

// maxRetries bounds a route's retries per request, whatever its configuration says.
const maxRetries = 10

func cmpOr[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

func optional(v *uint32, def uint32) uint32 {
	if v == nil {
		return def
	}
	return *v
}

// policies fills in the route's timeouts and retry policy, and returns its outlier
// detection, defaults applied.
func (b *builder) policies(port *Port, index int, r *api.Route, out *Route) (outlierConfig, error) {
	var err error
	if out.Timeout, err = duration("timeout", r.GetTimeout()); err != nil {
		return outlierConfig{}, err
	}
	if out.BackendRequestTimeout, err = duration("backend request timeout", r.GetBackendRequestTimeout()); err != nil {
		return outlierConfig{}, err
	}
	rp := r.GetRetry()
	if rp == nil {
		rp = &api.RetryPolicy{}
	}
	out.Retries = int(optional(rp.Retries, DefaultRetries))
	if out.Retries > maxRetries {
		return outlierConfig{}, fmt.Errorf("route %s: %d retries is more than %d", out.Name, out.Retries, maxRetries)
	}
	for _, code := range rp.GetRetryOn() {
		if code < 100 || code > 599 {
			return outlierConfig{}, fmt.Errorf("route %s: retry on status %d, which is no HTTP status", out.Name, code)
		}
		out.RetryOn = append(out.RetryOn, int(code))
	}
	percent := optional(rp.BudgetPercent, DefaultBudgetPercent)
	if percent > 1000 {
		return outlierConfig{}, fmt.Errorf("route %s: a retry budget of %d%% is more than 1000%%", out.Name, percent)
	}
	out.Budget = b.budget(budgetKey{service: port.Service, port: port.Number, route: index,
		percent: percent, minRate: optional(rp.MinRetriesPerSecond, DefaultMinRetriesPerSecond)})

	od := r.GetOutlierDetection()
	if od == nil {
		od = &api.OutlierDetection{}
	}
	base, err := duration("base ejection time", od.GetBaseEjectionTime())
	if err != nil {
		return outlierConfig{}, err
	}
	oc := outlierConfig{
		consecutive: optional(od.ConsecutiveFailures, DefaultConsecutiveFailures),
		base:        int64(cmpOr(base, DefaultBaseEjectionTime)),
		maxPercent:  int(optional(od.MaxEjectionPercent, DefaultMaxEjectionPercent)),
	}
	if oc.maxPercent > 100 {
		return outlierConfig{}, fmt.Errorf("route %s: max ejection percent %d is more than 100", out.Name, oc.maxPercent)
	}
	return oc, nil
}

func duration(what string, d *durationpb.Duration) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
		return 0, fmt.Errorf("invalid %s %v", what, d)
	}
	return d.AsDuration(), nil
}
