// Package admin serves the proxy's admin endpoints: /ready, /live, /config, /metrics,
// /debug/pprof/ and the application probes the injector rewrites (/app-probe/, probes.go).
package admin

import (
	"net/http"
	"net/http/pprof"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/braidmesh/braid/proxy/api"
)

// SnapshotFunc returns the configuration the proxy runs now, or nil before it has one.
type SnapshotFunc func() *api.Snapshot

// Handler returns the admin HTTP handler. It serves the metrics gatherer has on /metrics,
// unless gatherer is nil, and what opts add (WithAppProbes).
func Handler(current SnapshotFunc, gatherer prometheus.Gatherer, opts ...Option) http.Handler {
	mux := http.NewServeMux()
	for _, opt := range opts {
		opt(mux)
	}
	mux.HandleFunc("GET /live", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("live\n"))
	})
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if current() == nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready: no configuration yet\n"))
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("GET /config", func(w http.ResponseWriter, _ *http.Request) {
		snap := current()
		if snap == nil {
			snap = &api.Snapshot{}
		}
		body, err := protojson.MarshalOptions{Multiline: true, EmitUnpopulated: false}.Marshal(proto.Message(snap))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	})
	if gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	}
	// The profiling handlers, on this mux rather than http.DefaultServeMux. Index also
	// serves the named profiles: /debug/pprof/heap, /debug/pprof/goroutine and the rest.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("POST /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return mux
}
