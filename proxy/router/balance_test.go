package router_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/proxy/router"
)

// fakeClock is a clock that moves only when told to.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// endpoints returns n endpoints 10.0.0.1:8080, 10.0.0.2:8080…
func endpoints(n int) []*api.Endpoint {
	out := make([]*api.Endpoint, n)
	for i := range out {
		out[i] = ep(fmt.Sprintf("10.0.0.%d", i+1), 8080)
	}
	return out
}

// webRoute is a snapshot in which shop/web port 80 has one route to backend web.
func webRoute(route *api.Route, eps ...*api.Endpoint) *api.Snapshot {
	route.Backends = []*api.Backend{backend("web", 1, eps...)}
	return &api.Snapshot{Services: []*api.Service{{Namespace: "shop", Name: "web", Ports: []*api.ServicePort{{Port: 80, Routes: []*api.Route{route}}}}}}
}

func buildWith(t *testing.T, reg *router.Registry, snap *api.Snapshot) (*router.Route, *router.Backend) {
	t.Helper()
	tbl, err := reg.Build(snap, "shop", "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	r := anyRoute(t, resolve(t, tbl, "web"))
	return r, r.Pick()
}

// With one slow endpoint (50 ms) and one fast (1 ms), nearly every request goes to the
// fast one; uniform random picks would send half to each.
func TestPickPrefersTheFastEndpoint(t *testing.T) {
	clock := newFakeClock()
	_, b := buildWith(t, router.NewRegistry(clock), webRoute(&api.Route{}, endpoints(2)...))
	latency := map[string]time.Duration{"10.0.0.1:8080": 50 * time.Millisecond, "10.0.0.2:8080": time.Millisecond}
	rng := rand.New(rand.NewPCG(5, 6))
	counts := map[string]int{}
	for range 1000 {
		c, err := b.Pick(rng, nil)
		if err != nil {
			t.Fatal(err)
		}
		addr := c.Endpoint().Addr.String()
		counts[addr]++
		clock.Advance(latency[addr])
		c.Responded(false)
		c.End()
	}
	if counts["10.0.0.2:8080"] < 950 {
		t.Errorf("1000 requests: %v, want at least 950 on the fast endpoint 10.0.0.2", counts)
	}
}

// Requests in flight count: with equal latencies, a busy endpoint gets fewer requests.
func TestPickAvoidsBusyEndpoints(t *testing.T) {
	_, b := buildWith(t, router.NewRegistry(newFakeClock()), webRoute(&api.Route{}, endpoints(2)...))
	rng := rand.New(rand.NewPCG(7, 8))
	busy, err := b.Pick(rng, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if _, err := b.Pick(rng, nil); err != nil { // held: 5 more in flight on the other
			t.Fatal(err)
		}
	}
	counts := map[*router.EndpointState]int64{}
	for _, e := range b.Endpoints() {
		counts[e] = e.InFlight()
	}
	if counts[busy.State] != 3 || len(counts) != 2 {
		t.Errorf("six requests held on two equal endpoints: %v in flight, want 3 and 3", counts)
	}
}

// A new table reuses the state of the endpoints it shares with the last: requests in
// flight on the old table count on the new one, and latencies are not forgotten.
func TestEndpointStateSurvivesRebuild(t *testing.T) {
	clock := newFakeClock()
	reg := router.NewRegistry(clock)
	eps := endpoints(3)
	_, b1 := buildWith(t, reg, webRoute(&api.Route{}, eps[0], eps[1]))
	rng := rand.New(rand.NewPCG(1, 1))
	c, err := b1.Pick(rng, nil)
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(200 * time.Millisecond)
	c.Responded(false) // a 200 ms peak
	kept := c.State

	// The endpoint stays in the next table; the other goes, a third comes.
	other := eps[0]
	if kept.Addr.String() == "10.0.0.1:8080" {
		other = eps[1]
	}
	_, b2 := buildWith(t, reg, webRoute(&api.Route{}, eps[2], ep(kept.Addr.Addr().String(), 8080)))
	var again *router.EndpointState
	for _, e := range b2.Endpoints() {
		if e.Endpoint == kept.Endpoint {
			again = e
		}
	}
	if again != kept || again.InFlight() != 1 || again.Cost() < 190*time.Millisecond {
		t.Fatalf("after a rebuild the endpoint's state is %p (in flight %d, cost %s), want the same %p with 1 in flight and its 200 ms",
			again, again.InFlight(), again.Cost(), kept)
	}
	c.End() // the request that started on the old table ends
	if again.InFlight() != 0 {
		t.Errorf("in flight after the old table's request ended = %d, want 0", again.InFlight())
	}
	// The endpoint that left is forgotten: when it comes back it starts afresh.
	_, b3 := buildWith(t, reg, webRoute(&api.Route{}, other))
	if b3.Endpoints()[0] == b1.Endpoints()[0] || b3.Endpoints()[0] == b1.Endpoints()[1] {
		t.Error("an endpoint that left the configuration and came back kept its old state")
	}
}

// fail makes n requests to e fail, and reports whether the last ejected it.
func fail(t *testing.T, b *router.Backend, e *router.EndpointState, n int) (ejected bool) {
	t.Helper()
	for range n {
		c := call(t, b, e)
		ejected = c.Responded(true)
		c.End()
	}
	return ejected
}

func TestOutlierEjection(t *testing.T) {
	clock := newFakeClock()
	_, b := buildWith(t, router.NewRegistry(clock), webRoute(&api.Route{}, endpoints(4)...))
	eps := b.Endpoints()
	if fail(t, b, eps[0], 4) || eps[0].Ejected() {
		t.Fatal("ejected after 4 failures, want 5")
	}
	c := call(t, b, eps[0])
	c.Responded(false)
	c.End()
	if fail(t, b, eps[0], 4) {
		t.Fatal("a success did not reset the count of failures")
	}
	if !fail(t, b, eps[0], 1) || !eps[0].Ejected() {
		t.Fatal("not ejected after 5 failures in a row")
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		c, err := b.Pick(rng, nil)
		if err != nil || c.State == eps[0] {
			t.Fatalf("Pick = %v, %v while endpoint 0 is ejected", c.State, err)
		}
		c.End()
	}
	clock.Advance(30*time.Second - time.Millisecond)
	if !eps[0].Ejected() {
		t.Fatal("back before the base ejection time")
	}
	clock.Advance(time.Millisecond)
	if eps[0].Ejected() {
		t.Fatal("still ejected after the base ejection time")
	}
	// Ejected again: twice as long.
	fail(t, b, eps[0], 5)
	clock.Advance(59 * time.Second)
	if !eps[0].Ejected() {
		t.Fatal("a second ejection in a row was not longer than the first")
	}
	clock.Advance(time.Second)
	if eps[0].Ejected() {
		t.Fatal("the second ejection lasted more than 60 s")
	}
}

// At most half of a backend's endpoints are ejected at once.
func TestOutlierEjectionCap(t *testing.T) {
	_, b := buildWith(t, router.NewRegistry(newFakeClock()), webRoute(&api.Route{}, endpoints(4)...))
	eps := b.Endpoints()
	if !fail(t, b, eps[0], 5) || !fail(t, b, eps[1], 5) {
		t.Fatal("want two of four endpoints ejected")
	}
	if fail(t, b, eps[2], 5) || eps[2].Ejected() {
		t.Fatal("ejected a third endpoint of four")
	}
}

// call picks until it gets e (the others are held meanwhile, then released).
func call(t *testing.T, b *router.Backend, e *router.EndpointState) router.Call {
	t.Helper()
	rng := rand.New(rand.NewPCG(3, 4))
	var others []router.Call
	defer func() {
		for _, o := range others {
			o.End()
		}
	}()
	for range 1000 {
		c, err := b.Pick(rng, nil)
		if err != nil {
			t.Fatal(err)
		}
		if c.State == e {
			return c
		}
		others = append(others, c)
	}
	t.Fatalf("never picked %v", e.Addr)
	return router.Call{}
}

func TestOutlierEjectionNeverEjectsALoneEndpoint(t *testing.T) {
	_, b := buildWith(t, router.NewRegistry(newFakeClock()), webRoute(&api.Route{}, endpoints(1)...))
	for range 50 {
		c, err := b.Pick(rand.New(rand.NewPCG(1, 1)), nil)
		if err != nil {
			t.Fatal(err)
		}
		if c.Responded(true) {
			t.Fatal("ejected the only endpoint of a backend")
		}
		c.End()
	}
}

func TestOutlierDetectionConfig(t *testing.T) {
	clock := newFakeClock()
	zero := uint32(0)
	three := uint32(3)
	hundred := uint32(100)
	_, off := buildWith(t, router.NewRegistry(clock), webRoute(&api.Route{OutlierDetection: &api.OutlierDetection{ConsecutiveFailures: &zero}}, endpoints(2)...))
	for range 20 {
		c := call(t, off, off.Endpoints()[0])
		if c.Responded(true) {
			t.Fatal("ejected with consecutive_failures 0")
		}
		c.End()
	}
	_, b := buildWith(t, router.NewRegistry(clock), webRoute(&api.Route{OutlierDetection: &api.OutlierDetection{
		ConsecutiveFailures: &three, BaseEjectionTime: durationpb.New(time.Second), MaxEjectionPercent: &hundred,
	}}, endpoints(1)...))
	var ejected bool
	for range 3 {
		c := call(t, b, b.Endpoints()[0])
		ejected = c.Responded(true)
		c.End()
	}
	if !ejected {
		t.Fatal("not ejected after 3 failures with consecutive_failures 3 and max 100%")
	}
	if _, err := b.Pick(rand.New(rand.NewPCG(1, 1)), nil); !errors.Is(err, router.ErrAllEjected) {
		t.Fatalf("Pick with every endpoint ejected: %v, want ErrAllEjected", err)
	}
	clock.Advance(time.Second)
	if _, err := b.Pick(rand.New(rand.NewPCG(1, 1)), nil); err != nil {
		t.Fatalf("Pick after the 1 s ejection: %v", err)
	}
}

func TestMaxRequestsPerEndpoint(t *testing.T) {
	_, b := buildWith(t, router.NewRegistry(newFakeClock()), webRoute(&api.Route{MaxRequestsPerEndpoint: 2}, endpoints(2)...))
	rng := rand.New(rand.NewPCG(1, 2))
	var calls []router.Call
	for range 4 {
		c, err := b.Pick(rng, nil)
		if err != nil {
			t.Fatalf("pick %d of 4 under a cap of 2 per endpoint: %v", len(calls)+1, err)
		}
		calls = append(calls, c)
	}
	if _, err := b.Pick(rng, nil); !errors.Is(err, router.ErrAllBusy) {
		t.Fatalf("fifth pick: %v, want ErrAllBusy", err)
	}
	calls[0].End()
	if c, err := b.Pick(rng, nil); err != nil || c.State != calls[0].State {
		t.Fatalf("after one ended: %v, %v; want its endpoint", c.State, err)
	}
}

// A retry goes to an endpoint the request has not failed on, when there is one.
func TestPickAvoidsTriedEndpoints(t *testing.T) {
	_, b := buildWith(t, router.NewRegistry(newFakeClock()), webRoute(&api.Route{}, endpoints(3)...))
	rng := rand.New(rand.NewPCG(9, 9))
	tried := b.Endpoints()[:2]
	for range 100 {
		c, err := b.Pick(rng, tried)
		if err != nil || c.State != b.Endpoints()[2] {
			t.Fatalf("Pick avoiding two of three = %v, %v; want the third", c.State, err)
		}
		c.End()
	}
	c, err := b.Pick(rng, b.Endpoints())
	if err != nil {
		t.Fatalf("Pick when every endpoint was tried = %v, want one of them again", err)
	}
	c.End()
}

func TestRetryBudget(t *testing.T) {
	clock := newFakeClock()
	one := uint32(1)
	r, _ := buildWith(t, router.NewRegistry(clock), webRoute(&api.Route{Retry: &api.RetryPolicy{MinRetriesPerSecond: &one}}, endpoints(1)...))
	if r.Retries != router.DefaultRetries || len(r.RetryOn) != 0 {
		t.Errorf("default policy: %d retries on %v, want %d on none", r.Retries, r.RetryOn, router.DefaultRetries)
	}
	withdraw := func() int {
		n := 0
		for r.Budget.Withdraw() {
			n++
		}
		return n
	}
	// No requests: the reserve only, 1 per second over 10 s.
	if n := withdraw(); n != 10 {
		t.Fatalf("an idle budget allowed %d retries, want the reserve of 10", n)
	}
	for range 100 {
		r.Budget.Deposit()
	}
	if n := withdraw(); n != 20 {
		t.Fatalf("after 100 requests the budget allowed %d more retries, want 20%% of 100", n)
	}
	clock.Advance(router.BudgetWindow)
	if n := withdraw(); n != 10 {
		t.Fatalf("a window later the budget allowed %d retries, want the reserve of 10", n)
	}
	for range 50 {
		r.Budget.Deposit()
	}
	clock.Advance(5 * time.Second)
	for range 50 {
		r.Budget.Deposit()
	}
	clock.Advance(5 * time.Second) // the first 50 requests and the 10 retries fall out of the window
	if n := withdraw(); n != 20 {
		t.Fatalf("with 50 requests in the window: %d retries, want 20%% of 50 plus the reserve of 10", n)
	}
}

// State that a table no longer uses is not carried further: an endpoint that leaves the
// configuration and comes back starts afresh, as does a route's budget.
func TestStateLeftOutOfATableIsForgotten(t *testing.T) {
	reg := router.NewRegistry(newFakeClock())
	eps := endpoints(2)
	r1, b1 := buildWith(t, reg, webRoute(&api.Route{}, eps[0]))
	if _, err := reg.Build(&api.Snapshot{Services: []*api.Service{{Namespace: "shop", Name: "other",
		Ports: []*api.ServicePort{port(80, backend("other", 1, eps[1]))}}}}, "shop", "cluster.local"); err != nil {
		t.Fatal(err)
	}
	r3, b3 := buildWith(t, reg, webRoute(&api.Route{}, eps[0]))
	if b3.Endpoints()[0] == b1.Endpoints()[0] || r3.Budget == r1.Budget {
		t.Error("an endpoint and a route that were out of the last table came back with their old state")
	}
}

func TestRetryBudgetSurvivesRebuild(t *testing.T) {
	reg := router.NewRegistry(newFakeClock())
	r1, _ := buildWith(t, reg, webRoute(&api.Route{}, endpoints(1)...))
	r2, _ := buildWith(t, reg, webRoute(&api.Route{}, endpoints(2)...))
	if r1.Budget != r2.Budget {
		t.Error("a new table has a new retry budget for the same route")
	}
	five := uint32(5)
	r3, _ := buildWith(t, reg, webRoute(&api.Route{Retry: &api.RetryPolicy{BudgetPercent: &five}}, endpoints(2)...))
	if r3.Budget == r2.Budget {
		t.Error("a route whose budget changed kept the old budget")
	}
}

func TestRoutePolicies(t *testing.T) {
	three := uint32(3)
	r, _ := buildWith(t, router.NewRegistry(nil), webRoute(&api.Route{
		Name: "web/rules[0]", Timeout: durationpb.New(2 * time.Second), BackendRequestTimeout: durationpb.New(500 * time.Millisecond),
		Retry: &api.RetryPolicy{Retries: &three, RetryOn: []uint32{502, 503}},
	}, endpoints(1)...))
	if r.Name != "web/rules[0]" || r.Timeout != 2*time.Second || r.BackendRequestTimeout != 500*time.Millisecond ||
		r.Retries != 3 || !r.RetriesStatus(503) || r.RetriesStatus(500) {
		t.Errorf("route = %+v", r)
	}
	r, _ = buildWith(t, router.NewRegistry(nil), webRoute(&api.Route{}, endpoints(1)...))
	if r.Name != "shop/web port 80 route 0" || r.Timeout != 0 {
		t.Errorf("unnamed route = %q with timeout %s, want a name from its port and no timeout", r.Name, r.Timeout)
	}
	eleven, hundredOne := uint32(11), uint32(101)
	for name, route := range map[string]*api.Route{
		"negative timeout":  {Timeout: durationpb.New(-time.Second)},
		"too many retries":  {Retry: &api.RetryPolicy{Retries: &eleven}},
		"status 42":         {Retry: &api.RetryPolicy{RetryOn: []uint32{42}}},
		"ejection over 100": {OutlierDetection: &api.OutlierDetection{MaxEjectionPercent: &hundredOne}},
	} {
		if _, err := router.Build(webRoute(route, endpoints(1)...), "shop", "cluster.local"); err == nil {
			t.Errorf("%s: Build accepted it", name)
		}
	}
}

// BenchmarkPick measures one endpoint choice with its end (three endpoints).
func BenchmarkPick(b *testing.B) {
	tbl, err := router.Build(webRoute(&api.Route{}, endpoints(3)...), "shop", "cluster.local")
	if err != nil {
		b.Fatal(err)
	}
	p, _ := tbl.Resolve("web")
	be := p.Route("GET", "/", nil).Pick()
	rng := rand.New(rand.NewPCG(1, 2))
	b.ReportAllocs()
	for b.Loop() {
		c, _ := be.Pick(rng, nil)
		c.Responded(false)
		c.End()
	}
}

// Endpoints whose latencies differ by noise share the load: the balancer must not pin a
// Service to one of its equal endpoints while the others idle.
func TestPickSharesBetweenEquivalentEndpoints(t *testing.T) {
	clock := newFakeClock()
	_, b := buildWith(t, router.NewRegistry(clock), webRoute(&api.Route{}, endpoints(2)...))
	latency := map[string]time.Duration{"10.0.0.1:8080": 300 * time.Microsecond, "10.0.0.2:8080": 350 * time.Microsecond}
	rng := rand.New(rand.NewPCG(7, 8))
	counts := map[string]int{}
	for range 1000 {
		c, err := b.Pick(rng, nil)
		if err != nil {
			t.Fatal(err)
		}
		addr := c.Endpoint().Addr.String()
		counts[addr]++
		clock.Advance(latency[addr])
		c.Responded(false)
		c.End()
	}
	for addr, n := range counts {
		if n < 350 {
			t.Errorf("1000 requests: %v, want each equivalent endpoint to get at least 350 (%s got %d)", counts, addr, n)
		}
	}
	if len(counts) != 2 {
		t.Errorf("1000 requests went to %v only", counts)
	}
}
