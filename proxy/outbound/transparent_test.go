package outbound_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	dto "github.com/prometheus/client_model/go"

	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/proxy/origdst"
	"github.com/braidmesh/braid/proxy/outbound"
	"github.com/braidmesh/braid/proxy/router"
	"github.com/braidmesh/braid/proxy/telemetry"
)

// transparent is an outbound listener served as the proxy serves it, whose connections'
// original destinations are made up: a client bound to a source address in clients
// (127.0.0.x) was going to the destination it maps to; any other connected explicitly.
type transparent struct {
	addr    string
	metrics *telemetry.Metrics
	table   *atomic.Pointer[router.Table]
	lis     *outbound.Listener
	clients map[netip.Addr]netip.AddrPort
}

const detectWait = 100 * time.Millisecond

func startTransparent(t *testing.T, clients map[netip.Addr]netip.AddrPort, services ...*api.Service) *transparent {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tp := &transparent{addr: raw.Addr().String(), metrics: telemetry.New(), table: &atomic.Pointer[router.Table]{}, clients: clients}
	tp.table.Store(build(t, services...))
	tp.lis = outbound.NewListener(raw, outbound.ListenerConfig{
		Log: testr.New(t), Table: tp.table, Metrics: tp.metrics, DetectTimeout: detectWait,
		OriginalDst: func(c *net.TCPConn) (netip.AddrPort, error) {
			if dst, ok := clients[netip.MustParseAddrPort(c.RemoteAddr().String()).Addr()]; ok {
				return dst, nil
			}
			return netip.AddrPort{}, origdst.ErrNotRedirected
		},
	})
	srv := &http.Server{
		Handler: outbound.New(testr.New(t), tp.table, tp.metrics), ConnContext: outbound.ConnContext,
		Protocols: outbound.ServerProtocols(), ReadHeaderTimeout: 5 * time.Second,
	}
	go func() { _ = srv.Serve(tp.lis) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		_ = tp.lis.Shutdown(ctx)
	})
	return tp
}

// dial connects to the listener from source, a loopback address.
func (tp *transparent) dial(t *testing.T, source string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", tp.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c.(*net.TCPConn)
}

// counter returns the value of a counter of the proxy's metrics with these labels.
func (tp *transparent) counter(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := tp.metrics.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if hasLabels(m, labels) {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func hasLabels(m *dto.Metric, labels map[string]string) bool {
	n := 0
	for _, lp := range m.GetLabel() {
		if v, ok := labels[lp.GetName()]; ok {
			if v != lp.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(labels)
}

// waitCounter waits until a counter reaches want.
func (tp *transparent) waitCounter(t *testing.T, name string, labels map[string]string, want float64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for got := tp.counter(t, name, labels); got != want; got = tp.counter(t, name, labels) {
		if time.Now().After(deadline) {
			t.Fatalf("%s%v = %v, want %v", name, labels, got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// startTCP serves a TCP server on 127.0.0.1: serve handles each connection.
func startTCP(t *testing.T, serve func(net.Conn)) netip.AddrPort {
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
			go func() { defer func() { _ = c.Close() }(); serve(c) }()
		}
	}()
	return netip.MustParseAddrPort(lis.Addr().String())
}

// echo answers "echo:" and everything the client sends, then closes when the client has.
func echo(c net.Conn) {
	_, _ = io.WriteString(c, "echo:")
	_, _ = io.Copy(c, c)
}

// banner speaks first, then answers one line.
func banner(c net.Conn) {
	_, _ = io.WriteString(c, "220 mail.example ESMTP\r\n")
	line, _ := bufio.NewReader(c).ReadString('\n')
	_, _ = io.WriteString(c, "250 got "+line)
}

func tcpService(name, clusterIP string, port uint32, protocol api.Protocol, ep netip.AddrPort) *api.Service {
	return &api.Service{Namespace: "shop", Name: name, ClusterIps: []string{clusterIP}, Ports: []*api.ServicePort{{
		Port: port, Protocol: protocol,
		Routes: []*api.Route{{Backends: []*api.Backend{{Service: name, Weight: 1, Endpoints: []*api.Endpoint{endpoint(ep)}}}}},
	}}}
}

func labels(service, port string) map[string]string {
	return map[string]string{"direction": "outbound", "dst_service": service, "dst_port": port}
}

// An HTTP request on a connection redirected to a Service port goes to that port, whatever
// its Host says, on ports declared HTTP and on ports whose protocol is detected.
func TestTransparentHTTPGoesToTheServicePort(t *testing.T) {
	web, seenWeb := startBackend(t, "web", http.StatusOK)
	api1 := tcpService("web", "10.96.0.10", 80, api.Protocol_PROTOCOL_HTTP1, web)
	detect := tcpService("web-detect", "10.96.0.11", 8080, api.Protocol_PROTOCOL_DETECT, web)
	tp := startTransparent(t, map[netip.Addr]netip.AddrPort{
		netip.MustParseAddr("127.0.0.2"): netip.MustParseAddrPort("10.96.0.10:80"),
		netip.MustParseAddr("127.0.0.3"): netip.MustParseAddrPort("10.96.0.11:8080"),
	}, api1, detect)

	for source, service := range map[string]string{"127.0.0.2": "shop/web", "127.0.0.3": "shop/web-detect"} {
		c := tp.dial(t, source)
		start := time.Now()
		_, _ = io.WriteString(c, "GET /hello HTTP/1.1\r\nHost: anything.example\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Backend") != "web" {
			t.Fatalf("%s: HTTP %d from %q, want 200 from web", service, resp.StatusCode, resp.Header.Get("X-Backend"))
		}
		if elapsed := time.Since(start); elapsed >= detectWait {
			t.Errorf("%s: the answer took %v: detection waited for HTTP it had", service, elapsed)
		}
		if s := <-seenWeb; s.host != "anything.example" || s.path != "/hello" {
			t.Errorf("%s: the backend saw Host %q path %q, want the client's own", service, s.host, s.path)
		}
		tp.waitCounter(t, "braid_proxy_requests_total", labels(service, map[string]string{"shop/web": "80", "shop/web-detect": "8080"}[service]), 1)
	}
}

// An h2c client (gRPC in plaintext) on a redirected connection is served too, and routed
// to the Service port.
func TestTransparentH2C(t *testing.T) {
	web, _ := startBackend(t, "web", http.StatusOK)
	tp := startTransparent(t, map[netip.Addr]netip.AddrPort{
		netip.MustParseAddr("127.0.0.4"): netip.MustParseAddrPort("10.96.0.12:9000"),
	}, tcpService("grpc", "10.96.0.12", 9000, api.Protocol_PROTOCOL_DETECT, web))
	protocols := &http.Protocols{}
	protocols.SetUnencryptedHTTP2(true)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		Protocols: protocols,
		DialContext: func(context.Context, string, string) (net.Conn, error) {
			return tp.dial(t, "127.0.0.4"), nil
		},
	}}
	resp, err := client.Get("http://grpc.example:9000/x")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 || resp.Header.Get("X-Backend") != "web" {
		t.Fatalf("HTTP/%d %d from %q, want HTTP/2 200 from web", resp.ProtoMajor, resp.StatusCode, resp.Header.Get("X-Backend"))
	}
	tp.waitCounter(t, "braid_proxy_requests_total", labels("shop/grpc", "9000"), 1)

	// net/http's HTTP/2 server takes a query with a space; the proxy refuses it, rather
	// than pass on a target that would break an HTTP/1.1 request line.
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://grpc.example:9000/x", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.URL.RawQuery = "q=a b"
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "space or a control character") {
		t.Errorf("a query with a space: %d %q, want 400 naming the cause", resp.StatusCode, body)
	}
}

// An opaque port's bytes go to its endpoint and back, half-closes included, and count.
func TestTransparentOpaque(t *testing.T) {
	server := startTCP(t, echo)
	tp := startTransparent(t, map[netip.Addr]netip.AddrPort{
		netip.MustParseAddr("127.0.0.5"): netip.MustParseAddrPort("10.96.0.13:5432"),
	}, tcpService("db", "10.96.0.13", 5432, api.Protocol_PROTOCOL_OPAQUE, server))
	c := tp.dial(t, "127.0.0.5")
	_, _ = io.WriteString(c, "GET / HTTP/1.1\r\n\r\n") // opaque: never parsed
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "echo:GET / HTTP/1.1\r\n\r\n" {
		t.Fatalf("read %q, %v; want the echo, then the end", got, err)
	}
	l := labels("shop/db", "5432")
	tp.waitCounter(t, "braid_proxy_tcp_connections_closed_total", l, 1)
	for name, want := range map[string]float64{
		"braid_proxy_tcp_connections_opened_total": 1,
		"braid_proxy_tcp_sent_bytes_total":         18,
		"braid_proxy_tcp_received_bytes_total":     23,
	} {
		tp.waitCounter(t, name, l, want)
	}
}

// A protocol whose server speaks first works on a detected port: the banner comes after
// the detection wait, not later, and the conversation goes on.
func TestTransparentServerSpeaksFirst(t *testing.T) {
	server := startTCP(t, banner)
	tp := startTransparent(t, map[netip.Addr]netip.AddrPort{
		netip.MustParseAddr("127.0.0.6"): netip.MustParseAddrPort("10.96.0.14:25"),
	}, tcpService("mail", "10.96.0.14", 25, api.Protocol_PROTOCOL_DETECT, server))
	start := time.Now() // before the dial: the proxy's wait starts when it accepts, which may be before Dial returns
	c := tp.dial(t, "127.0.0.6")
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	elapsed := time.Since(start)
	if err != nil || line != "220 mail.example ESMTP\r\n" {
		t.Fatalf("banner %q, %v", line, err)
	}
	if elapsed < detectWait || elapsed > detectWait+time.Second {
		t.Errorf("the banner came after %v, want just after the detection wait of %v", elapsed, detectWait)
	}
	_, _ = io.WriteString(c, "EHLO me\r\n")
	if line, err := r.ReadString('\n'); err != nil || line != "250 got EHLO me\r\n" {
		t.Fatalf("answer %q, %v", line, err)
	}
}

// A TLS client on a detected port is opaque: its ClientHello reaches the endpoint whole.
func TestTransparentTLSIsOpaque(t *testing.T) {
	hello := make(chan []byte, 1)
	server := startTCP(t, func(c net.Conn) {
		buf := make([]byte, 5)
		_, _ = io.ReadFull(c, buf)
		hello <- buf
	})
	tp := startTransparent(t, map[netip.Addr]netip.AddrPort{
		netip.MustParseAddr("127.0.0.7"): netip.MustParseAddrPort("10.96.0.15:443"),
	}, tcpService("tls", "10.96.0.15", 443, api.Protocol_PROTOCOL_DETECT, server))
	c := tp.dial(t, "127.0.0.7")
	go func() {
		_ = tls.Client(c, &tls.Config{ServerName: "tls.example", MinVersion: tls.VersionTLS13}).Handshake()
	}()
	select {
	case b := <-hello:
		if b[0] != 0x16 { // a TLS handshake record
			t.Errorf("the endpoint got %x, want a TLS handshake record", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the ClientHello never reached the endpoint")
	}
}

// A connection to a destination outside the mesh goes there unchanged, and counts as
// passthrough.
func TestTransparentPassthrough(t *testing.T) {
	server := startTCP(t, echo)
	tp := startTransparent(t, map[netip.Addr]netip.AddrPort{netip.MustParseAddr("127.0.0.8"): server})
	c := tp.dial(t, "127.0.0.8")
	_, _ = io.WriteString(c, "hi")
	_ = c.CloseWrite()
	if got, err := io.ReadAll(c); err != nil || string(got) != "echo:hi" {
		t.Fatalf("read %q, %v", got, err)
	}
	tp.waitCounter(t, "braid_proxy_tcp_connections_closed_total", labels("passthrough", "passthrough"), 1)
	if got := tp.counter(t, "braid_proxy_tcp_connections_opened_total", labels("passthrough", "passthrough")); got != 1 {
		t.Errorf("passthrough connections opened = %v, want 1", got)
	}
}

// A connection the proxy cannot forward is reset, as the destination would have done.
func TestTransparentRefusals(t *testing.T) {
	refused := refusingEndpoint(t)
	noEndpoints := &api.Service{Namespace: "shop", Name: "empty", ClusterIps: []string{"10.96.0.16"}, Ports: []*api.ServicePort{{
		Port: 7000, Protocol: api.Protocol_PROTOCOL_OPAQUE, Routes: []*api.Route{{Backends: []*api.Backend{{Service: "empty", Weight: 1}}}},
	}}}
	tp := startTransparent(t, map[netip.Addr]netip.AddrPort{
		netip.MustParseAddr("127.0.0.9"):  netip.MustParseAddrPort("10.96.0.16:7000"),
		netip.MustParseAddr("127.0.0.10"): refused,
	}, noEndpoints)
	for _, source := range []string{"127.0.0.9", "127.0.0.10"} {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", tp.addr) // the reset may come before connect returns
		if err == nil {
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = c.Read(make([]byte, 1))
			_ = c.Close()
		}
		if !errors.Is(err, io.EOF) && !strings.Contains(fmtErr(err), "reset") {
			t.Errorf("from %s: %v, want a reset", source, err)
		}
	}
	tp.waitCounter(t, "braid_proxy_tcp_connections_closed_total", labels("shop/empty", "7000"), 1)
	tp.waitCounter(t, "braid_proxy_tcp_connections_closed_total", labels("passthrough", "passthrough"), 1)
}

func fmtErr(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

// An explicit connection is HTTP routed by Host, as without interception.
func TestExplicitStillRoutesByHost(t *testing.T) {
	web, _ := startBackend(t, "web", http.StatusOK)
	tp := startTransparent(t, nil, webService(&api.Backend{Service: "web", Weight: 1, Endpoints: []*api.Endpoint{endpoint(web)}}))
	req, _ := http.NewRequest(http.MethodGet, "http://"+tp.addr+"/", nil)
	req.Host = "web.shop"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Backend") != "web" {
		t.Fatalf("HTTP %d from %q, want 200 from web", resp.StatusCode, resp.Header.Get("X-Backend"))
	}
}

// Shutdown waits for opaque connections, and closes those still open when it must stop.
func TestShutdownClosesOpaqueConnections(t *testing.T) {
	server := startTCP(t, echo)
	tp := startTransparent(t, map[netip.Addr]netip.AddrPort{netip.MustParseAddr("127.0.0.11"): server})
	c := tp.dial(t, "127.0.0.11")
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil { // "echo:": the connection is up
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := tp.lis.Shutdown(ctx); err == nil || !strings.Contains(err.Error(), "closed 1 TCP connections") {
		t.Errorf("Shutdown = %v, want it to say it closed 1 connection", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(buf); err == nil {
		t.Error("the connection is still open after Shutdown")
	}
}
