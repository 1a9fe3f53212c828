// Package netns tests transparent interception for real, in Linux network namespaces: a
// "pod" namespace whose TCP braid-init redirects to a braid-proxy running there as
// its own user, and a "peer" namespace across a veth pair that holds the servers. The
// tests need root and ip netns, and skip without them.
package netns

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/braidmesh/braid/test/harness"
)

const (
	podIP       = "198.19.1.1"
	peerIP      = "198.19.1.2"
	proxyUID    = 2102
	detectWait  = 200 * time.Millisecond // the proxy's default
	webCluster  = "198.18.200.10:80"     // shop/web: HTTP, detected
	mailCluster = "198.18.200.11:587"    // shop/mail: SMTP-like, its server speaks first
	dbCluster   = "198.18.200.12:5432"   // shop/db: declared opaque
)

// config is the proxy's configuration: three Services whose cluster IPs exist nowhere,
// with their endpoints in the peer namespace.
const config = `
version: 1
inbound: {mode: Permissive, allowAll: true}
services:
- namespace: shop
  name: web
  clusterIps: [198.18.200.10]
  ports:
  - port: 80
    routes:
    - backends:
      - service: web
        weight: 1
        endpoints: [{ip: 198.19.1.2, port: 8080}]
- namespace: shop
  name: mail
  clusterIps: [198.18.200.11]
  ports:
  - port: 587
    routes:
    - backends:
      - service: mail
        weight: 1
        endpoints: [{ip: 198.19.1.2, port: 2525}]
- namespace: shop
  name: db
  clusterIps: [198.18.200.12]
  ports:
  - port: 5432
    protocol: PROTOCOL_OPAQUE
    routes:
    - backends:
      - service: db
        weight: 1
        endpoints: [{ip: 198.19.1.2, port: 7000}]
`

// pod is the pod namespace with interception and its proxy, seen by the test.
type pod struct {
	ns, peer namespace
	proxy    *process
	logs     *harness.LogBuffer
	admin    *http.Client
}

// servers are the servers in the peer namespace, and what they saw.
type servers struct {
	// webSeen has the client address of each request the web server (shop/web) got.
	webSeen <-chan netip.AddrPort
	// passthroughSeen and excludedSeen have the address each connection reached.
	passthroughSeen, excludedSeen <-chan netip.AddrPort
}

func startServers(t *testing.T, peer namespace) *servers {
	t.Helper()
	s := &servers{
		webSeen:         serveHTTP(peer.listen(t, peerIP+":8080")),
		passthroughSeen: serveTCP(peer.listen(t, peerIP+":9090"), echo),
		excludedSeen:    serveTCP(peer.listen(t, peerIP+":3306"), echo),
	}
	serveTCP(peer.listen(t, peerIP+":2525"), banner) // shop/mail
	serveTCP(peer.listen(t, peerIP+":7000"), echo)   // shop/db
	return s
}

// The steps run in order, on one pod: the metrics they check add up.
func TestInterception(t *testing.T) {
	requireNetns(t)
	p := setUp(t)
	s := startServers(t, p.peer)
	for _, step := range []struct {
		name string
		run  func(*testing.T, *pod, *servers)
	}{
		{"service cluster IP goes through the proxy", testServiceClusterIP},
		{"other destinations pass through the proxy unchanged", testPassthrough},
		{"the proxy's own connections are not redirected back to it", testNoLoop},
		{"excluded ports bypass the proxy", testExcludedPort},
		{"the application reaches itself by its pod IP directly", testSelf},
		{"inbound connections reach the application through the inbound listener", testInbound},
		{"plaintext HTTP inbound cannot forge the client identity header", testInboundHTTP},
		{"a server that speaks first is not stalled beyond the detection wait", testServerSpeaksFirst},
		{"an opaque service carries bytes and half-closes", testOpaque},
	} {
		t.Run(step.name, func(t *testing.T) { step.run(t, p, s) })
	}
}

func testServiceClusterIP(t *testing.T, p *pod, s *servers) {
	res := p.appGet(t, "http://"+webCluster+"/hello")
	if res != "web saw GET /hello for host "+webCluster { // the application's own Host
		t.Fatalf("answer %q, want the web server's", res)
	}
	if seen := <-s.webSeen; seen.Addr() != netip.MustParseAddr(podIP) {
		t.Errorf("the web server saw the request from %s, want the pod's address %s", seen, podIP)
	}
	p.waitMetric(t, "braid_proxy_requests_total", map[string]string{"direction": "outbound", "dst_service": "shop/web",
		"dst_port": "80", "route": "0", "dst_identity": "unmeshed", "code_class": "2xx", "status_code": "200", "result": "success"}, 1)
}

func testPassthrough(t *testing.T, p *pod, s *servers) {
	if got := p.appEcho(t, peerIP+":9090", "hello"); got != "echo:hello" {
		t.Fatalf("read %q, want the echo", got)
	}
	if local := <-s.passthroughSeen; local != netip.MustParseAddrPort(peerIP+":9090") {
		t.Errorf("the server was reached at %s, want the original destination %s:9090", local, peerIP)
	}
	p.waitMetric(t, "braid_proxy_tcp_connections_closed_total", passthroughLabels, 1)
	p.waitMetric(t, "braid_proxy_tcp_sent_bytes_total", passthroughLabels, 5)
}

func testNoLoop(t *testing.T, p *pod, _ *servers) {
	// Had the proxy's upstream connections of the steps above come back to it, each
	// would have been passed through once more, or refused.
	p.waitMetric(t, "braid_proxy_tcp_connections_opened_total", passthroughLabels, 1)
	if strings.Contains(p.logs.String(), "Refused a connection from the proxy to itself") {
		t.Error("the proxy saw its own connections come back")
	}
}

func testExcludedPort(t *testing.T, p *pod, s *servers) {
	if got := p.appEcho(t, peerIP+":3306", "select 1"); got != "echo:select 1" {
		t.Fatalf("read %q, want the echo", got)
	}
	<-s.excludedSeen
	p.waitMetric(t, "braid_proxy_tcp_connections_opened_total", passthroughLabels, 1) // still 1
}

func testSelf(t *testing.T, p *pod, _ *servers) {
	serveTCP(p.ns.listen(t, podIP+":8081"), echo)
	if got := p.appEcho(t, podIP+":8081", "me"); got != "echo:me" {
		t.Fatalf("read %q, want the echo", got)
	}
	p.waitMetric(t, "braid_proxy_tcp_connections_opened_total", passthroughLabels, 1) // still 1
	if n, ok := p.metric(t, "braid_proxy_inbound_tcp_connections_total", inboundLabels("8081")); ok {
		t.Errorf("the inbound listener got %v connections for port 8081: the pod's call to itself was redirected", n)
	}
}

func inboundLabels(port string) map[string]string {
	return map[string]string{"src_identity": "plaintext", "dst_port": port, "result": "success"}
}

// testInbound: a client outside the pod calls the application's port; the redirection
// hands the connection to the proxy's inbound listener (plaintext: the client has no
// proxy; the policy admits everyone), which carries it to the application on loopback.
func testInbound(t *testing.T, p *pod, _ *servers) {
	seen := serveTCP(p.ns.listen(t, "127.0.0.1:8080"), echo)
	c, err := p.peer.dial(t.Context(), podIP+":8080")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "hi"); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len("echo:hi"))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "echo:hi" {
		t.Fatalf("through the inbound listener: %q, %v", got, err)
	}
	// The application listens on loopback only: nothing but the proxy can reach it.
	select {
	case <-seen:
	case <-time.After(5 * time.Second):
		t.Fatal("the application never got the connection")
	}
	p.waitMetric(t, "braid_proxy_inbound_tcp_connections_total", inboundLabels("8080"), 1)
	// The admin port is not redirected: probes and scrapes reach the proxy itself.
	peerAdmin := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: dialer(p.peer)}}
	resp, err := peerAdmin.Get("http://" + podIP + ":15000/live")
	if err != nil {
		t.Fatalf("the admin port from the peer: %v", err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("the admin port from the peer: HTTP %d", resp.StatusCode)
	}
}

func testServerSpeaksFirst(t *testing.T, p *pod, _ *servers) {
	c := p.appDial(t, mailCluster)
	start := time.Now()
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	elapsed := time.Since(start)
	if err != nil || line != "220 mail.example ESMTP\r\n" {
		t.Fatalf("banner %q, %v", line, err)
	}
	if elapsed > detectWait+time.Second {
		t.Errorf("the banner took %v, want about the detection wait of %v", elapsed, detectWait)
	}
	_, _ = io.WriteString(c, "EHLO app\r\n")
	if line, err := r.ReadString('\n'); err != nil || line != "250 got EHLO app\r\n" {
		t.Fatalf("answer %q, %v", line, err)
	}
	t.Logf("banner after %v (detection wait %v)", elapsed.Round(time.Millisecond), detectWait)
	p.waitMetric(t, "braid_proxy_tcp_connections_opened_total", serviceLabels("shop/mail", "587"), 1)
}

func testOpaque(t *testing.T, p *pod, _ *servers) {
	const ssl = "\x00\x00\x00\x08\x04\xd2\x16\x2f" // a Postgres SSLRequest
	if got := p.appEcho(t, dbCluster, ssl); got != "echo:"+ssl {
		t.Fatalf("read %q, want the echo", got)
	}
	p.waitMetric(t, "braid_proxy_tcp_connections_closed_total", serviceLabels("shop/db", "5432"), 1)
	p.waitMetric(t, "braid_proxy_tcp_received_bytes_total", serviceLabels("shop/db", "5432"), 13)
}

var passthroughLabels = serviceLabels("passthrough", "passthrough")

func serviceLabels(service, port string) map[string]string {
	return map[string]string{"direction": "outbound", "dst_service": service, "dst_port": port}
}

// setUp creates the namespaces, intercepts the pod's traffic and starts its proxy.
func setUp(t *testing.T) *pod {
	t.Helper()
	suffix := fmt.Sprint(os.Getpid())
	p := &pod{ns: newNamespace(t, "braid-pod-"+suffix), peer: newNamespace(t, "braid-peer-"+suffix)}
	p.ns.ip(t, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", p.peer.name)
	p.ns.ip(t, "addr", "add", podIP+"/24", "dev", "eth0")
	p.ns.ip(t, "link", "set", "eth0", "up")
	p.ns.ip(t, "route", "add", "default", "via", peerIP) // cluster IPs route somewhere, as in a cluster
	p.peer.ip(t, "addr", "add", peerIP+"/24", "dev", "eth0")
	p.peer.ip(t, "link", "set", "eth0", "up")

	// The binary and its config must be readable by the proxy's user.
	dir, err := os.MkdirTemp("", "braid-netns-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin, err := harness.BuildProxy(t.Context(), dir)
	if err != nil {
		t.Fatal(err)
	}
	initBin, err := harness.BuildInit(t.Context(), dir)
	if err != nil {
		t.Fatal(err)
	}
	configFile := filepath.Join(dir, "braid.yaml")
	if err := os.WriteFile(configFile, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}

	out, err := p.ns.run(exec.Command(initBin, "--proxy-uid", fmt.Sprint(proxyUID), "--inbound-port", "15006",
		"--outbound-port", "15001", "--skip-inbound-ports", "15000,15006", "--skip-outbound-ports", "25,3306",
		"--skip-outbound-cidrs", "10.0.0.0/8,fd00::/8"))
	if err != nil {
		t.Fatalf("braid-init: %v\n%s", err, out)
	}
	t.Log(strings.TrimSpace(out))

	p.startProxy(t, bin, configFile)
	return p
}

func (p *pod) startProxy(t *testing.T, bin, configFile string) {
	t.Helper()
	p.logs = &harness.LogBuffer{}
	cmd := exec.Command(bin, "run", "--config", configFile, "--config-poll", "50ms", "--namespace", "shop",
		"--outbound-listen", "127.0.0.1:15001", "--inbound-listen", "0.0.0.0:15006", "--admin-listen", "0.0.0.0:15000", "--drain-timeout", "2s", "-v", "1")
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: proxyUID, Gid: proxyUID}}
	proc, err := p.ns.start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	p.proxy = proc
	t.Cleanup(func() {
		proc.stop()
		if t.Failed() {
			t.Logf("braid-proxy logs:\n%s", p.logs.String())
		}
	})
	p.admin = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: dialer(p.ns)}}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := p.admin.Get("http://127.0.0.1:15000/live")
		if err == nil {
			_ = resp.Body.Close()
			return
		}
		select {
		case <-proc.exited:
			t.Fatalf("braid-proxy exited at start: %v\n%s", proc.cmd.ProcessState, p.logs.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("braid-proxy's admin port never answered: %v\n%s", err, p.logs.String())
		}
	}
}

func dialer(ns namespace) func(ctx context.Context, _, addr string) (net.Conn, error) {
	return func(ctx context.Context, _, addr string) (net.Conn, error) { return ns.dial(ctx, addr) }
}

// appDial connects from the application in the pod.
func (p *pod) appDial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := p.ns.dial(t.Context(), addr)
	if err != nil {
		t.Fatalf("the application dialing %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// appEcho sends msg from the application to an echo server at addr, half-closes, and
// returns everything it answered.
func (p *pod) appEcho(t *testing.T, addr, msg string) string {
	t.Helper()
	c := p.appDial(t, addr)
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading from %s: %v", addr, err)
	}
	return string(got)
}

// appGet sends GET url from the application and returns the body of a 200.
func (p *pod) appGet(t *testing.T, url string) string {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: dialer(p.ns)}}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: HTTP %d %s", url, resp.StatusCode, body)
	}
	return strings.TrimSpace(string(body))
}

// waitMetric waits until the proxy's metric with exactly these labels is want.
func (p *pod) waitMetric(t *testing.T, name string, labels map[string]string, want float64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, ok := p.metric(t, name, labels)
		if ok && got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s%v = %v (present: %v), want %v", name, labels, got, ok, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (p *pod) metric(t *testing.T, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	resp, err := p.admin.Get("http://127.0.0.1:15000/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	text, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	samples, err := harness.ParseMetrics(string(text))
	if err != nil {
		t.Fatal(err)
	}
	return samples.Value(name, labels)
}

// serveHTTP answers every request with what it saw, and reports the client's address.
func serveHTTP(lis net.Listener) <-chan netip.AddrPort {
	seen := make(chan netip.AddrPort, 16)
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- netip.MustParseAddrPort(r.RemoteAddr)
		_, _ = fmt.Fprintf(w, "web saw %s %s for host %s\n", r.Method, r.URL.Path, r.Host)
	})}
	go func() { _ = srv.Serve(lis) }()
	return seen
}

// serveTCP serves each connection with handle, and reports the address it was reached at.
func serveTCP(lis net.Listener, handle func(net.Conn)) <-chan netip.AddrPort {
	seen := make(chan netip.AddrPort, 16)
	var once sync.Once
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				once.Do(func() { close(seen) })
				return
			}
			select {
			case seen <- netip.MustParseAddrPort(c.LocalAddr().String()):
			default:
			}
			go func() { defer func() { _ = c.Close() }(); handle(c) }()
		}
	}()
	return seen
}

// echo answers "echo:" and everything the client sends, then closes when the client has.
func echo(c net.Conn) {
	_, _ = io.WriteString(c, "echo:")
	_, _ = io.Copy(c, c)
}

// banner speaks first, as SMTP does, then answers one line.
func banner(c net.Conn) {
	_, _ = io.WriteString(c, "220 mail.example ESMTP\r\n")
	line, _ := bufio.NewReader(c).ReadString('\n')
	_, _ = io.WriteString(c, "250 got "+line)
}

// testInboundHTTP: a plaintext HTTP client (no proxy) calls the application; the inbound
// listener serves it as HTTP, so the client cannot hand the application a client identity
// of its own making.
func testInboundHTTP(t *testing.T, p *pod, _ *servers) {
	lis := p.ns.listen(t, "127.0.0.1:8082")
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "client-id="+r.Header.Get("Braid-Client-Id"))
	})}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { _ = srv.Close() })
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: dialer(p.peer)}}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+podIP+":8082/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Braid-Client-Id", "spiffe://cluster.local/ns/shop/sa/admin")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || string(body) != "client-id=" {
		t.Fatalf("the application answered %d %q: want 200 and no client identity", resp.StatusCode, body)
	}
	p.waitMetric(t, "braid_proxy_inbound_requests_total",
		map[string]string{"src_identity": "plaintext", "dst_port": "8082", "code_class": "2xx", "status_code": "200", "result": "success"}, 1)
}
