package router

import (
	"sync"
	"time"
)

// The retry budget's window, in buckets of one second each.
const (
	budgetBuckets = 10
	budgetBucket  = time.Second
	// BudgetWindow is the time over which a retry budget counts requests and retries.
	BudgetWindow = budgetBuckets * budgetBucket
)

// Defaults of a route's retry policy.
const (
	DefaultRetries             = 1
	DefaultBudgetPercent       = 20
	DefaultMinRetriesPerSecond = 10
)

type budgetKey struct {
	service string
	port    uint32
	route   int
	percent uint32
	minRate uint32
}

// Budget limits retries: over the last BudgetWindow, retries may add at most a share
// of the requests, plus a reserve (a minimum per second over the window), so that a
// failing backend gets at most that much more load from retries (linkerd's retry
// budget). It is safe for concurrent use.
type Budget struct {
	reg     *Registry
	percent int64
	reserve int64 // retries allowed in any window, whatever the requests

	mu sync.Mutex
	// window is made on the first request: a large configuration has a budget for each
	// of its routes, and most of them never see one.
	window *budgetWindow
}

type budgetWindow struct {
	head     int64 // the second of the newest bucket
	requests [budgetBuckets]int64
	retries  [budgetBuckets]int64
}

// key is the budget's key as the budget of port's route number index.
func (b *Budget) key(port *Port, index int) budgetKey {
	return budgetKey{service: port.Service, port: port.Number, route: index,
		percent: uint32(b.percent), minRate: uint32(b.reserve / budgetBuckets)}
}

// advanceLocked moves the window to now, emptying the buckets it leaves behind, and
// returns it with its current bucket.
func (b *Budget) advanceLocked(now int64) (*budgetWindow, int) {
	w := b.window
	if w == nil {
		w = &budgetWindow{}
		b.window = w
	}
	sec := now / int64(budgetBucket)
	if gap := sec - w.head; gap > 0 {
		for i := range min(gap, budgetBuckets) {
			k := (w.head + 1 + i) % budgetBuckets
			w.requests[k], w.retries[k] = 0, 0
		}
		w.head = sec
	}
	return w, int(w.head % budgetBuckets)
}

// Deposit counts one request (not a retry) into the budget. Backend.Pick does it for
// the first attempt of each request.
func (b *Budget) Deposit() { b.deposit(b.reg.now()) }

func (b *Budget) deposit(now int64) {
	b.mu.Lock()
	w, cur := b.advanceLocked(now)
	w.requests[cur]++
	b.mu.Unlock()
}

// Withdraw takes one retry from the budget, or reports that it is spent.
func (b *Budget) Withdraw() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	w, cur := b.advanceLocked(b.reg.now())
	var requests, retries int64
	for i := range budgetBuckets {
		requests += w.requests[i]
		retries += w.retries[i]
	}
	if (retries+1)*100 > requests*b.percent+b.reserve*100 {
		return false
	}
	w.retries[cur]++
	return true
}
