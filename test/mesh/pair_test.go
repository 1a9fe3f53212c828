// Package mesh_test runs a client proxy's outbound handler and a server proxy's inbound
// listener in-process, over real sockets and real mTLS, and checks what only the pair
// shows: identities verified both ways, authorization against the inbound policy, and the
// client identity reaching the application.
package mesh_test

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/proxy/inbound"
	"github.com/braidmesh/braid/proxy/outbound"
	"github.com/braidmesh/braid/proxy/router"
	"github.com/braidmesh/braid/proxy/tlsid"
	"github.com/braidmesh/braid/test/harness"
)

// pair is a client proxy (web) in front of a server proxy (reviews) in front of an app.
type pair struct {
	t        *testing.T
	ca       *harness.TestCA
	client   *httptest.Server // the client proxy's outbound listener
	clientID *tlsid.Store
	serverID *tlsid.Store
	policy   atomic.Pointer[inbound.Policy]
	inbound  netip.AddrPort
	app      netip.AddrPort
	seen     chan http.Header // what the app saw of each request
	echo     netip.AddrPort   // a TCP echo server beside the app
	// reserved stands for one of the server proxy's own ports (its outbound listener):
	// a TCP echo server that no client may target.
	reserved netip.AddrPort
	// upgradeApp, when set, answers the app's requests that ask for an upgrade.
	upgradeApp http.HandlerFunc
	// appHandler, when set, answers the app's other requests.
	appHandler http.HandlerFunc
}

func newPair(t *testing.T) *pair {
	t.Helper()
	ca, err := harness.NewTestCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	p := &pair{t: t, ca: ca, clientID: store(t, ca, "shop", "web"), serverID: store(t, ca, "shop", "reviews"), seen: make(chan http.Header, 16)}
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen := r.Header.Clone()
		seen.Set("X-Seen-Query", r.URL.RawQuery) // what the app saw of the URL, for the tests
		p.seen <- seen
		if p.upgradeApp != nil && r.Header.Get("Upgrade") != "" {
			p.upgradeApp(w, r)
			return
		}
		if p.appHandler != nil {
			p.appHandler(w, r)
			return
		}
		_, _ = io.WriteString(w, "app: "+r.Method+" "+r.URL.Path)
	}))
	t.Cleanup(app.Close)
	p.app = netip.MustParseAddrPort(app.Listener.Addr().String())
	p.echo = echoServer(t)
	p.reserved = echoServer(t)

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := inbound.New(lis, inbound.Config{Log: testr.New(t), IDs: p.serverID, Policy: &p.policy, ProxyPorts: []uint16{p.reserved.Port()}})
	go func() { _ = srv.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	p.inbound = netip.MustParseAddrPort(lis.Addr().String())
	p.setPolicy(&api.Inbound{Mode: "Permissive", AllowAll: true})

	var table atomic.Pointer[router.Table]
	tbl, err := router.Build(&api.Snapshot{Services: []*api.Service{
		service("reviews", p.app.Port(), ca.TrustDomain, p.inbound.Port(), "reviews"),
		service("impostor", p.app.Port(), ca.TrustDomain, p.inbound.Port(), "ratings"),
		service("sideways", p.reserved.Port(), ca.TrustDomain, p.inbound.Port(), "reviews"),
	}}, "shop", "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	table.Store(tbl)
	h := outbound.New(testr.New(t), &table, nil)
	h.UseMesh(p.clientID)
	p.client = httptest.NewServer(h)
	t.Cleanup(p.client.Close)
	return p
}

// service is a mesh Service whose one endpoint, 127.0.0.1:appPort, is served by the
// workload of ServiceAccount sa behind the proxy at proxyPort.
func service(name string, appPort uint16, td string, proxyPort uint16, sa string) *api.Service {
	return &api.Service{Namespace: "shop", Name: name, Ports: []*api.ServicePort{{Port: 80, Routes: []*api.Route{{Backends: []*api.Backend{{
		Service: name, Weight: 1,
		Endpoints: []*api.Endpoint{{Ip: "127.0.0.1", Port: uint32(appPort), Identity: "spiffe://" + td + "/ns/shop/sa/" + sa, ProxyPort: uint32(proxyPort)}},
	}}}}}}}
}

func store(t *testing.T, ca *harness.TestCA, ns, sa string) *tlsid.Store {
	t.Helper()
	w, err := ca.Issue(ns, sa, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var s tlsid.Store
	if err := s.SetCertificate(w.TLS); err != nil {
		t.Fatal(err)
	}
	if err := s.SetTrustBundle(ca.Bundle); err != nil {
		t.Fatal(err)
	}
	return &s
}

func (p *pair) setPolicy(in *api.Inbound) {
	p.t.Helper()
	pol, err := inbound.NewPolicy(in)
	if err != nil {
		p.t.Fatal(err)
	}
	p.policy.Store(pol)
}

// do sends a request through the client proxy for host and returns status and body.
func (p *pair) do(method, host, path string) (int, string, http.Header) {
	p.t.Helper()
	req, err := http.NewRequest(method, p.client.URL+path, nil)
	if err != nil {
		p.t.Fatal(err)
	}
	req.Host = host
	req.Header.Set(inbound.ClientIDHeader, "spiffe://cluster.local/ns/shop/sa/forged")
	resp, err := p.client.Client().Do(req)
	if err != nil {
		p.t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), resp.Header
}

func echoServer(t *testing.T) netip.AddrPort {
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
			go func() { _, _ = io.Copy(c, c); _ = c.Close() }()
		}
	}()
	return netip.MustParseAddrPort(lis.Addr().String())
}

func TestMeshedRequestCarriesTheVerifiedClientIdentity(t *testing.T) {
	p := newPair(t)
	code, body, _ := p.do(http.MethodGet, "reviews", "/echo")
	if code != http.StatusOK || body != "app: GET /echo" {
		t.Fatalf("GET through the pair = %d %q, want 200 from the app", code, body)
	}
	seen := <-p.seen
	if got := seen.Get(inbound.ClientIDHeader); got != "spiffe://cluster.local/ns/shop/sa/web" {
		t.Errorf("the app saw client identity %q, want the client proxy's verified one (not the forged header)", got)
	}
	if seen.Get(inbound.TargetPortHeader) != "" {
		t.Errorf("the proxy-to-proxy header leaked to the app: %v", seen)
	}
}

func TestServerWithTheWrongIdentityIsRefused(t *testing.T) {
	p := newPair(t)
	// "impostor" expects ServiceAccount ratings, but the proxy there presents reviews.
	code, body, hdr := p.do(http.MethodGet, "impostor", "/")
	if code != http.StatusBadGateway || hdr.Get("Braid-Proxy-Error") == "" || !strings.Contains(body, "sa/reviews") {
		t.Fatalf("a peer presenting the wrong identity = %d %q, want a 502 from the proxy naming the identity", code, body)
	}
	select {
	case <-p.seen:
		t.Fatal("the request reached the app through a peer with the wrong identity")
	default:
	}
}

func TestStrictPolicyDeniesWith403AndGrantsByRoute(t *testing.T) {
	p := newPair(t)
	// SMI scenario 1: nothing granted: 403 from the server proxy, nothing reaches the app.
	p.setPolicy(&api.Inbound{Mode: "Strict"})
	code, body, hdr := p.do(http.MethodGet, "reviews", "/echo")
	if code != http.StatusForbidden || hdr.Get("Braid-Proxy-Error") != "Forbidden" || !strings.Contains(body, "sa/web") {
		t.Fatalf("strict without grants = %d %q, want 403 naming the client", code, body)
	}
	// Scenarios 4 and 5: GET /metrics only.
	p.setPolicy(&api.Inbound{Mode: "Strict", Authorizations: []*api.Authorization{{
		Name: "shop/metrics", Sources: []string{"spiffe://cluster.local/ns/shop/sa/web"},
		HttpMatches: []*api.HTTPMatch{{Name: "routes/metrics", PathRegex: "/metrics", Methods: []string{"GET"}}},
	}}})
	for _, c := range []struct {
		method, path string
		want         int
	}{{"GET", "/metrics", 200}, {"GET", "/echo", 403}, {"POST", "/metrics", 403}} {
		if code, body, _ := p.do(c.method, "reviews", c.path); code != c.want {
			t.Errorf("%s %s = %d %q, want %d", c.method, c.path, code, body, c.want)
		}
	}
	// Scenario 3: a grant to another source admits nothing of web's.
	p.setPolicy(&api.Inbound{Mode: "Strict", Authorizations: []*api.Authorization{{
		Name: "shop/other", Sources: []string{"spiffe://cluster.local/ns/shop/sa/ratings"}, AnyRequest: true,
	}}})
	if code, _, _ := p.do("GET", "reviews", "/metrics"); code != http.StatusForbidden {
		t.Errorf("a grant to another source let web in: %d", code)
	}
}

// dialTCP opens an opaque connection to the echo server through the server proxy.
func (p *pair) dialTCP() (net.Conn, error) {
	d := outbound.MeshDialer{IDs: p.clientID}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return d.DialEndpoint(ctx, router.Endpoint{Addr: p.echo, Identity: "spiffe://cluster.local/ns/shop/sa/reviews", ProxyPort: p.inbound.Port()})
}

func TestOpaqueTCPNeedsAnL4Grant(t *testing.T) {
	p := newPair(t)
	web := "spiffe://cluster.local/ns/shop/sa/web"
	p.setPolicy(&api.Inbound{Mode: "Strict", Authorizations: []*api.Authorization{{Name: "shop/l4", Sources: []string{web}, AnyRequest: true, TcpPorts: []uint32{uint32(p.echo.Port())}}}})
	c, err := p.dialTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	msg := []byte("hello over mTLS")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != string(msg) {
		t.Fatalf("echo through the pair = %q, %v", got, err)
	}

	// An HTTP-only grant admits no opaque connection: the server proxy closes it.
	p.setPolicy(&api.Inbound{Mode: "Strict", Authorizations: []*api.Authorization{{Name: "shop/http", Sources: []string{web},
		HttpMatches: []*api.HTTPMatch{{PathRegex: "/"}}}}})
	c2, err := p.dialTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c2.Close() }()
	_, _ = c2.Write(msg)
	_ = c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c2.Read(got); err == nil {
		t.Fatalf("a refused connection echoed %q", got[:n])
	}
}

func TestUntrustedClientIsRefusedAtTheHandshake(t *testing.T) {
	p := newPair(t)
	other, err := harness.NewTestCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	stranger := store(t, other, "shop", "web") // same name, another CA
	if err := stranger.SetTrustBundle(append(other.Bundle, p.ca.Bundle...)); err != nil {
		t.Fatal(err)
	}
	d := outbound.MeshDialer{IDs: stranger}
	c, err := d.DialEndpoint(context.Background(), router.Endpoint{Addr: p.echo, Identity: "spiffe://cluster.local/ns/shop/sa/reviews", ProxyPort: p.inbound.Port()})
	if err == nil {
		// TLS 1.3 clients learn of a refused certificate on their first read.
		var hdr [2]byte
		binary.BigEndian.PutUint16(hdr[:], 1)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(hdr[:])
		_ = c.Close()
	}
	if err == nil {
		t.Fatal("a client certified by another CA got through")
	}
}
