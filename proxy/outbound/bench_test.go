package outbound_test

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/proxy/outbound"
	"github.com/braidmesh/braid/proxy/router"
	"github.com/braidmesh/braid/proxy/telemetry"
)

// discard is a ResponseWriter that keeps nothing but its header map, emptied for reuse.
type discard struct{ h http.Header }

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) Write(p []byte) (int, error) { return len(p), nil }
func (d *discard) WriteHeader(int)             {}

// answerOK answers every request in memory with an empty 200, as a backend would.
type answerOK struct{}

func (answerOK) RoundTrip(req *http.Request) (*http.Response, error) {
	return &http.Response{
		StatusCode: http.StatusOK, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{}, Body: http.NoBody, Request: req,
	}, nil
}

// BenchmarkOutbound measures one request through the handler, with and without metrics:
//
//   - handler: routed and forwarded to an in-memory backend, so only the proxy's own
//     work counts (resolve, route, pick, reverse proxy, metrics);
//   - loopback: forwarded over a real loopback connection to an HTTP backend in the same
//     process (its work counts too);
//   - no-route: answered by the proxy itself (404, dst_service="unknown").
func BenchmarkOutbound(b *testing.B) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}))
	b.Cleanup(backend.Close)
	var table atomic.Pointer[router.Table]
	table.Store(build(b, &api.Service{Namespace: "shop", Name: "web", Ports: []*api.ServicePort{{Port: 80, Routes: []*api.Route{{
		Backends: []*api.Backend{{Service: "web", Weight: 1, Endpoints: []*api.Endpoint{{Ip: "127.0.0.1", Port: uint32(backend.Listener.Addr().(*net.TCPAddr).Port)}}}},
	}}}}}))
	for _, bc := range []struct {
		name, host string
		inMemory   bool
	}{{"handler", "web.shop", true}, {"loopback", "web.shop", false}, {"no-route", "nowhere.example", true}} {
		for _, metrics := range []bool{false, true} {
			name := bc.name + "/metrics=off"
			var m *telemetry.Metrics
			if metrics {
				name, m = bc.name+"/metrics=on", telemetry.New()
			}
			b.Run(name, func(b *testing.B) {
				h := outbound.New(logr.Discard(), &table, m)
				if bc.inMemory {
					outbound.SetTransport(h, answerOK{})
				}
				req := httptest.NewRequest(http.MethodGet, "http://"+bc.host+"/", nil)
				w := &discard{h: http.Header{}}
				b.ReportAllocs()
				for b.Loop() {
					clear(w.h)
					h.ServeHTTP(w, req)
				}
			})
		}
	}
}

// BenchmarkMeshPair measures one request across a whole proxy pair in one process, over
// real loopback sockets: a client (keep-alive) → the client proxy's handler → mTLS → the
// server proxy (proxy/inbound) → an HTTP/1.1 backend answering 1 KB, as in
// hack/bench/proxy. Its allocations and CPU time (cpu-ns/op) are both proxies' plus the
// client's and the backend's, which stay the same; ns/op is a request's latency.
//
//   - http1: the client speaks HTTP/1.1 (the proxies multiplex it on HTTP/2, and the
//     server proxy reaches the backend over HTTP/1.1);
//   - h2c: the client speaks HTTP/2 with prior knowledge (gRPC's way), and the server
//     proxy reaches the backend over h2c.
func BenchmarkMeshPair(b *testing.B) {
	body := strings.Repeat("x", 1024)
	p := newMeshPair(b, func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, body) })
	for _, h2c := range []bool{false, true} {
		name, client := "http1", p.client(h2c)
		if h2c {
			name = "h2c"
		}
		b.Run(name, func(b *testing.B) {
			b.Cleanup(client.CloseIdleConnections)
			req := p.request(b)
			b.ReportAllocs()
			start := cpuTime(b)
			for b.Loop() {
				resp, err := client.RoundTrip(req)
				if err != nil {
					b.Fatal(err)
				}
				n, _ := io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode != http.StatusOK || n != int64(len(body)) {
					b.Fatalf("status %d, %d bytes", resp.StatusCode, n)
				}
			}
			b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N), "cpu-ns/op")
		})
	}
}

// cpuTime is the CPU time the process has used, user and system: with everything in one
// process, the CPU a request costs, where ns/op is its latency.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
