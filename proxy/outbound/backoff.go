package outbound

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/braidmesh/braid/proxy/router"
)

// backoff is how the proxy pauses before a retry: the route says the longest pause
// (router.Route.Backoff), jitter draws the pause, wait waits it out. Tests substitute
// their own draw and wait.
type backoff struct {
	// jitter draws a pause between 0 and limit, both included.
	jitter func(limit time.Duration) time.Duration
	// wait waits d, or until ctx ends, and then returns ctx's error.
	wait func(ctx context.Context, d time.Duration) error
}

// systemBackoff draws pauses uniformly at random and waits on the system clock.
func systemBackoff() backoff {
	return backoff{
		jitter: func(limit time.Duration) time.Duration { return time.Duration(rand.Int64N(int64(limit) + 1)) },
		wait:   waitFor,
	}
}

func waitFor(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// draw returns the pause before the n-th retry (from 1) of a request on route, or false
// when the pause would end at or after ctx's deadline (the route's timeout): the
// request then gets the answer of its last attempt at once rather than a timeout later.
func (b backoff) draw(ctx context.Context, route *router.Route, n int) (time.Duration, bool) {
	limit := route.Backoff(n)
	if limit <= 0 {
		return 0, true
	}
	d := b.jitter(limit)
	if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) <= d {
		return 0, false
	}
	return d, true
}

// pause waits d unless it is zero; it returns ctx's error when ctx ends first.
func (b backoff) pause(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	return b.wait(ctx, d)
}
