package router_test

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/proxy/router"
)

func svc(namespace, name string, ports ...*api.ServicePort) *api.Service {
	return &api.Service{Namespace: namespace, Name: name, Ports: ports}
}

func port(number uint32, backends ...*api.Backend) *api.ServicePort {
	return &api.ServicePort{Name: "p", Port: number, Routes: []*api.Route{{Backends: backends}}}
}

func backend(service string, weight uint32, endpoints ...*api.Endpoint) *api.Backend {
	return &api.Backend{Service: service, Weight: weight, Endpoints: endpoints}
}

func ep(ip string, port uint32) *api.Endpoint { return &api.Endpoint{Ip: ip, Port: port} }

// testSnapshot has shop/web (ports 80 and 8080) and other/api (ports 80 and 9090); the
// proxy's own namespace is shop.
func testSnapshot() *api.Snapshot {
	return &api.Snapshot{Version: 7, Services: []*api.Service{
		svc("shop", "web",
			port(80, backend("web", 1, ep("10.0.0.1", 8080))),
			port(8080, backend("web", 1, ep("10.0.0.1", 8081)))),
		svc("other", "api",
			port(80, backend("api", 1, ep("10.0.1.1", 80))),
			port(9090, backend("api", 1, ep("fd00::1", 9090)))),
	}}
}

func mustBuild(t testing.TB, snap *api.Snapshot) *router.Table {
	t.Helper()
	table, err := router.Build(snap, "shop", "cluster.local")
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	return table
}

func TestBuildVersion(t *testing.T) {
	if v := mustBuild(t, testSnapshot()).Version(); v != 7 {
		t.Errorf("Version() = %d, want 7", v)
	}
	if v := mustBuild(t, &api.Snapshot{}).Version(); v != 0 {
		t.Errorf("Version() of an empty snapshot = %d, want 0", v)
	}
}

func TestPorts(t *testing.T) {
	table := mustBuild(t, testSnapshot())
	var got []string
	for p := range table.Ports() {
		got = append(got, fmt.Sprintf("%s:%d", p.Service, p.Number))
	}
	slices.Sort(got)
	want := []string{"other/api:80", "other/api:9090", "shop/web:80", "shop/web:8080"}
	if !slices.Equal(got, want) {
		t.Errorf("Ports() = %v, want %v", got, want)
	}
	for range table.Ports() {
		break // stopping early must not panic
	}
}

func TestResolve(t *testing.T) {
	table := mustBuild(t, testSnapshot())
	for _, tc := range []struct {
		authority string
		service   string
		port      uint32
	}{
		{"web", "shop/web", 80},
		{"web:8080", "shop/web", 8080},
		{"web.shop", "shop/web", 80},
		{"web.shop:8080", "shop/web", 8080},
		{"web.shop.svc", "shop/web", 80},
		{"web.shop.svc.cluster.local", "shop/web", 80},
		{"api.other", "other/api", 80},
		{"api.other:80", "other/api", 80},
		{"api.other:9090", "other/api", 9090},
		{"api.other.svc:9090", "other/api", 9090},
		{"api.other.svc.cluster.local", "other/api", 80},
		{"api.other.svc.cluster.local:9090", "other/api", 9090},
		{"api.other.svc.cluster.local.", "other/api", 80},
		{"api.other.svc.cluster.local.:9090", "other/api", 9090},
		{"WEB", "shop/web", 80},
		{"Api.Other.SVC.Cluster.Local:9090", "other/api", 9090},
		{"API.OTHER", "other/api", 80},
	} {
		t.Run(tc.authority, func(t *testing.T) {
			p, err := table.Resolve(tc.authority)
			if err != nil {
				t.Fatalf("Resolve(%q): %v", tc.authority, err)
			}
			if p.Service != tc.service || p.Number != tc.port {
				t.Errorf("Resolve(%q) = %s port %d, want %s port %d", tc.authority, p.Service, p.Number, tc.service, tc.port)
			}
		})
	}
}

func TestResolveRejects(t *testing.T) {
	table := mustBuild(t, testSnapshot())
	for _, tc := range []struct {
		authority string
		mention   string // the error must mention this
	}{
		{"", ""},
		{"api", "shop/api"}, // a bare name is in the proxy's own namespace
		{"api.shop", "shop/api"},
		{"nope.other.svc.cluster.local", "other/nope"},
		{"api.other.svc.other.domain", "api.other.svc.other.domain"},
		{"api.other.svc.cluster", "api.other.svc.cluster"},
		{"api.other.svc.cluster.local.evil", "api.other.svc.cluster.local.evil"},
		{"api.other.cluster.local", "api.other.cluster.local"},
		{"api.other.notsvc", "api.other.notsvc"},
		{"10.0.1.1", "10.0.1.1"},
		{"10.0.1.1:80", "10.0.1.1"},
		{"[::1]", "[::1]"},
		{"[::1]:80", "::1"},
		{"[fd00::1]:9090", "fd00::1"},
		{"::1", "::1"},
		{"fd00::1:80", "fd00::1:80"},
		{"web:", "web:"},
		{"web:0", "web:0"},
		{"web:-1", "web:-1"},
		{"web:+80", "web:+80"},
		{"web:65536", "web:65536"},
		{"web:http", "web:http"},
		{"web:80:80", "web:80:80"},
		{"[web]", "[web]"},
		{"web]:80", "web]:80"},
		{"web.shop:81", "81"},
		{"web:9090", "9090"},
		{"api.other:8080", "8080"},
		{"api.other.svc.cluster.local:443", "443"},
	} {
		t.Run(tc.authority, func(t *testing.T) {
			p, err := table.Resolve(tc.authority)
			if err == nil {
				t.Fatalf("Resolve(%q) = %s port %d, want an error", tc.authority, p.Service, p.Number)
			}
			if !errors.Is(err, router.ErrNoRoute) {
				t.Errorf("Resolve(%q) error %v does not wrap ErrNoRoute", tc.authority, err)
			}
			if p != nil {
				t.Errorf("Resolve(%q) returned a port with its error", tc.authority)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("Resolve(%q) error %q does not mention %q", tc.authority, err, tc.mention)
			}
		})
	}
}

func TestResolveOtherDomain(t *testing.T) {
	table, err := router.Build(testSnapshot(), "shop", "corp.example")
	if err != nil {
		t.Fatal(err)
	}
	if p, err := table.Resolve("api.other.svc.corp.example:9090"); err != nil || p.Service != "other/api" {
		t.Errorf("Resolve in domain corp.example = %v, %v; want other/api", p, err)
	}
	if _, err := table.Resolve("api.other.svc.cluster.local"); !errors.Is(err, router.ErrNoRoute) {
		t.Errorf("Resolve of cluster.local in domain corp.example: %v, want ErrNoRoute", err)
	}
}

func TestBuildRejects(t *testing.T) {
	good := backend("web", 1, ep("10.0.0.1", 8080))
	for _, tc := range []struct {
		name    string
		snap    *api.Snapshot
		mention string
	}{
		{"duplicate service", &api.Snapshot{Services: []*api.Service{
			svc("shop", "web", port(80, good)), svc("shop", "web", port(81, good)),
		}}, "shop/web appears twice"},
		{"no namespace", &api.Snapshot{Services: []*api.Service{svc("", "web", port(80, good))}}, "no namespace"},
		{"no name", &api.Snapshot{Services: []*api.Service{svc("shop", "", port(80, good))}}, "no namespace or name"},
		{"duplicate port", &api.Snapshot{Services: []*api.Service{
			svc("shop", "web", port(80, good), port(80, good)),
		}}, "port 80 appears twice"},
		{"port 0", &api.Snapshot{Services: []*api.Service{svc("shop", "web", port(0, good))}}, "port 0 is out of range"},
		{"port 65536", &api.Snapshot{Services: []*api.Service{svc("shop", "web", port(65536, good))}}, "port 65536 is out of range"},
		{"port 1<<32-1", &api.Snapshot{Services: []*api.Service{svc("shop", "web", port(1<<32-1, good))}}, "out of range"},
		{"endpoint IP not an IP", &api.Snapshot{Services: []*api.Service{
			svc("shop", "web", port(80, backend("web", 1, ep("web-0", 8080)))),
		}}, "invalid endpoint web-0:8080"},
		{"endpoint IP empty", &api.Snapshot{Services: []*api.Service{
			svc("shop", "web", port(80, backend("web", 1, ep("", 8080)))),
		}}, "invalid endpoint"},
		{"endpoint IP out of range", &api.Snapshot{Services: []*api.Service{
			svc("shop", "web", port(80, backend("web", 1, ep("10.0.0.256", 8080)))),
		}}, "invalid endpoint 10.0.0.256"},
		{"endpoint IP with port", &api.Snapshot{Services: []*api.Service{
			svc("shop", "web", port(80, backend("web", 1, ep("10.0.0.1:80", 8080)))),
		}}, "invalid endpoint"},
		{"endpoint IP bracketed", &api.Snapshot{Services: []*api.Service{
			svc("shop", "web", port(80, backend("web", 1, ep("[fd00::1]", 8080)))),
		}}, "invalid endpoint"},
		{"endpoint port 0", &api.Snapshot{Services: []*api.Service{
			svc("shop", "web", port(80, backend("web", 1, ep("10.0.0.1", 0)))),
		}}, "invalid endpoint 10.0.0.1:0"},
		{"endpoint port 65536", &api.Snapshot{Services: []*api.Service{
			svc("shop", "web", port(80, backend("web", 1, ep("10.0.0.1", 65536)))),
		}}, "invalid endpoint 10.0.0.1:65536"},
		{"bad endpoint in a later backend", &api.Snapshot{Services: []*api.Service{
			svc("shop", "web", port(80, good, backend("web-v2", 1, ep("nope", 8080)))),
		}}, "backend web-v2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			table, err := router.Build(tc.snap, "shop", "cluster.local")
			if err == nil {
				t.Fatalf("Build succeeded (%v), want an error", table)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("Build error %q does not mention %q", err, tc.mention)
			}
		})
	}
}

func TestBuildAcceptsEdgeValues(t *testing.T) {
	table := mustBuild(t, &api.Snapshot{Services: []*api.Service{
		svc("shop", "web",
			port(1, backend("web", 1, ep("10.0.0.1", 1))),
			port(65535, backend("web", 1, ep("fd00::2", 65535)))),
		svc("shop", "empty"), // a service without ports routes nothing
	}})
	for _, a := range []string{"web:1", "web:65535"} {
		if _, err := table.Resolve(a); err != nil {
			t.Errorf("Resolve(%q): %v", a, err)
		}
	}
	if _, err := table.Resolve("empty"); !errors.Is(err, router.ErrNoRoute) {
		t.Errorf("Resolve of a service without ports: %v, want ErrNoRoute", err)
	}
}

func resolve(t *testing.T, table *router.Table, authority string) *router.Port {
	t.Helper()
	p, err := table.Resolve(authority)
	if err != nil {
		t.Fatalf("Resolve(%q): %v", authority, err)
	}
	return p
}

func TestPickNeverChoosesZeroWeight(t *testing.T) {
	for _, order := range []string{"zero first", "zero last"} {
		t.Run(order, func(t *testing.T) {
			zero := backend("web-v1", 0, ep("10.0.0.1", 8080))
			heavy := backend("web-v2", 5, ep("10.0.0.2", 8080))
			backends := []*api.Backend{zero, heavy}
			if order == "zero last" {
				backends = []*api.Backend{heavy, zero}
			}
			p := resolve(t, mustBuild(t, &api.Snapshot{Services: []*api.Service{svc("shop", "web", port(80, backends...))}}), "web")
			for i := range 10000 {
				if b := anyRoute(t, p).Pick(); b == nil || b.Service != "web-v2" {
					t.Fatalf("draw %d picked %+v, want web-v2", i, b)
				}
			}
		})
	}
}

// Every prefix of a run of picks is split within a few picks of the weights, whatever the
// weights: the promise that lets short canary steps and small test runs be exact.
func TestPickByWeight(t *testing.T) {
	for _, weights := range [][]uint32{{3, 1}, {60, 40}, {9, 1}, {1, 999}, {1, 2, 7}, {1, 1, 1, 1, 1, 1, 1}, {1_000_000, 1}} {
		t.Run(fmt.Sprint(weights), func(t *testing.T) {
			var backends []*api.Backend
			var total uint32
			for i, w := range weights {
				backends = append(backends, backend(fmt.Sprintf("b%d", i), w, ep("10.0.0.1", 8080)))
				total += w
			}
			p := resolve(t, mustBuild(t, &api.Snapshot{Services: []*api.Service{svc("shop", "web", port(80, backends...))}}), "web")
			counts := map[string]int{}
			for n := 1; n <= 20000; n++ {
				b := anyRoute(t, p).Pick()
				if b == nil {
					t.Fatal("Pick returned nil for a port with weights")
				}
				counts[b.Service]++
				for i, w := range weights {
					want := float64(n) * float64(w) / float64(total)
					if got := float64(counts[fmt.Sprintf("b%d", i)]); math.Abs(got-want) > 4 {
						t.Fatalf("after %d picks b%d (weight %d of %d) had %v, want %.1f ± 4", n, i, w, total, got, want)
					}
				}
			}
		})
	}
}

func TestPickWithoutWeight(t *testing.T) {
	for name, backends := range map[string][]*api.Backend{
		"no backends":       nil,
		"all weights 0":     {backend("web-v1", 0, ep("10.0.0.1", 8080)), backend("web-v2", 0, ep("10.0.0.2", 8080))},
		"one with weight 0": {backend("web", 0, ep("10.0.0.1", 8080))},
	} {
		t.Run(name, func(t *testing.T) {
			p := resolve(t, mustBuild(t, &api.Snapshot{Services: []*api.Service{svc("shop", "web", port(80, backends...))}}), "web")
			for range 100 {
				if b := anyRoute(t, p).Pick(); b != nil {
					t.Fatalf("Pick = %+v, want nil", b)
				}
			}
		})
	}
}

func TestBackendCarriesConfig(t *testing.T) {
	p := resolve(t, mustBuild(t, &api.Snapshot{Services: []*api.Service{{
		Namespace: "shop", Name: "web",
		Ports: []*api.ServicePort{{Port: 80, Split: "shop/canary", Routes: []*api.Route{{Backends: []*api.Backend{
			{Service: "web-v2", Weight: 9, Unavailable: "service shop/web-v2 does not exist"},
		}}}}},
	}}}), "web.shop.svc")
	if p.Split != "shop/canary" || p.Service != "shop/web" || p.Number != 80 {
		t.Errorf("port = %+v, want split shop/canary of shop/web port 80", p)
	}
	b := anyRoute(t, p).Pick()
	if b == nil || b.Service != "web-v2" || b.Weight != 9 || b.Unavailable != "service shop/web-v2 does not exist" {
		t.Fatalf("Pick = %+v, want web-v2 with weight 9 and its unavailable reason", b)
	}
	if c, err := b.Pick(rand.New(rand.NewPCG(1, 2)), nil); !errors.Is(err, router.ErrNoEndpoints) {
		t.Errorf("Pick of a backend without endpoints = %v, %v; want ErrNoEndpoints", c.State, err)
	}
}

func TestEndpoint(t *testing.T) {
	p := resolve(t, mustBuild(t, &api.Snapshot{Services: []*api.Service{svc("shop", "web", port(80,
		backend("web", 1, ep("10.0.0.1", 8080), ep("10.0.0.2", 8081), ep("fd00::3", 8082)),
	))}}), "web")
	want := map[netip.AddrPort]bool{
		netip.MustParseAddrPort("10.0.0.1:8080"):  true,
		netip.MustParseAddrPort("10.0.0.2:8081"):  true,
		netip.MustParseAddrPort("[fd00::3]:8082"): true,
	}
	rng := rand.New(rand.NewPCG(3, 4))
	b := anyRoute(t, p).Pick()
	seen := map[netip.AddrPort]int{}
	for range 3000 {
		c, err := b.Pick(rng, nil) // never ended: requests in flight pile up
		if err != nil || !want[c.Endpoint().Addr] || c.Endpoint().Meshed() {
			t.Fatalf("Pick = %v, %v; want one of %v, unmeshed", c.State, err, want)
		}
		seen[c.Endpoint().Addr]++
	}
	// With equal latencies, requests in flight decide: they spread evenly.
	for addr := range want {
		if seen[addr] < 900 || seen[addr] > 1100 {
			t.Errorf("3000 picks with every request in flight: %v, want about 1000 each", seen)
			break
		}
	}
}

func FuzzResolve(f *testing.F) {
	for _, seed := range []string{
		"web", "web:8080", "web.shop", "web.shop.svc", "web.shop.svc.cluster.local",
		"api.other.svc.cluster.local.:9090", "API.OTHER", "api.other.svc.other.domain",
		"[::1]:80", "::1", "web:", "web:0", "web:65536", "", ".", "..", ":", "[", "]:80",
		"web.shop.svc.cluster.local..", "a.b.svc.", "%zz", "web\x00",
	} {
		f.Add(seed)
	}
	table := mustBuild(f, testSnapshot())
	ports := map[string]map[uint32]bool{
		"shop/web":  {80: true, 8080: true},
		"other/api": {80: true, 9090: true},
	}
	f.Fuzz(func(t *testing.T, authority string) {
		p, err := table.Resolve(authority)
		if err != nil {
			if !errors.Is(err, router.ErrNoRoute) {
				t.Fatalf("Resolve(%q) error %v does not wrap ErrNoRoute", authority, err)
			}
			if p != nil {
				t.Fatalf("Resolve(%q) returned a port with error %v", authority, err)
			}
			return
		}
		if p == nil {
			t.Fatalf("Resolve(%q) returned neither a port nor an error", authority)
		}
		if !ports[p.Service][p.Number] {
			t.Fatalf("Resolve(%q) = %s port %d, which is not in the table", authority, p.Service, p.Number)
		}
	})
}

// anyRoute is the route a plain GET / takes on a port whose routes have no matches.
func anyRoute(t *testing.T, p *router.Port) *router.Route {
	t.Helper()
	r := p.Route(http.MethodGet, "/", http.Header{})
	if r == nil {
		t.Fatal("no route admits GET /")
	}
	return r
}

func TestResolveAddrByClusterIP(t *testing.T) {
	s := svc("shop", "web", port(80, backend("web", 1, ep("10.0.0.1", 8080))), port(443, backend("web", 1, ep("10.0.0.1", 8443))))
	s.ClusterIps = []string{"10.96.0.10", "fd00:96::10"}
	other := svc("shop", "db", port(5432, backend("db", 1, ep("10.0.0.2", 5432))))
	other.ClusterIps = []string{"10.96.0.11"}
	table := mustBuild(t, &api.Snapshot{Services: []*api.Service{s, other}})
	for addr, want := range map[string]string{
		"10.96.0.10:80": "shop/web:80", "10.96.0.10:443": "shop/web:443", "[fd00:96::10]:80": "shop/web:80",
		"[::ffff:10.96.0.11]:5432": "shop/db:5432", "10.96.0.10:5432": "", "10.96.0.12:80": "",
	} {
		p, ok := table.ResolveAddr(netip.MustParseAddrPort(addr))
		got := ""
		if ok {
			got = fmt.Sprintf("%s:%d", p.Service, p.Number)
		}
		if got != want {
			t.Errorf("ResolveAddr(%s) = %q, want %q", addr, got, want)
		}
	}
	dup := svc("shop", "dup", port(80, backend("dup", 1)))
	dup.ClusterIps = []string{"10.96.0.10"}
	if _, err := router.Build(&api.Snapshot{Services: []*api.Service{s, dup}}, "shop", "cluster.local"); err == nil {
		t.Error("Build accepted two services on one cluster IP and port")
	}
}

func TestMeshedEndpointNeedsProxyPort(t *testing.T) {
	e := ep("10.0.0.1", 8080)
	e.Identity = "spiffe://cluster.local/ns/shop/sa/web"
	bad := &api.Snapshot{Services: []*api.Service{svc("shop", "web", port(80, backend("web", 1, e)))}}
	if _, err := router.Build(bad, "shop", "cluster.local"); err == nil {
		t.Fatal("Build accepted a meshed endpoint without a proxy port")
	}
	e.ProxyPort = 15006
	p := resolve(t, mustBuild(t, bad), "web")
	c, err := anyRoute(t, p).Pick().Pick(rand.New(rand.NewPCG(1, 2)), nil)
	got, ok := c.Endpoint(), err == nil
	if !ok || !got.Meshed() || got.ProxyAddr() != netip.MustParseAddrPort("10.0.0.1:15006") || got.Identity != e.Identity {
		t.Errorf("Endpoint = %+v, %v; want meshed via 10.0.0.1:15006", got, ok)
	}
}
