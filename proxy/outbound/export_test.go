package outbound

import (
	"context"
	"net"
	"net/http"
	"time"
)

// SetTransport replaces the transport a Handler forwards with, so that benchmarks can
// measure the handler alone.
func SetTransport(h *Handler, rt http.RoundTripper) { h.upstream = rt }

// SetBackoff replaces how a Handler draws (jitter: a pause in [0, limit]) and waits
// (wait) the pauses before retries.
func SetBackoff(h *Handler, jitter func(limit time.Duration) time.Duration, wait func(ctx context.Context, d time.Duration) error) {
	h.backoff = backoff{jitter: jitter, wait: wait}
}

// NewListenerWithBackoff is NewListener, with SetBackoff's jitter and wait for the
// connection attempts of opaque connections.
func NewListenerWithBackoff(lis net.Listener, cfg ListenerConfig, jitter func(limit time.Duration) time.Duration, wait func(ctx context.Context, d time.Duration) error) *Listener {
	return newListener(lis, cfg, backoff{jitter: jitter, wait: wait})
}

// Wait is the wait the proxy uses on the system clock.
var Wait = waitFor
