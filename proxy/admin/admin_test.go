package admin_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/braidmesh/braid/proxy/admin"
	"github.com/braidmesh/braid/proxy/api"
)

func get(h http.Handler, path, remote string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodGet, path, nil)
	req.RemoteAddr = remote
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// The admin port listens on the pod's address: the profiles answer only on loopback,
// while the kubelet's probes, Prometheus and /config answer from anywhere.
func TestInsideAnswersOnlyOnLoopback(t *testing.T) {
	snap := &api.Snapshot{Version: 7}
	h := admin.Handler(func() (*api.Snapshot, error) { return snap, nil }, nil)
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/cmdline"} {
		if rec := get(h, path, "10.1.2.3:40000"); rec.Code != http.StatusForbidden {
			t.Errorf("%s from the pod network = %d, want 403", path, rec.Code)
		}
		for _, local := range []string{"127.0.0.1:40000", "[::1]:40000"} {
			if rec := get(h, path, local); rec.Code != http.StatusOK {
				t.Errorf("%s from %s = %d, want 200", path, local, rec.Code)
			}
		}
	}
	for _, path := range []string{"/ready", "/live", "/config"} {
		if rec := get(h, path, "10.1.2.3:40000"); rec.Code != http.StatusOK {
			t.Errorf("%s from the pod network = %d, want 200 (the kubelet probes it there)", path, rec.Code)
		}
	}
}

func TestReadyWaitsForTheIdentity(t *testing.T) {
	snap := &api.Snapshot{Version: 1}
	why := "no workload certificate and trust bundle yet"
	h := admin.HandlerWithReadiness(func() (*api.Snapshot, error) { return snap, nil }, func() string { return why }, nil)
	rec := get(h, "/ready", "10.1.2.3:1")
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), why) {
		t.Fatalf("/ready without a certificate = %d %q, want 503 with the reason", rec.Code, rec.Body.String())
	}
	why = ""
	if rec := get(h, "/ready", "10.1.2.3:1"); rec.Code != http.StatusOK {
		t.Fatalf("/ready with everything = %d", rec.Code)
	}
}
