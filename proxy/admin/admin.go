// Package admin serves the proxy's admin endpoints: /ready, /live and /config.
package admin

import (
	"net/http"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/braidmesh/braid/proxy/api"
)

// SnapshotFunc returns the configuration the proxy runs now, or nil before it has one.
type SnapshotFunc func() *api.Snapshot

// Handler returns the admin HTTP handler.
func Handler(current SnapshotFunc) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /live", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("live\n"))
	})
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if current() == nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready: no configuration received from the control plane yet\n"))
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
	return mux
}
