package admin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/braidmesh/braid/proxy/telemetry"
)

// DefaultEdgeWindow is the window of GET /stats/edges without ?window=, the SMI default.
const DefaultEdgeWindow = 30 * time.Second

// WithEdges serves GET /stats/edges?window=<duration>: the requests between the workload
// and each peer in the window (telemetry.EdgeSnapshot, JSON), which the operator's SMI
// TrafficMetrics API aggregates. The window is a Go duration from 1 ns up to the
// recorder's MaxWindow (5m by default); 30s when absent. Edges nil serves nothing.
func WithEdges(edges *telemetry.Edges) Option {
	return func(mux *http.ServeMux) {
		if edges == nil {
			return
		}
		mux.HandleFunc("GET /stats/edges", func(w http.ResponseWriter, r *http.Request) {
			window, err := edgeWindow(r.URL.Query().Get("window"), edges.MaxWindow())
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			body, err := json.Marshal(edges.Snapshot(window))
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(body)
		})
	}
}

func edgeWindow(raw string, maxWindow time.Duration) (time.Duration, error) {
	if raw == "" {
		return min(DefaultEdgeWindow, maxWindow), nil
	}
	d, err := time.ParseDuration(raw)
	switch {
	case err != nil:
		return 0, fmt.Errorf("window %q is not a duration (e.g. 30s, 1m): %w", raw, err)
	case d <= 0 || d > maxWindow:
		return 0, fmt.Errorf("window %s is out of range: from above 0 up to %s", d, maxWindow)
	}
	return d, nil
}
