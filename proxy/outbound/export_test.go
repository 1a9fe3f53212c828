package outbound

import "net/http"

// SetTransport replaces the transport a Handler forwards with, so that benchmarks can
// measure the handler alone.
func SetTransport(h *Handler, rt http.RoundTripper) { h.upstream = rt }
