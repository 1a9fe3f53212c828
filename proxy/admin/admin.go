// Package admin serves the proxy's admin endpoints: /ready, /live, /config, /metrics,
// /debug/pprof/ and the application probes the injector rewrites (/app-probe/, probes.go).
package admin

import (
	"net/http"
	"net/http/pprof"
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/braidmesh/braid/proxy/api"
)

// SnapshotFunc returns the configuration the proxy runs now, or nil before it has one.
// It may decode the configuration on each call: only /config calls it.
type SnapshotFunc func() (*api.Snapshot, error)

// Handler returns the admin HTTP handler. It serves the metrics gatherer has on /metrics,
// unless gatherer is nil, and what opts add (WithAppProbes).
//
// The admin port listens on the pod's address (the kubelet probes it there, Prometheus
// scrapes it), so the profiles, which reveal the proxy's inside and cost CPU to take,
// answer only clients on the pod's own loopback (kubectl port-forward arrives there);
// others get a 403. /config holds no secret (no key; the trust bundle is public).
// /ready answers 200 once current returns a configuration.
func Handler(current SnapshotFunc, gatherer prometheus.Gatherer, opts ...Option) http.Handler {
	configured := func() string {
		if snap, err := current(); snap == nil || err != nil {
			return NoConfiguration
		}
		return ""
	}
	return HandlerWithReadiness(current, configured, gatherer, opts...)
}

// NoConfiguration is why a proxy that has not applied a configuration yet is not ready.
const NoConfiguration = "no configuration yet"

// ReadinessFunc says why the proxy is not ready yet, or "" when it is.
type ReadinessFunc func() string

// HandlerWithReadiness is Handler with its own readiness condition: /ready answers 503
// with ready's reason until it returns "". ready must say whether there is a
// configuration: current is not asked, since it may decode one on each call.
func HandlerWithReadiness(current SnapshotFunc, ready ReadinessFunc, gatherer prometheus.Gatherer, opts ...Option) http.Handler {
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
		if why := ready(); why != "" {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready: " + why + "\n"))
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("GET /config", func(w http.ResponseWriter, _ *http.Request) {
		snap, err := current()
		if err != nil {
			http.Error(w, "reading the configuration: "+err.Error(), http.StatusInternalServerError)
			return
		}
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
	for pattern, h := range map[string]http.HandlerFunc{
		"GET /debug/pprof/": pprof.Index, "GET /debug/pprof/cmdline": pprof.Cmdline, "GET /debug/pprof/profile": pprof.Profile,
		"GET /debug/pprof/symbol": pprof.Symbol, "POST /debug/pprof/symbol": pprof.Symbol, "GET /debug/pprof/trace": pprof.Trace,
	} {
		mux.Handle(pattern, localOnly(h))
	}
	return mux
}

// localOnly answers only clients on loopback.
func localOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ap, err := netip.ParseAddrPort(r.RemoteAddr)
		if err != nil || !ap.Addr().Unmap().IsLoopback() {
			http.Error(w, "braid-proxy: this admin endpoint answers only on the pod's loopback (use kubectl port-forward)", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}
