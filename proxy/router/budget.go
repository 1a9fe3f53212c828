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

	mu       sync.Mutex
	head     int64 // the second of the newest bucket
	requests [budgetBuckets]int64
	retries  [budgetBuckets]int64
}

func (r *Registry) budget(key budgetKey) *Budget {
	if b, ok := r.budgets[key]; ok {
		return b
	}
	b := &Budget{reg: r, percent: int64(key.percent), reserve: int64(key.minRate) * budgetBuckets}
	r.budgets[key] = b
	return b
}

// advanceLocked moves the window to now, emptying the buckets it leaves behind, and
// returns the current bucket.
func (b *Budget) advanceLocked(now int64) int {
	sec := now / int64(budgetBucket)
	if gap := sec - b.head; gap > 0 {
		for i := range min(gap, budgetBuckets) {
			k := (b.head + 1 + i) % budgetBuckets
			b.requests[k], b.retries[k] = 0, 0
		}
		b.head = sec
	}
	return int(b.head % budgetBuckets)
}

// Deposit counts one request (not a retry) into the budget. Backend.Pick does it for
// the first attempt of each request.
func (b *Budget) Deposit() { b.deposit(b.reg.now()) }

func (b *Budget) deposit(now int64) {
	b.mu.Lock()
	b.requests[b.advanceLocked(now)]++
	b.mu.Unlock()
}

// Withdraw takes one retry from the budget, or reports that it is spent.
func (b *Budget) Withdraw() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	cur := b.advanceLocked(b.reg.now())
	var requests, retries int64
	for i := range budgetBuckets {
		requests += b.requests[i]
		retries += b.retries[i]
	}
	if (retries+1)*100 > requests*b.percent+b.reserve*100 {
		return false
	}
	b.retries[cur]++
	return true
}
