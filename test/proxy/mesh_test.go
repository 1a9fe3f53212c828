package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/test/harness"
)

// meshPair is two braid-proxy processes, a client (shop/web) and a server (shop/reviews)
// whose inbound listener fronts the application, each with a certificate from one test CA.
type meshPair struct {
	client, server             *harness.Proxy
	clientConfig, serverConfig string // the proxies' config files
	inboundPort                int
}

// identityArgs writes a workload certificate for shop/sa and returns the proxy flags to use it.
func identityArgs(t *testing.T, ca *harness.TestCA, sa string) []string {
	t.Helper()
	args, err := ca.ProxyArgs(t.TempDir(), "shop", sa)
	if err != nil {
		t.Fatal(err)
	}
	return args
}

func freePort(t *testing.T) int {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lis.Close() }()
	return lis.Addr().(*net.TCPAddr).Port
}

// newMeshPair starts the pair; the client routes service name (port 80) to appPort on
// 127.0.0.1 through the server proxy, which admits every client (Permissive) until a
// test rewrites its config.
func newMeshPair(t *testing.T, service string, appPort int, protocol string) *meshPair {
	t.Helper()
	ca, err := harness.NewTestCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	mp := &meshPair{inboundPort: freePort(t)}
	mp.server, mp.serverConfig = standalone(t, "version: 1\ninbound: {mode: Permissive, allowAll: true}\n",
		append(identityArgs(t, ca, "reviews"), "--inbound-listen", fmt.Sprintf("127.0.0.1:%d", mp.inboundPort))...)
	client := fmt.Sprintf(`version: 1
inbound: {mode: Strict}
services:
- namespace: shop
  name: %s
  ports:
  - port: 80
    protocol: %s
    routes:
    - backends:
      - service: %s
        weight: 1
        endpoints:
        - {ip: 127.0.0.1, port: %d, identity: "spiffe://cluster.local/ns/shop/sa/reviews", proxyPort: %d}
`, service, protocol, service, appPort, mp.inboundPort)
	mp.client, mp.clientConfig = standalone(t, client, identityArgs(t, ca, "web")...)
	return mp
}

func TestProxyPairCarriesRequestsOverMTLSAndEnforcesTargets(t *testing.T) {
	ctx := t.Context()
	seen := make(chan string, 8)
	app := &http.Server{ReadHeaderTimeout: time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Get("Braid-Client-Id")
		_, _ = io.WriteString(w, "reviews "+r.URL.Path)
	})}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = app.Serve(lis) }()
	t.Cleanup(func() { _ = app.Close() })
	appPort := lis.Addr().(*net.TCPAddr).Port

	mp := newMeshPair(t, "reviews", appPort, "PROTOCOL_HTTP1")
	res, err := mp.client.Request(ctx, "reviews", "/echo", nil)
	if err != nil || res.Status != http.StatusOK || res.Body != "reviews /echo" {
		t.Fatalf("through the pair: %+v, %v; want 200 from the app", res, err)
	}
	if id := <-seen; id != "spiffe://cluster.local/ns/shop/sa/web" {
		t.Errorf("the app saw client %q, want the verified identity of the client proxy", id)
	}

	// Access control, enforced by the server proxy on the verified identity.
	writeConfig(t, mp.serverConfig, `version: 2
inbound:
  mode: Strict
  authorizations:
  - name: shop/metrics
    sources: ["spiffe://cluster.local/ns/shop/sa/web"]
    httpMatches: [{name: routes/metrics, pathRegex: /metrics, methods: [GET]}]
`)
	if _, err := mp.server.WaitForConfig(ctx, func(s *api.Snapshot) bool { return s.GetVersion() == 2 }); err != nil {
		t.Fatal(err)
	}
	if res, err := mp.client.Request(ctx, "reviews", "/metrics", nil); err != nil || res.Status != http.StatusOK {
		t.Errorf("GET /metrics with a grant: %+v, %v; want 200", res, err)
	}
	res, err = mp.client.Request(ctx, "reviews", "/echo", nil)
	if err != nil || res.Status != http.StatusForbidden || !strings.Contains(res.Body, "no TrafficTarget allows spiffe://cluster.local/ns/shop/sa/web") {
		t.Errorf("GET /echo without a grant: %+v, %v; want a 403 naming the client", res, err)
	}

	// The server proxy counts what it served by the client's verified identity.
	web, port := "spiffe://cluster.local/ns/shop/sa/web", fmt.Sprint(appPort)
	metric(ctx, t, mp.server, "braid_proxy_inbound_requests_total", map[string]string{"src_identity": web, "dst_port": port, "code_class": "2xx", "status_code": "200", "result": "success"}, 2)
	metric(ctx, t, mp.server, "braid_proxy_inbound_requests_total", map[string]string{"src_identity": web, "dst_port": port, "code_class": "4xx", "status_code": "403", "result": "denied"}, 1)
}

// gRPC streaming crosses the pair: h2c from the client application, HTTP/2 over mTLS
// between the proxies, h2c to the server application, trailers and all.
func TestProxyPairCarriesGRPCStreams(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)

	mp := newMeshPair(t, "ratings", lis.Addr().(*net.TCPAddr).Port, "PROTOCOL_HTTP2")
	conn, err := grpc.NewClient(mp.client.OutboundAddr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority("ratings"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	stream, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{Service: "ratings"})
	if err != nil {
		t.Fatal(err)
	}
	// The server streams every change of the service's status, as it happens.
	hs.SetServingStatus("ratings", healthpb.HealthCheckResponse_SERVING)
	want := []healthpb.HealthCheckResponse_ServingStatus{healthpb.HealthCheckResponse_SERVING, healthpb.HealthCheckResponse_NOT_SERVING, healthpb.HealthCheckResponse_SERVING}
	for i, w := range want {
		msg, err := stream.Recv()
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if msg.GetStatus() != w {
			// The first message may be SERVICE_UNKNOWN if it raced SetServingStatus.
			if i == 0 && msg.GetStatus() == healthpb.HealthCheckResponse_SERVICE_UNKNOWN {
				if msg, err = stream.Recv(); err != nil || msg.GetStatus() != w {
					t.Fatalf("message %d = %v, %v; want %v", i, msg, err, w)
				}
			} else {
				t.Fatalf("message %d = %v, want %v", i, msg.GetStatus(), w)
			}
		}
		if i+1 < len(want) {
			hs.SetServingStatus("ratings", want[i+1])
		}
	}
	// A unary call with its status in trailers.
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"}); err == nil || !strings.Contains(err.Error(), "NotFound") {
		t.Errorf("Check of an unknown service = %v, want the server's NotFound status carried in trailers", err)
	}
}
