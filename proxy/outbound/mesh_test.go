package outbound_test

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/braidmesh/braid/internal/identity"
	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/proxy/inbound"
	"github.com/braidmesh/braid/proxy/outbound"
	"github.com/braidmesh/braid/proxy/router"
	"github.com/braidmesh/braid/proxy/telemetry"
	"github.com/braidmesh/braid/proxy/tlsid"
)

// meshPair is a client proxy (this package's handler, over mTLS) and a server proxy
// (proxy/inbound) in one process, on loopback, in front of an application that speaks
// HTTP/1.1 and h2c. Clients send their requests for web.shop to front.
type meshPair struct {
	front string
	// accepted counts the connections the server proxy's listener accepted.
	accepted atomic.Int64
}

// newMeshPair starts the pair; edits change the route to web.shop, whose one backend
// has the application as its endpoint.
func newMeshPair(tb testing.TB, app http.HandlerFunc, edits ...func(*api.Route)) *meshPair {
	tb.Helper()
	p := &meshPair{}
	backend := httptest.NewUnstartedServer(app)
	backend.Config.Protocols = new(http.Protocols)
	backend.Config.Protocols.SetHTTP1(true)
	backend.Config.Protocols.SetUnencryptedHTTP2(true)
	backend.Start()
	tb.Cleanup(backend.Close)
	clientID, serverID := meshIdentities(tb)

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var policy atomic.Pointer[inbound.Policy]
	allow, err := inbound.NewPolicy(&api.Inbound{Mode: "Permissive", AllowAll: true})
	if err != nil {
		tb.Fatal(err)
	}
	policy.Store(allow)
	srv := inbound.New(acceptCounter{lis, &p.accepted}, inbound.Config{Log: logr.Discard(), IDs: serverID, Policy: &policy})
	go func() { _ = srv.Serve() }()
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})

	var table atomic.Pointer[router.Table]
	route := &api.Route{Backends: []*api.Backend{{Service: "web", Weight: 1, Endpoints: []*api.Endpoint{{
		Ip: "127.0.0.1", Port: uint32(backend.Listener.Addr().(*net.TCPAddr).Port),
		Identity: meshServerID, ProxyPort: uint32(lis.Addr().(*net.TCPAddr).Port),
	}}}}}
	for _, edit := range edits {
		edit(route)
	}
	table.Store(build(tb, &api.Service{Namespace: "shop", Name: "web", Ports: []*api.ServicePort{{Port: 80, Routes: []*api.Route{route}}}}))
	h := outbound.New(logr.Discard(), &table, telemetry.New())
	h.UseMesh(clientID)
	front := &http.Server{Handler: h, Protocols: outbound.ServerProtocols(), ReadHeaderTimeout: 10 * time.Second}
	frontLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	go func() { _ = front.Serve(frontLis) }()
	tb.Cleanup(func() { _ = front.Close() })
	p.front = frontLis.Addr().String()
	return p
}

// client returns a client of the pair's front that speaks HTTP/1.1 (keep-alive, up to 64
// connections) or, with h2c, HTTP/2 with prior knowledge.
func (p *meshPair) client(h2c bool) *http.Transport {
	t := &http.Transport{MaxIdleConnsPerHost: 64}
	if h2c {
		t.Protocols = new(http.Protocols)
		t.Protocols.SetUnencryptedHTTP2(true)
	}
	return t
}

// request is a GET for web.shop through the pair.
func (p *meshPair) request(tb testing.TB) *http.Request {
	tb.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+p.front+"/", nil)
	if err != nil {
		tb.Fatal(err)
	}
	req.Host = "web.shop"
	return req
}

type acceptCounter struct {
	net.Listener
	n *atomic.Int64
}

func (l acceptCounter) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// meshServerID is the SPIFFE ID of the server proxy of a meshPair.
const meshServerID = "spiffe://cluster.local/ns/shop/sa/web"

// meshIdentities returns the certificates and trust bundle of a client and a server proxy,
// from one mesh CA.
func meshIdentities(tb testing.TB) (client, server *tlsid.Store) {
	tb.Helper()
	now := time.Now()
	root, err := identity.NewRoot("cluster.local", now, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	issuer, err := identity.NewIssuer(root, nil, []*x509.Certificate{root.Cert}, "cluster.local", now)
	if err != nil {
		tb.Fatal(err)
	}
	stores := [2]*tlsid.Store{{}, {}}
	for i, sa := range []string{"client", "web"} {
		cert, err := issuer.SignServing(identity.ID{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: sa}, nil, now, time.Hour)
		if err != nil {
			tb.Fatal(err)
		}
		if err := errors.Join(stores[i].SetCertificate(cert), stores[i].SetTrustBundle(identity.BundlePEM(root.Cert))); err != nil {
			tb.Fatal(err)
		}
	}
	return stores[0], stores[1]
}

// Between proxies, requests are multiplexed on HTTP/2 whatever their client speaks: bursts
// of requests in flight together, from HTTP/2 (h2c) and from HTTP/1.1 clients, share one
// mTLS connection to the peer proxy.
func TestMeshRequestsShareOneMultiplexedConnection(t *testing.T) {
	const inFlight = 16
	var arrived sync.WaitGroup
	release := make(chan struct{})
	var hold atomic.Bool
	p := newMeshPair(t, func(w http.ResponseWriter, r *http.Request) {
		if hold.Load() {
			arrived.Done()
			<-release
		}
		w.Header().Set("App-Proto", r.Proto)
	})
	// burst sends inFlight requests that the application holds until all have arrived,
	// so that they are in flight together.
	burst := func(client *http.Transport) {
		t.Helper()
		hold.Store(true)
		arrived.Add(inFlight)
		var wg sync.WaitGroup
		errs := make(chan error, inFlight)
		for range inFlight {
			wg.Go(func() {
				resp, err := client.RoundTrip(p.request(t))
				if err != nil {
					errs <- err
					return
				}
				_ = resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					errs <- errors.New(resp.Status)
				}
			})
		}
		arrived.Wait()
		close(release)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		hold.Store(false)
		release = make(chan struct{})
	}

	// one request first: later requests find its connection in the pool
	single := func(client *http.Transport) {
		t.Helper()
		resp, err := client.RoundTrip(p.request(t))
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
	}

	h2c := p.client(true)
	defer h2c.CloseIdleConnections()
	single(h2c)
	h1 := p.client(false)
	defer h1.CloseIdleConnections()
	for _, client := range []*http.Transport{h2c, h1, h2c, h1} {
		burst(client)
	}
	if got := p.accepted.Load(); got != 1 {
		t.Errorf("bursts of %d requests in flight took %d connections between the proxies, want 1, multiplexed", inFlight, got)
	}
}

// TestRetryFromAMeshedToAPlainEndpointCarriesNoPeerHeaders: the peer headers an attempt
// at a meshed endpoint sets stay out of a retry that goes to an unmeshed one.
func TestRetryFromAMeshedToAPlainEndpointCarriesNoPeerHeaders(t *testing.T) {
	var leaked atomic.Int64
	plain := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Braid-Target-Port") != "" || r.Header.Get("Braid-Target-Protocol") != "" {
			leaked.Add(1)
		}
	}))
	t.Cleanup(plain.Close)
	// The meshed endpoint's proxy accepts and closes: its mTLS handshake fails, a connect
	// failure, which the default policy retries on the other endpoint.
	var tried atomic.Int64
	broken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = broken.Close() })
	go func() {
		for {
			c, err := broken.Accept()
			if err != nil {
				return
			}
			tried.Add(1)
			_ = c.Close()
		}
	}()
	clientID, _ := meshIdentities(t)
	var table atomic.Pointer[router.Table]
	table.Store(build(t, &api.Service{Namespace: "shop", Name: "web", Ports: []*api.ServicePort{{Port: 80, Routes: []*api.Route{{
		Backends: []*api.Backend{{Service: "web", Weight: 1, Endpoints: []*api.Endpoint{
			{Ip: "127.0.0.1", Port: 1, Identity: meshServerID, ProxyPort: uint32(broken.Addr().(*net.TCPAddr).Port)},
			{Ip: "127.0.0.1", Port: uint32(plain.Listener.Addr().(*net.TCPAddr).Port)},
		}}},
	}}}}}))
	h := outbound.New(logr.Discard(), &table, telemetry.New())
	h.UseMesh(clientID)
	front := httptest.NewServer(h)
	t.Cleanup(front.Close)
	for i := 0; i < 50 && tried.Load() == 0; i++ {
		req, err := http.NewRequest(http.MethodGet, front.URL+"/", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = "web.shop"
		resp, err := front.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: status %d; want 200 (a connect failure is retried on the plain endpoint)", i, resp.StatusCode)
		}
	}
	if tried.Load() == 0 {
		t.Fatal("no request tried the meshed endpoint first")
	}
	if n := leaked.Load(); n > 0 {
		t.Fatalf("%d retried requests reached the plain endpoint with Braid-Target-* headers", n)
	}
}

// A mirror whose endpoint is meshed gets its copy through the peer proxy too, with the
// client's verified identity.
func TestMirrorToAMeshedEndpoint(t *testing.T) {
	seen := make(chan string, 4)
	p := newMeshPair(t, func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Get(inbound.ClientIDHeader)
		_, _ = w.Write([]byte("ok"))
	}, func(route *api.Route) {
		route.Mirrors = []*api.Mirror{{Backend: &api.Backend{Service: "web-shadow", Weight: 1, Endpoints: route.Backends[0].Endpoints}}}
	})
	resp, err := p.client(false).RoundTrip(p.request(t))
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("answered %d", resp.StatusCode)
	}
	for range 2 { // the request and its mirrored copy
		select {
		case id := <-seen:
			if id != "spiffe://cluster.local/ns/shop/sa/client" {
				t.Errorf("the application saw the client as %q", id)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the mirrored copy never reached the meshed endpoint")
		}
	}
}
