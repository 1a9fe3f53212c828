package proxy

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/braidmesh/braid/proxy/api"
)

const reviewsDenied = "no TrafficTarget admits spiffe://cluster.local/ns/shop/sa/web to shop/reviews"

// deniedReviews is the client proxy's config in which shop/reviews is a stub: the client
// workload may not reach it.
func deniedReviews(version int) string {
	return fmt.Sprintf(`version: %d
inbound: {mode: Strict}
services:
- namespace: shop
  name: reviews
  clusterIps: [10.96.0.30]
  denied: %q
  ports:
  - port: 80
    protocol: PROTOCOL_HTTP1
`, version, reviewsDenied)
}

// A Service the client workload may not reach: the client proxy answers 403 itself,
// naming its own SPIFFE ID, the Service and the reason, and counts it as denied; nothing
// reaches the server proxy or the application. A configuration that lifts the denial
// routes again.
func TestProxyPairRefusesADeniedService(t *testing.T) {
	ctx := t.Context()
	var hits atomic.Int64
	app := &http.Server{ReadHeaderTimeout: time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		_, _ = io.WriteString(w, "reviews")
	})}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = app.Serve(lis) }()
	t.Cleanup(func() { _ = app.Close() })
	mp := newMeshPair(t, "reviews", lis.Addr().(*net.TCPAddr).Port, "PROTOCOL_HTTP1")
	lifted, err := mp.client.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}

	writeConfig(t, mp.clientConfig, deniedReviews(2))
	waitVersion(ctx, t, mp.client, 2)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+mp.client.OutboundAddr+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "reviews.shop"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	want := "braid-proxy: spiffe://cluster.local/ns/shop/sa/web may not reach reviews.shop: " + reviewsDenied + "\n"
	if resp.StatusCode != http.StatusForbidden || string(body) != want || resp.Header.Get("Braid-Proxy-Error") != "Forbidden" ||
		!strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Errorf("HTTP %d %q (Braid-Proxy-Error %q, Content-Type %q), want a 403 with body %q",
			resp.StatusCode, body, resp.Header.Get("Braid-Proxy-Error"), resp.Header.Get("Content-Type"), want)
	}
	metric(ctx, t, mp.client, "braid_proxy_requests_total", map[string]string{"direction": "outbound", "dst_service": "shop/reviews", "dst_port": "80",
		"route": "none", "dst_identity": "none", "code_class": "4xx", "status_code": "403", "result": "denied"}, 1)
	if n := hits.Load(); n != 0 {
		t.Errorf("the application got %d requests while the service was denied, want none", n)
	}

	// The denial lifted (the first config again, as a new version): routed.
	lifted.Version = 3
	writeConfig(t, mp.clientConfig, snapshotYAML(t, lifted))
	waitVersion(ctx, t, mp.client, 3)
	if res := get(ctx, t, mp.client, "reviews.shop"); res.Status != http.StatusOK || res.Body != "reviews" || hits.Load() != 1 {
		t.Errorf("after the denial was lifted: %+v, %d requests at the app; want 200 from it", res, hits.Load())
	}
}

// snapshotYAML renders a snapshot as a config file (protojson: JSON is YAML).
func snapshotYAML(t *testing.T, s *api.Snapshot) string {
	t.Helper()
	b, err := protojson.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
