package admin_test

import (
	"encoding/json"
	"net/http"
	"net/netip"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/braidmesh/braid/proxy/admin"
	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/proxy/telemetry"
)

func TestStatsEdgesServesTheWindow(t *testing.T) {
	clk := clocktesting.NewFakePassiveClock(time.Unix(1000, 0))
	edges := telemetry.NewEdges(telemetry.EdgesOptions{Clock: clk})
	edges.Record(telemetry.EdgeInbound, netip.MustParseAddr("10.1.2.3"), "spiffe://td/ns/a/sa/web", false, time.Millisecond)
	h := admin.Handler(func() (*api.Snapshot, error) { return &api.Snapshot{}, nil }, nil, admin.WithEdges(edges))

	for _, path := range []string{"/stats/edges", "/stats/edges?window=1m"} {
		rec := get(h, path, "10.9.9.9:5000") // the operator calls from the pod network
		if rec.Code != http.StatusOK {
			t.Fatalf("%s: %d %s", path, rec.Code, rec.Body)
		}
		var snap telemetry.EdgeSnapshot
		if err := json.Unmarshal(rec.Body.Bytes(), &snap); err != nil {
			t.Fatal(err)
		}
		if len(snap.Edges) != 1 || snap.Edges[0].PeerAddr != "10.1.2.3" || snap.Edges[0].Success != 1 {
			t.Errorf("%s: edges %+v", path, snap.Edges)
		}
	}
	for _, bad := range []string{"30", "-1s", "0s", "6m"} {
		if rec := get(h, "/stats/edges?window="+bad, "10.9.9.9:5000"); rec.Code != http.StatusBadRequest {
			t.Errorf("window=%s: %d, want 400", bad, rec.Code)
		}
	}
}
