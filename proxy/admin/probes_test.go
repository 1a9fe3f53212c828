package admin

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/braidmesh/braid/proxy/api"
)

func noSnapshot() (*api.Snapshot, error) { return nil, nil }

// listenLoopback listens on a free port of 127.0.0.1, where the prober sends probes.
func listenLoopback(t *testing.T) (net.Listener, int32) {
	t.Helper()
	lis, err := net.Listen("tcp", defaultAppHost+":0")
	if err != nil {
		t.Fatal(err)
	}
	return lis, int32(lis.Addr().(*net.TCPAddr).Port)
}

// closedPort returns a loopback port nothing listens on any more.
func closedPort(t *testing.T) int32 {
	t.Helper()
	lis, port := listenLoopback(t)
	_ = lis.Close()
	return port
}

// appHTTP serves /healthz (200 when the Host and X-Probe headers arrived as the probe
// sets them), /sick (500), /moved (302 elsewhere) and /slow (never answers in time).
func appHTTP(t *testing.T) int32 {
	t.Helper()
	lis, port := listenLoopback(t)
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if r.Host != "app.example" || r.Header.Get("X-Probe") != "yes" || !strings.HasPrefix(r.UserAgent(), "kube-probe/") {
			http.Error(w, "unexpected headers", http.StatusBadRequest)
			return
		}
		_, _ = io.WriteString(w, "ok")
	})
	mux.HandleFunc("/sick", func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "sick", http.StatusInternalServerError) })
	mux.HandleFunc("/moved", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://192.0.2.1/", http.StatusFound)
	})
	mux.HandleFunc("/slow", func(_ http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { _ = srv.Close() })
	return port
}

// appGRPC serves the gRPC health service: "" and "web" SERVING, "db" NOT_SERVING.
func appGRPC(t *testing.T) int32 {
	t.Helper()
	lis, port := listenLoopback(t)
	hs := health.NewServer()
	hs.SetServingStatus("web", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus("db", healthpb.HealthCheckResponse_NOT_SERVING)
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return port
}

// appTCP accepts connections and closes them.
func appTCP(t *testing.T) int32 {
	t.Helper()
	return appTCPOn(t, defaultAppHost)
}

// appTCPOn accepts and closes connections on a free port of host.
func appTCPOn(t *testing.T, host string) int32 {
	t.Helper()
	lis, err := net.Listen("tcp", host+":0")
	if err != nil {
		t.Fatal(err)
	}
	port := int32(lis.Addr().(*net.TCPAddr).Port)
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	t.Cleanup(func() { _ = lis.Close() })
	return port
}

// TestAppProbes runs each kind of probe through the admin handler against real servers
// on loopback, as the kubelet's rewritten probe reaches it.
func TestAppProbes(t *testing.T) {
	httpPort, grpcPort, tcpPort, closed := appHTTP(t), appGRPC(t), appTCP(t), closedPort(t)
	headers := []HTTPHeader{{Name: "Host", Value: "app.example"}, {Name: "X-Probe", Value: "yes"}}
	probes := AppProbes{
		"web": {
			ProbeReadiness: {HTTPGet: &HTTPGetProbe{Path: "/healthz", Port: httpPort, HTTPHeaders: headers}},
			ProbeLiveness:  {HTTPGet: &HTTPGetProbe{Path: "/sick", Port: httpPort}},
			ProbeStartup:   {HTTPGet: &HTTPGetProbe{Path: "/moved", Port: httpPort}},
		},
		"slow":   {ProbeReadiness: {HTTPGet: &HTTPGetProbe{Path: "/slow", Port: httpPort}, TimeoutSeconds: 1}},
		"nohttp": {ProbeReadiness: {HTTPGet: &HTTPGetProbe{Path: "/healthz", Port: closed}}},
		"api": {
			ProbeReadiness: {GRPC: &GRPCProbe{Port: grpcPort, Service: "web"}},
			ProbeLiveness:  {GRPC: &GRPCProbe{Port: grpcPort}},
			ProbeStartup:   {GRPC: &GRPCProbe{Port: grpcPort, Service: "db"}},
		},
		"nogrpc": {ProbeLiveness: {GRPC: &GRPCProbe{Port: closed}}},
		"db": {
			ProbeReadiness: {TCPSocket: &TCPSocketProbe{Port: tcpPort}},
			ProbeLiveness:  {TCPSocket: &TCPSocketProbe{Port: closed}},
		},
		"empty": {ProbeReadiness: {}},
	}
	raw, err := json.Marshal(probes)
	if err != nil {
		t.Fatal(err)
	}
	admin := httptest.NewServer(Handler(noSnapshot, nil, WithAppProbes(string(raw), "")))
	defer admin.Close()

	cases := []struct {
		path     string
		want     int
		bodyHave string
	}{
		{"/app-probe/web/readiness", http.StatusOK, "succeeded"},
		{"/app-probe/web/liveness", http.StatusServiceUnavailable, "500 Internal Server Error"},
		{"/app-probe/web/startup", http.StatusOK, "succeeded"}, // 3xx succeeds, as for the kubelet
		{"/app-probe/slow/readiness", http.StatusServiceUnavailable, "deadline exceeded"},
		{"/app-probe/nohttp/readiness", http.StatusServiceUnavailable, "connection refused"},
		{"/app-probe/api/readiness", http.StatusOK, "succeeded"},
		{"/app-probe/api/liveness", http.StatusOK, "succeeded"},
		{"/app-probe/api/startup", http.StatusServiceUnavailable, "NOT_SERVING"},
		{"/app-probe/nogrpc/liveness", http.StatusServiceUnavailable, "gRPC health check"},
		{"/app-probe/db/readiness", http.StatusOK, "succeeded"},
		{"/app-probe/db/liveness", http.StatusServiceUnavailable, "connection refused"},
		{"/app-probe/empty/readiness", http.StatusServiceUnavailable, "no httpGet, grpc or tcpSocket"},
		{"/app-probe/web/unknown", http.StatusNotFound, "no unknown probe"},
		{"/app-probe/nobody/readiness", http.StatusNotFound, `container "nobody"`},
	}
	for _, tc := range cases {
		t.Run(tc.path, func(t *testing.T) {
			code, body := get(t, admin.URL+tc.path)
			if code != tc.want || !strings.Contains(body, tc.bodyHave) {
				t.Errorf("GET %s = %d %q, want %d with %q", tc.path, code, body, tc.want, tc.bodyHave)
			}
		})
	}
}

func TestAppProbesInvalidJSON(t *testing.T) {
	admin := httptest.NewServer(Handler(noSnapshot, nil, WithAppProbes("{not json", "")))
	defer admin.Close()
	if code, body := get(t, admin.URL+"/app-probe/web/readiness"); code != http.StatusServiceUnavailable || !strings.Contains(body, "BRAID_APP_PROBES") {
		t.Errorf("GET with invalid probes = %d %q, want 503 naming BRAID_APP_PROBES", code, body)
	}
}

func TestNoAppProbes(t *testing.T) {
	admin := httptest.NewServer(Handler(noSnapshot, nil, WithAppProbes("", "")))
	defer admin.Close()
	if code, _ := get(t, admin.URL+"/app-probe/web/readiness"); code != http.StatusNotFound {
		t.Errorf("GET without probes = %d, want 404", code)
	}
	if code, _ := get(t, admin.URL+"/live"); code != http.StatusOK {
		t.Errorf("GET /live = %d, want 200", code)
	}
}

// get sends a request as the kubelet does (its User-Agent included).
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, http.NoBody)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("User-Agent", "kube-probe/1.36")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// Probes run where the proxy forwards the application's traffic (--app-host): an
// application listening on another address than 127.0.0.1 is probed there.
func TestAppProbesUseTheAppHost(t *testing.T) {
	port := appTCPOn(t, "127.0.0.3")
	raw, err := json.Marshal(AppProbes{"db": {ProbeReadiness: {TCPSocket: &TCPSocketProbe{Port: port}}}})
	if err != nil {
		t.Fatal(err)
	}
	for host, want := range map[string]int{"127.0.0.3": http.StatusOK, "": http.StatusServiceUnavailable} {
		admin := httptest.NewServer(Handler(noSnapshot, nil, WithAppProbes(string(raw), host)))
		if code, body := get(t, admin.URL+"/app-probe/db/readiness"); code != want {
			t.Errorf("app host %q: %d %q, want %d", host, code, body, want)
		}
		admin.Close()
	}
}
