package outbound_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/braidmesh/braid/proxy/api"
)

const deniedReason = "no TrafficTarget admits spiffe://cluster.local/ns/shop/sa/client to shop/web's workloads"

// deniedService is a Service the workload may not reach, as the control plane sends it:
// name, cluster IP, ports, the reason, and no routes.
func deniedService(name string, clusterIP netip.AddrPort, protocol api.Protocol) *api.Service {
	return &api.Service{Namespace: "shop", Name: name, Denied: deniedReason, ClusterIps: []string{clusterIP.Addr().String()},
		Ports: []*api.ServicePort{{Port: uint32(clusterIP.Port()), Protocol: protocol}}}
}

// A request for a denied Service gets the proxy's own 403 naming the workload, the
// Service and the reason, and counts as denied; once a configuration lifts the denial,
// the same request is routed.
func TestDeniedServiceAnswers403(t *testing.T) {
	web, seen := startBackend(t, "web", http.StatusOK)
	m, proxyURL, table := newMeteredProxyWithTable(t, deniedService("web", netip.MustParseAddrPort("10.96.0.10:80"), api.Protocol_PROTOCOL_HTTP1))
	code, header, body := do(t, proxyURL, http.MethodGet, "/", "web.shop", "")
	checkProxyError(t, code, header, body, http.StatusForbidden)
	if want := "braid-proxy: this workload may not reach web.shop: " + deniedReason + "\n"; body != want {
		t.Errorf("body %q, want %q", body, want)
	}
	if ct := header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type %q, want text/plain", ct)
	}
	waitCounts(t, m, map[string]float64{"shop/web 80 none none 4xx denied": 1})

	table.Store(build(t, webService(&api.Backend{Service: "web", Weight: 1, Endpoints: []*api.Endpoint{endpoint(web)}})))
	if code, _, body := do(t, proxyURL, http.MethodGet, "/", "web.shop", ""); code != http.StatusOK || body != "hello from web" {
		t.Errorf("after the denial was lifted: %d %q, want 200 from web", code, body)
	}
	if got := len(seen); got != 1 {
		t.Errorf("the backend saw %d requests, want only the one sent after the denial was lifted", got)
	}
}

// Redirected connections to a denied Service: HTTP requests get the 403 (on a port
// declared HTTP and on a detected one), opaque connections (declared or detected) are
// closed at once, and nothing is dialed: not even the original destination, where
// something listens.
func TestTransparentDeniedService(t *testing.T) {
	// Each Service has the port of a listener as its port, and an address of the
	// listener's as its cluster IP: a proxy that passed the connection through would
	// reach it.
	dst, dialed := countingListener(t)
	var services []*api.Service
	clients := map[netip.Addr]netip.AddrPort{}
	for i, protocol := range []api.Protocol{api.Protocol_PROTOCOL_HTTP1, api.Protocol_PROTOCOL_OPAQUE, api.Protocol_PROTOCOL_DETECT} {
		ip := netip.AddrFrom4([4]byte{127, 0, 1, byte(10 + i)})
		services = append(services, deniedService("web-"+protocol.String(), netip.AddrPortFrom(ip, dst.Port()), protocol))
		clients[ip] = netip.AddrPortFrom(ip, dst.Port())
	}
	tp := startTransparent(t, clients, services...)

	for _, source := range []string{"127.0.1.10", "127.0.1.12"} { // HTTP1, DETECT
		expectDenied403(t, tp.dial(t, source))
	}
	for _, source := range []string{"127.0.1.11", "127.0.1.12"} { // OPAQUE, DETECT
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", tp.addr)
		if err != nil { // the proxy's reset may come before connect returns
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("from %s: %v, want the connection accepted, then closed", source, err)
			}
			continue
		}
		_, _ = io.WriteString(c, "\x00\x01opaque bytes")
		expectClosed(t, c)
		_ = c.Close()
	}
	tp.waitCounter(t, "braid_proxy_tcp_connections_denied_total", labels("shop/web-PROTOCOL_OPAQUE", strconv.Itoa(int(dst.Port()))), 1)
	tp.waitCounter(t, "braid_proxy_tcp_connections_denied_total", labels("shop/web-PROTOCOL_DETECT", strconv.Itoa(int(dst.Port()))), 1)
	if n := dialed.Load(); n != 0 {
		t.Errorf("the original destination got %d connections, want none", n)
	}
}

// countingListener accepts connections on loopback, closes them and counts them.
func countingListener(t *testing.T) (netip.AddrPort, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	return startTCP(t, func(net.Conn) { n.Add(1) }), &n
}

// expectDenied403 sends a request on c and expects the proxy's 403 for a denied Service.
func expectDenied403(t *testing.T, c net.Conn) {
	t.Helper()
	_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: anything.example\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "may not reach web-PROTOCOL_") || !strings.Contains(string(body), deniedReason) {
		t.Errorf("from %s: HTTP %d %q, want the proxy's 403", c.LocalAddr(), resp.StatusCode, body)
	}
}

// expectClosed expects the proxy to close c without sending anything.
func expectClosed(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 16)); n != 0 || err == nil || errors.Is(err, net.ErrClosed) || isTimeout(err) {
		t.Errorf("from %s: read %d bytes, %v; want the connection closed by the proxy", c.LocalAddr(), n, err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
