package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/test/harness"
)

// Cluster IPs of the opaque test's Services, on the isolated network's loopback.
var (
	dbClusterIP    = harness.MeshAddr(40) // shop/db: declared opaque, two meshed endpoints and a dead one
	vaultClusterIP = harness.MeshAddr(41) // shop/vault: the client workload may not reach it
)

// greeter accepts connections and greets each with name and a newline, then holds it
// open until the client closes it.
func greeter(t *testing.T, name string) int {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer func() { _ = c.Close() }()
				_, _ = io.WriteString(c, name+"\n")
				_, _ = io.Copy(io.Discard, c)
			}()
		}
	}()
	return lis.Addr().(*net.TCPAddr).Port
}

// redirect installs nftables rules that send the connections to the cluster IPs' port
// 5432 to the client proxy's outbound listener, as braid-init does in a pod.
func redirect(t *testing.T, outboundAddr string) {
	t.Helper()
	_, port, err := net.SplitHostPort(outboundAddr)
	if err != nil {
		t.Fatal(err)
	}
	rules := fmt.Sprintf(`table ip braid_test {
	chain output {
		type nat hook output priority -100; policy accept;
		ip daddr { %s, %s } tcp dport 5432 redirect to :%s
	}
}
`, dbClusterIP, vaultClusterIP, port)
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	t.Cleanup(func() { // the next run (-count) redirects to its own proxy
		if out, err := exec.Command("nft", "delete", "table", "ip", "braid_test").CombinedOutput(); err != nil {
			t.Errorf("nft delete table: %v: %s", err, out)
		}
	})
}

// Opaque TCP through the pair: connections redirected to a Service port declared opaque
// spread over its two meshed endpoints (each through the server proxy, over mTLS), and
// none fails for its third endpoint, which refuses connections: the attempt is retried
// on another endpoint and the dead one ejected. Connections to a Service the workload
// may not reach are closed at once and counted as denied.
func TestProxyPairBalancesOpaqueConnections(t *testing.T) {
	if !isolated(t) {
		return
	}
	ctx := t.Context()
	a, b, dead := greeter(t, "a"), greeter(t, "b"), freePort(t)
	mp := newMeshPair(t, "unused", a, "PROTOCOL_HTTP1")
	meshed := func(port int) string {
		return fmt.Sprintf(`{ip: 127.0.0.1, port: %d, identity: "spiffe://cluster.local/ns/shop/sa/reviews", proxyPort: %d}`, port, mp.inboundPort)
	}
	writeConfig(t, mp.clientConfig, fmt.Sprintf(`version: 2
inbound: {mode: Strict}
services:
- namespace: shop
  name: db
  clusterIps: [%s]
  ports:
  - port: 5432
    protocol: PROTOCOL_OPAQUE
    routes:
    - outlierDetection: {consecutiveFailures: 1}
      backends:
      - service: db
        weight: 1
        endpoints: [%s, %s, {ip: 127.0.0.1, port: %d}]
- namespace: shop
  name: vault
  clusterIps: [%s]
  denied: no TrafficTarget admits spiffe://cluster.local/ns/shop/sa/web to shop/vault
  ports:
  - port: 5432
    protocol: PROTOCOL_OPAQUE
`, dbClusterIP, meshed(a), meshed(b), dead, vaultClusterIP))
	waitVersion(ctx, t, mp.client, 2)
	redirect(t, mp.client.OutboundAddr)

	// Connections held open, so that each pick sees the others in flight.
	const n = 20
	seen := map[string]int{}
	for i := range n {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(dbClusterIP, "5432"), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = c.Close() }()
		_ = c.SetReadDeadline(time.Now().Add(eventually))
		buf := make([]byte, 2)
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatalf("connection %d: %v (answers so far: %v)", i, err, seen)
		}
		seen[strings.TrimSpace(string(buf))]++
	}
	t.Logf("%d connections by endpoint: %v", n, seen)
	if seen["a"]+seen["b"] != n || seen["a"] < n/4 || seen["b"] < n/4 {
		t.Errorf("%d connections went %v, want both endpoints to get a fair share", n, seen)
	}
	dst := map[string]string{"direction": "outbound", "dst_service": "shop/db", "dst_port": "5432"}
	metric(ctx, t, mp.client, "braid_proxy_endpoint_ejections_total", dst, 1)
	metric(ctx, t, mp.client, "braid_proxy_tcp_connections_opened_total", dst, n)

	// The proxy closes a denied connection as soon as it accepts it: the client sees the
	// close either while its connect completes (a reset) or on its first read.
	if c, err := net.DialTimeout("tcp", net.JoinHostPort(vaultClusterIP, "5432"), 5*time.Second); err == nil {
		defer func() { _ = c.Close() }()
		_ = c.SetReadDeadline(time.Now().Add(eventually))
		if k, err := c.Read(make([]byte, 1)); k != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("a connection to the denied service read %d bytes, %v; want it closed", k, err)
		}
	} else if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("dialing the denied service: %v; want the connection accepted and closed", err)
	}
	metric(ctx, t, mp.client, "braid_proxy_tcp_connections_denied_total",
		map[string]string{"direction": "outbound", "dst_service": "shop/vault", "dst_port": "5432"}, 1)
}

// waitVersion waits until the proxy runs version of its config file.
func waitVersion(ctx context.Context, t *testing.T, p *harness.Proxy, version uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, eventually)
	defer cancel()
	if _, err := p.WaitForConfig(ctx, func(s *api.Snapshot) bool { return s.GetVersion() == version }); err != nil {
		t.Fatalf("the proxy never ran version %d: %v", version, err)
	}
}
