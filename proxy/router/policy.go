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

// DefaultBackoffMaxFactor is the longest backoff, in backoff bases, when a retry policy
// sets a base and no maximum.
const DefaultBackoffMaxFactor = 10

// maxBackoff bounds a retry policy's backoff base and maximum.
const maxBackoff = 24 * time.Hour

// Backoff returns the longest pause before the n-th retry of a request (n from 1):
// min(BackoffMax, BackoffBase × 2^(n-1)), or 0 when the route has no backoff. The pause
// itself is drawn at random between 0 and that ("full jitter"), so that the retries of
// many clients do not go out in step.
func (r *Route) Backoff(n int) time.Duration {
	if r.BackoffBase <= 0 || n < 1 {
		return 0
	}
	d := r.BackoffBase
	for i := 1; i < n && d < r.BackoffMax; i++ {
		d *= 2 // at most 2 × BackoffMax, which stays far from overflowing
	}
	return min(d, r.BackoffMax)
}

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
	if err := backoffPolicy(rp, out); err != nil {
		return outlierConfig{}, err
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

// backoffPolicy fills in the route's retry backoff, its default maximum applied.
func backoffPolicy(rp *api.RetryPolicy, out *Route) error {
	var err error
	if out.BackoffBase, err = duration("backoff base", rp.GetBackoffBase()); err != nil {
		return err
	}
	if out.BackoffMax, err = duration("backoff max", rp.GetBackoffMax()); err != nil {
		return err
	}
	if out.BackoffBase > maxBackoff || out.BackoffMax > maxBackoff {
		return fmt.Errorf("route %s: a retry backoff above %s", out.Name, maxBackoff)
	}
	if out.BackoffMax == 0 {
		out.BackoffMax = out.BackoffBase * DefaultBackoffMaxFactor
	}
	return nil
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
