package outbound_test

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/go-logr/logr/testr"

	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/proxy/outbound"
	"github.com/braidmesh/braid/proxy/router"
)

const proxyErrorHeader = "Braid-Proxy-Error"

// seen is what a backend saw of one request.
type seen struct {
	host, method, path, rawQuery, body, header string
}

// startBackend serves on 127.0.0.1 and reports every request it gets on the returned channel.
func startBackend(t *testing.T, name string, status int) (netip.AddrPort, <-chan seen) {
	t.Helper()
	got := make(chan seen, 100)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got <- seen{host: r.Host, method: r.Method, path: r.URL.EscapedPath(), rawQuery: r.URL.RawQuery, body: string(body), header: r.Header.Get("X-Test")}
		w.Header().Set("X-Backend", name)
		w.WriteHeader(status)
		_, _ = io.WriteString(w, "hello from "+name)
	}))
	t.Cleanup(srv.Close)
	return netip.MustParseAddrPort(srv.Listener.Addr().String()), got
}

// refusingEndpoint returns a loopback address where nothing listens.
func refusingEndpoint(t *testing.T) netip.AddrPort {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddrPort(lis.Addr().String())
	if err := lis.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

func endpoint(a netip.AddrPort) *api.Endpoint {
	return &api.Endpoint{Ip: a.Addr().String(), Port: uint32(a.Port())}
}

// webService is shop/web on port 80 with the given backends.
func webService(backends ...*api.Backend) *api.Service {
	return &api.Service{Namespace: "shop", Name: "web", Ports: []*api.ServicePort{{Name: "http", Port: 80, Routes: []*api.Route{{Backends: backends}}}}}
}

// newHandler returns a Handler whose table is built from the services (no table at all
// when services is nil), and the pointer it reads the table from.
func newHandler(t *testing.T, services []*api.Service) (*outbound.Handler, *atomic.Pointer[router.Table]) {
	t.Helper()
	var table atomic.Pointer[router.Table]
	if services != nil {
		table.Store(build(t, services...))
	}
	return outbound.New(testr.New(t), &table, nil), &table
}

func build(t testing.TB, services ...*api.Service) *router.Table {
	t.Helper()
	tbl, err := router.Build(&api.Snapshot{Version: 1, Services: services}, "shop", "cluster.local")
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	return tbl
}

// serve sends a GET for target (whose host is the authority) straight to the handler.
func serve(h http.Handler, target string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
	return rec
}

// checkProxyError checks that the proxy generated an error response with status code and
// a body mentioning every one of mention.
func checkProxyError(t *testing.T, code int, header http.Header, body string, wantCode int, mention ...string) {
	t.Helper()
	if code != wantCode {
		t.Errorf("status %d, want %d (body %q)", code, wantCode, body)
	}
	if got := header.Get(proxyErrorHeader); got != http.StatusText(wantCode) {
		t.Errorf("%s header = %q, want %q", proxyErrorHeader, got, http.StatusText(wantCode))
	}
	if !strings.HasPrefix(body, "braid-proxy: ") {
		t.Errorf("body %q does not say it comes from the proxy", body)
	}
	for _, m := range mention {
		if !strings.Contains(body, m) {
			t.Errorf("body %q does not mention %q", body, m)
		}
	}
}

func TestNoTableYet(t *testing.T) {
	h, _ := newHandler(t, nil)
	rec := serve(h, "http://web.shop/")
	checkProxyError(t, rec.Code, rec.Header(), rec.Body.String(), http.StatusServiceUnavailable, "configuration")
}

func TestUnknownHost(t *testing.T) {
	addr, got := startBackend(t, "web", http.StatusOK)
	h, _ := newHandler(t, []*api.Service{webService(&api.Backend{Service: "web", Weight: 1, Endpoints: []*api.Endpoint{endpoint(addr)}})})
	for _, host := range []string{"nope.shop", "web.elsewhere.svc.cluster.local", "example.com", "web.shop.svc.other.domain", "web:8080"} {
		t.Run(host, func(t *testing.T) {
			rec := serve(h, "http://"+host+"/path")
			checkProxyError(t, rec.Code, rec.Header(), rec.Body.String(), http.StatusNotFound, host)
		})
	}
	if len(got) != 0 {
		t.Errorf("the backend got %d requests for hosts that name no route", len(got))
	}
}

func TestNoWeightedBackend(t *testing.T) {
	addr, _ := startBackend(t, "web", http.StatusOK)
	h, _ := newHandler(t, []*api.Service{webService(&api.Backend{Service: "web", Weight: 0, Endpoints: []*api.Endpoint{endpoint(addr)}})})
	rec := serve(h, "http://web/")
	checkProxyError(t, rec.Code, rec.Header(), rec.Body.String(), http.StatusServiceUnavailable, "shop/web", "80")
}

func TestUnavailableBackend(t *testing.T) {
	addr, got := startBackend(t, "web-v1", http.StatusOK)
	const reason = "service shop/web-v2 does not exist"
	h, _ := newHandler(t, []*api.Service{webService(
		&api.Backend{Service: "web-v1", Weight: 0, Endpoints: []*api.Endpoint{endpoint(addr)}},
		&api.Backend{Service: "web-v2", Weight: 100, Unavailable: reason},
	)})
	for range 20 {
		rec := serve(h, "http://web.shop.svc.cluster.local/")
		checkProxyError(t, rec.Code, rec.Header(), rec.Body.String(), http.StatusServiceUnavailable, reason)
	}
	if len(got) != 0 {
		t.Errorf("the 0-weight backend got %d requests", len(got))
	}
}

func TestBackendWithoutEndpoints(t *testing.T) {
	h, _ := newHandler(t, []*api.Service{webService(&api.Backend{Service: "web-canary", Weight: 1})})
	rec := serve(h, "http://web/")
	checkProxyError(t, rec.Code, rec.Header(), rec.Body.String(), http.StatusServiceUnavailable, "web-canary", "no ready endpoints")
}

// do sends req through the proxy at proxyURL with the given Host and returns the
// response's status, headers and body.
func do(t *testing.T, proxyURL, method, pathAndQuery, host, body string) (int, http.Header, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, proxyURL+pathAndQuery, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	req.Header.Set("X-Test", "passed through")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s (Host %s): %v", method, pathAndQuery, host, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	return resp.StatusCode, resp.Header, string(b)
}

func TestForwardsToBackend(t *testing.T) {
	addr, got := startBackend(t, "web", http.StatusCreated)
	h, _ := newHandler(t, []*api.Service{webService(&api.Backend{Service: "web", Weight: 1, Endpoints: []*api.Endpoint{endpoint(addr)}})})
	proxy := httptest.NewServer(h)
	t.Cleanup(proxy.Close)

	for _, host := range []string{"web", "web.shop:80", "Web.Shop.svc.cluster.local"} {
		t.Run(host, func(t *testing.T) {
			code, header, body := do(t, proxy.URL, http.MethodPost, "/a/b%2Fc?x=1&y=two+words&x=3", host, "payload")
			if code != http.StatusCreated || body != "hello from web" || header.Get("X-Backend") != "web" {
				t.Errorf("response %d %q (X-Backend %q), want the backend's 201 %q", code, body, header.Get("X-Backend"), "hello from web")
			}
			if h := header.Get(proxyErrorHeader); h != "" {
				t.Errorf("a forwarded response carries %s: %q", proxyErrorHeader, h)
			}
			select {
			case s := <-got:
				want := seen{host: host, method: http.MethodPost, path: "/a/b%2Fc", rawQuery: "x=1&y=two+words&x=3", body: "payload", header: "passed through"}
				if s != want {
					t.Errorf("the backend saw\n %+v\nwant\n %+v", s, want)
				}
			default:
				t.Fatal("the backend got no request")
			}
		})
	}
}

// Errors the application itself returns pass through unmarked.
func TestBackendErrorsAreNotMarked(t *testing.T) {
	addr, _ := startBackend(t, "web", http.StatusServiceUnavailable)
	h, _ := newHandler(t, []*api.Service{webService(&api.Backend{Service: "web", Weight: 1, Endpoints: []*api.Endpoint{endpoint(addr)}})})
	proxy := httptest.NewServer(h)
	t.Cleanup(proxy.Close)
	code, header, body := do(t, proxy.URL, http.MethodGet, "/", "web", "")
	if code != http.StatusServiceUnavailable || body != "hello from web" {
		t.Errorf("response %d %q, want the backend's 503", code, body)
	}
	if v := header.Get(proxyErrorHeader); v != "" {
		t.Errorf("the application's own error carries %s: %q", proxyErrorHeader, v)
	}
}

func TestRefusedEndpoint(t *testing.T) {
	dead := refusingEndpoint(t)
	h, _ := newHandler(t, []*api.Service{webService(&api.Backend{Service: "web", Weight: 1, Endpoints: []*api.Endpoint{endpoint(dead)}})})
	proxy := httptest.NewServer(h)
	t.Cleanup(proxy.Close)
	code, header, body := do(t, proxy.URL, http.MethodGet, "/", "web.shop", "")
	checkProxyError(t, code, header, body, http.StatusBadGateway, dead.String(), `"web.shop"`)

	// The same through ServeHTTP directly.
	rec := serve(h, "http://web.shop/")
	checkProxyError(t, rec.Code, rec.Header(), rec.Body.String(), http.StatusBadGateway, dead.String())
}

// A new table applies to the next request.
func TestTableSwap(t *testing.T) {
	v1, got1 := startBackend(t, "web-v1", http.StatusOK)
	v2, got2 := startBackend(t, "web-v2", http.StatusOK)
	h, table := newHandler(t, []*api.Service{webService(&api.Backend{Service: "web-v1", Weight: 1, Endpoints: []*api.Endpoint{endpoint(v1)}})})
	proxy := httptest.NewServer(h)
	t.Cleanup(proxy.Close)

	if _, _, body := do(t, proxy.URL, http.MethodGet, "/", "web", ""); body != "hello from web-v1" {
		t.Fatalf("first request answered %q, want web-v1", body)
	}
	table.Store(build(t, webService(
		&api.Backend{Service: "web-v1", Weight: 0, Endpoints: []*api.Endpoint{endpoint(v1)}},
		&api.Backend{Service: "web-v2", Weight: 1, Endpoints: []*api.Endpoint{endpoint(v2)}},
	)))
	for range 10 {
		if _, _, body := do(t, proxy.URL, http.MethodGet, "/", "web", ""); body != "hello from web-v2" {
			t.Fatalf("after the swap a request was answered %q, want web-v2", body)
		}
	}
	if len(got1) != 1 || len(got2) != 10 {
		t.Errorf("web-v1 got %d requests and web-v2 %d, want 1 and 10", len(got1), len(got2))
	}
}
