package router

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Clock tells the time. The proxy runs on the system clock; tests substitute their own,
// so that latencies, ejections and budgets are tested without sleeping.
type Clock interface {
	Now() time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Balancing constants, from linkerd's and finagle's peak-EWMA balancers.
const (
	// decayTime is the EWMA's time constant: a latency seen t ago weighs e^(-t/decayTime).
	// Shorter than linkerd's 10 s: at low concurrency the balancer stops sending to an
	// endpoint whose average is high, so one pause (a GC, a page fault) of a pod whose
	// requests take a few hundred microseconds would otherwise starve it for tens of
	// seconds; with 1 s it is back within a few seconds.
	decayTime = time.Second
	// unknownRTT is the latency an endpoint that has not answered yet is assumed to have
	// for each request in flight to it: while it has none, its cost is 0, so that a new
	// endpoint gets a request at once, and its first answer tells its latency.
	unknownRTT = 30 * time.Millisecond
	// failureRTT is the least latency a failure counts for, so that an endpoint that
	// fails fast (a refused connection) does not look like the fastest.
	failureRTT = 100 * time.Millisecond
	// pickTries bounds how often Pick draws again when another request took the last
	// place under an endpoint's cap between its choice and its reservation.
	pickTries = 3
)

// Registry carries the live state of endpoints (latency, requests in flight, failures,
// ejections) and the retry budgets from each table it builds to the next: a new table
// reuses the state of the endpoints and routes it shares with the previous one, so a
// configuration change forgets nothing about them, and requests in flight on the old
// table go on counting on the same state. State that the latest table no longer uses
// lives only as long as the tables that still hold it.
type Registry struct {
	clock Clock
	epoch time.Time

	mu   sync.Mutex // held by Build, which runs one at a time anyway
	last *Table     // the last table built, whose state the next one reuses
}

// NewRegistry returns an empty registry on clock (the system clock when nil).
func NewRegistry(clock Clock) *Registry {
	if clock == nil {
		clock = systemClock{}
	}
	return &Registry{clock: clock, epoch: clock.Now()}
}

// now is the time since the registry's epoch, in nanoseconds: a monotonic count that
// fits in an atomic.
func (r *Registry) now() int64 { return int64(r.clock.Now().Sub(r.epoch)) }

// EndpointState is one endpoint with its live state.
type EndpointState struct {
	Endpoint
	reg *Registry
	// names holds the endpoint's addresses as text, made on first use (Names): most
	// endpoints of a large configuration are never called.
	names    atomic.Pointer[EndpointNames]
	inflight atomic.Int64
	// ejectedUntil is when the endpoint's current ejection ends (registry time); at or
	// before now, it is not ejected.
	ejectedUntil atomic.Int64

	mu sync.Mutex // guards the fields below
	// cost is the peak EWMA of the endpoint's latency, in nanoseconds, as of stamp;
	// observed says that the endpoint answered once.
	cost     float64
	stamp    int64
	observed bool
	// failures counts the failures in a row; ejections the ejections in a row, the last
	// of which ended at lastEjectionEnd.
	failures        uint32
	ejections       int64
	lastEjectionEnd int64
}

// decayLocked brings cost to now: a latency average with no new samples decays towards
// zero, so that an endpoint that was slow is tried again in time.
func (e *EndpointState) decayLocked(now int64) {
	if elapsed := now - e.stamp; elapsed > 0 {
		e.cost *= math.Exp(-float64(elapsed) / float64(decayTime))
		e.stamp = now
	}
}

// load is the endpoint's cost for the balancer: its latency average times the requests
// it would have in flight with one more.
func (e *EndpointState) load(now int64) float64 {
	inflight := float64(e.inflight.Load())
	e.mu.Lock()
	e.decayLocked(now)
	cost, observed := e.cost, e.observed
	e.mu.Unlock()
	if !observed {
		return float64(unknownRTT) * inflight
	}
	return cost * (inflight + 1)
}

// observeLocked adds one latency to the average: the first sets it, a peak replaces it
// at once, a lower latency weighs by the time elapsed since the last one.
func (e *EndpointState) observeLocked(now int64, rtt float64) {
	elapsed := max(now-e.stamp, 0)
	if !e.observed || rtt > e.cost {
		e.observed = true
		e.cost = rtt
	} else {
		w := math.Exp(-float64(elapsed) / float64(decayTime))
		e.cost = e.cost*w + rtt*(1-w)
	}
	e.stamp = now
}

// Ejected reports whether the endpoint is ejected now.
func (e *EndpointState) Ejected() bool { return e.ejectedAt(e.reg.now()) }

func (e *EndpointState) ejectedAt(now int64) bool { return e.ejectedUntil.Load() > now }

// InFlight is the number of requests and connections in flight to the endpoint.
func (e *EndpointState) InFlight() int64 { return e.inflight.Load() }

// Cost is the endpoint's latency average now.
func (e *EndpointState) Cost() time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.decayLocked(e.reg.now())
	return time.Duration(e.cost)
}

// tryAcquire counts one more request in flight unless the endpoint has limit already.
func (e *EndpointState) tryAcquire(limit int64) bool {
	for {
		n := e.inflight.Load()
		if n >= limit {
			return false
		}
		if e.inflight.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// EndpointNames are an endpoint's addresses as text, as requests carry them.
type EndpointNames struct {
	Addr      string // Addr, host:port
	ProxyAddr string // ProxyAddr, host:port
	Port      string // Addr's port
}

// Names returns the endpoint's addresses as text, made once rather than per request.
func (e *EndpointState) Names() *EndpointNames {
	if n := e.names.Load(); n != nil {
		return n
	}
	n := &EndpointNames{Addr: e.Addr.String(), ProxyAddr: e.ProxyAddr().String(), Port: strconv.Itoa(int(e.Addr.Port()))}
	e.names.Store(n) // a racing caller stores an equal value
	return n
}

// Call is one request (or opaque connection) to an endpoint, from its pick to its end.
type Call struct {
	State   *EndpointState
	backend *Backend
	start   int64
}

// Endpoint is the endpoint the call goes to.
func (c Call) Endpoint() Endpoint { return c.State.Endpoint }

// Responded records how the endpoint answered: its latency since the pick, and whether
// it failed (a connection failure, a 5xx, a timeout). It returns true when this failure
// ejected the endpoint. Call it once, when the answer's headers arrive (or the
// connection is established), then End when the call is over.
func (c Call) Responded(failed bool) (ejected bool) {
	e, now := c.State, c.State.reg.now()
	rtt := float64(max(now-c.start, 0))
	if failed {
		rtt = max(rtt, float64(failureRTT))
	}
	od := &c.backend.outlier
	e.mu.Lock()
	e.observeLocked(now, rtt)
	if !failed {
		e.failures = 0
	} else if e.failures < math.MaxUint32 {
		e.failures++
	}
	eject := failed && od.consecutive > 0 && e.failures >= od.consecutive
	e.mu.Unlock()
	if eject {
		return c.backend.eject(e, now)
	}
	return false
}

// End ends the call: the endpoint has one request in flight less.
func (c Call) End() { c.State.inflight.Add(-1) }

// outlierConfig is a route's OutlierDetection, defaults applied.
type outlierConfig struct {
	consecutive uint32 // 0: never eject
	base        int64  // nanoseconds
	maxPercent  int
}

// maxEjectionFactor caps how many times base_ejection_time one ejection lasts.
const maxEjectionFactor = 10

// eject ejects e, unless that would eject more than the backend allows; it reports
// whether it did.
func (b *Backend) eject(e *EndpointState, now int64) bool {
	b.ejectMu.Lock()
	defer b.ejectMu.Unlock()
	if e.ejectedAt(now) {
		return false
	}
	ejected := 0
	for _, o := range b.endpoints {
		if o.ejectedAt(now) {
			ejected++
		}
	}
	if (ejected+1)*100 > len(b.endpoints)*b.outlier.maxPercent {
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	// Ejections in a row grow longer; an endpoint that stayed in for the longest
	// ejection since its last one starts again from the base.
	if now-e.lastEjectionEnd > b.outlier.base*maxEjectionFactor {
		e.ejections = 0
	}
	e.ejections++
	until := now + b.outlier.base*min(e.ejections, maxEjectionFactor)
	e.ejectedUntil.Store(until)
	e.lastEjectionEnd = until
	e.failures = 0
	return true
}

// Errors of Pick, wrapped with the backend's details.
var (
	ErrNoEndpoints = errors.New("no ready endpoints")
	ErrAllEjected  = errors.New("every endpoint is ejected after consecutive failures")
	ErrAllBusy     = errors.New("every endpoint has the most requests in flight the route allows")
)

// Pick chooses the endpoint of one request (or opaque connection) by the power of two
// choices: of two endpoints drawn at random, the one with the lower latency average
// times requests in flight. It passes over ejected endpoints, endpoints at the route's
// cap of requests in flight, and, when it has another choice, those in tried (the
// endpoints a request already failed on). The Call returned counts one request in
// flight until its End.
//
// A pick with no tried endpoints is a new request (not a retry): it counts in the
// route's retry budget.
func (b *Backend) Pick(rng *rand.Rand, tried []*EndpointState) (Call, error) {
	if len(b.endpoints) == 0 {
		return Call{}, fmt.Errorf("backend %s has %w", b.Service, ErrNoEndpoints)
	}
	now := b.endpoints[0].reg.now()
	if tried == nil && b.budget != nil {
		b.budget.deposit(now)
	}
	for range pickTries {
		e := b.choose(rng, tried, now)
		if e == nil {
			e = b.scan(rng, tried, now)
		}
		if e == nil {
			return Call{}, b.noneUsable(now)
		}
		if e.tryAcquire(b.limit) {
			return Call{State: e, backend: b, start: now}, nil
		}
	}
	return Call{}, b.noneUsable(now)
}

// choose draws two endpoints and returns the usable one of lower load, or nil when
// neither is usable.
func (b *Backend) choose(rng *rand.Rand, tried []*EndpointState, now int64) *EndpointState {
	n := len(b.endpoints)
	if n == 1 {
		if e := b.endpoints[0]; b.usable(e, tried, now) {
			return e
		}
		return nil
	}
	i := rng.IntN(n)
	j := rng.IntN(n - 1)
	if j >= i {
		j++
	}
	x, y := b.endpoints[i], b.endpoints[j]
	ux, uy := b.usable(x, tried, now), b.usable(y, tried, now)
	switch {
	case ux && uy:
		if lx, ly := x.load(now), y.load(now); ly < lx && !equivalent(lx, ly) {
			return y
		}
		return x // x is the random draw: equivalent endpoints share the load
	case ux:
		return x
	case uy:
		return y
	}
	return nil
}

func (b *Backend) usable(e *EndpointState, tried []*EndpointState, now int64) bool {
	return !e.ejectedAt(now) && e.inflight.Load() < b.limit && !containsState(tried, e)
}

func containsState(s []*EndpointState, e *EndpointState) bool {
	for _, x := range s {
		if x == e {
			return true
		}
	}
	return false
}

// scan looks for any usable endpoint, from a random one on, for when the two drawn were
// not; failing that, for one already tried that is still usable.
func (b *Backend) scan(rng *rand.Rand, tried []*EndpointState, now int64) *EndpointState {
	n := len(b.endpoints)
	off := rng.IntN(n)
	for _, avoid := range [][]*EndpointState{tried, nil} {
		for k := range n {
			if e := b.endpoints[(off+k)%n]; b.usable(e, avoid, now) {
				return e
			}
		}
		if len(tried) == 0 {
			break
		}
	}
	return nil
}

// noneUsable says why no endpoint of the backend can take a request.
func (b *Backend) noneUsable(now int64) error {
	var next int64
	for _, e := range b.endpoints {
		if u := e.ejectedUntil.Load(); u <= now {
			return fmt.Errorf("backend %s: %w (%d)", b.Service, ErrAllBusy, b.limit)
		} else if next == 0 || u < next {
			next = u
		}
	}
	return fmt.Errorf("backend %s: %w (the first returns in %s)", b.Service, ErrAllEjected,
		time.Duration(next-now).Round(time.Millisecond))
}

// Loads closer than equivalentRatio of the smaller, or than equivalentNanos, are the same
// for the balancer: measurement noise must not make one of several equal endpoints take
// every request while the others idle.
const (
	equivalentRatio = 0.25
	equivalentNanos = 250_000
)

func equivalent(a, b float64) bool {
	return math.Abs(a-b) <= max(equivalentRatio*min(a, b), equivalentNanos)
}
