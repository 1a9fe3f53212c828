package telemetry_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/proxy/router"
	"github.com/braidmesh/braid/proxy/telemetry"
)

func build(t *testing.T, version uint64, services ...string) *router.Table {
	t.Helper()
	snap := &api.Snapshot{Version: version}
	for _, s := range services {
		ns, name, _ := strings.Cut(s, "/")
		snap.Services = append(snap.Services, &api.Service{Namespace: ns, Name: name, Ports: []*api.ServicePort{
			{Port: 80, Routes: []*api.Route{{Backends: []*api.Backend{{Service: name, Weight: 1, Endpoints: []*api.Endpoint{
				{Ip: "10.0.0.1", Port: 8080, Identity: "spiffe://cluster.local/ns/" + ns + "/sa/" + name, ProxyPort: 15006},
				{Ip: "10.0.0.2", Port: 8080},
			}}}}}},
			{Port: 8080, Routes: []*api.Route{{Backends: []*api.Backend{{Service: name, Weight: 1}}}}},
		}})
	}
	table, err := router.Build(snap, "shop", "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	return table
}

func resolve(t *testing.T, table *router.Table, host string) *router.Port {
	t.Helper()
	p, err := table.Resolve(host)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// series returns every sample of the family name as "label=value,…: value" strings,
// labels sorted by name (the histogram as its sample count).
func series(t *testing.T, m *telemetry.Metrics, name string) []string {
	t.Helper()
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, s := range f.GetMetric() {
			var labels []string
			for _, l := range s.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			var v float64
			switch {
			case s.GetCounter() != nil:
				v = s.GetCounter().GetValue()
			case s.GetGauge() != nil:
				v = s.GetGauge().GetValue()
			case s.GetHistogram() != nil:
				v = float64(s.GetHistogram().GetSampleCount())
			}
			out = append(out, fmt.Sprintf("%s: %g", strings.Join(labels, ","), v))
		}
	}
	slices.Sort(out)
	return out
}

func checkSeries(t *testing.T, m *telemetry.Metrics, name string, want ...string) {
	t.Helper()
	slices.Sort(want)
	if got := series(t, m, name); !slices.Equal(got, want) {
		t.Errorf("%s:\n  %s\nwant\n  %s", name, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// endpoints returns the meshed and the unmeshed endpoint of the port's first backend.
func endpoints(t *testing.T, port *router.Port) (meshed, unmeshed *router.Endpoint) {
	t.Helper()
	eps := port.Routes()[0].Backends()[0].Endpoints()
	if len(eps) != 2 {
		t.Fatalf("port %s %d has %d endpoints, want 2", port.Service, port.Number, len(eps))
	}
	return &eps[0].Endpoint, &eps[1].Endpoint
}

func TestRecord(t *testing.T) {
	m := telemetry.New()
	table := build(t, 1, "shop/web")
	port := resolve(t, table, "web")
	route := port.Routes()[0]
	meshed, _ := endpoints(t, port)
	web := m.Destination(port)
	for _, status := range []int{200, 200, 204, 301, 404, 101} {
		web.Record(route, meshed, status, telemetry.Success, time.Millisecond)
	}
	web.Record(route, meshed, 500, telemetry.Failure, time.Millisecond)
	web.Record(route, meshed, 503, telemetry.Failure, time.Millisecond)
	web.Record(route, meshed, 200, telemetry.Failure, time.Millisecond)
	web.Record(route, meshed, 503, telemetry.ProxyError, time.Millisecond)
	web.Record(route, meshed, 502, telemetry.ProxyError, time.Millisecond)
	web.Record(nil, nil, 404, telemetry.ProxyError, time.Millisecond)
	web.Record(nil, nil, 403, telemetry.Denied, time.Millisecond)
	unknown := m.Destination(nil)
	unknown.Record(nil, nil, 404, telemetry.ProxyError, time.Microsecond)
	unknown.Record(nil, nil, 404, telemetry.ProxyError, time.Microsecond)

	const web80 = "direction=outbound,dst_identity=spiffe://cluster.local/ns/shop/sa/web,dst_port=80,dst_service=shop/web"
	const web80None = "direction=outbound,dst_identity=none,dst_port=80,dst_service=shop/web"
	const unknownDst = "direction=outbound,dst_identity=none,dst_port=unknown,dst_service=unknown"
	checkSeries(t, m, "braid_proxy_requests_total",
		"code_class=1xx,"+web80+",result=success,route=0,status_code=101: 1",
		"code_class=2xx,"+web80+",result=success,route=0,status_code=200: 2",
		"code_class=2xx,"+web80+",result=success,route=0,status_code=204: 1",
		"code_class=2xx,"+web80+",result=failure,route=0,status_code=200: 1",
		"code_class=3xx,"+web80+",result=success,route=0,status_code=301: 1",
		"code_class=4xx,"+web80+",result=success,route=0,status_code=404: 1",
		"code_class=5xx,"+web80+",result=failure,route=0,status_code=500: 1",
		"code_class=5xx,"+web80+",result=failure,route=0,status_code=503: 1",
		"code_class=5xx,"+web80+",result=proxy_error,route=0,status_code=502: 1",
		"code_class=5xx,"+web80+",result=proxy_error,route=0,status_code=503: 1",
		"code_class=4xx,"+web80None+",result=proxy_error,route=none,status_code=404: 1",
		"code_class=4xx,"+web80None+",result=denied,route=none,status_code=403: 1",
		"code_class=4xx,"+unknownDst+",result=proxy_error,route=none,status_code=404: 2",
	)
	checkSeries(t, m, "braid_proxy_response_latency_seconds", web80+",route=0: 11", web80None+",route=none: 2", unknownDst+",route=none: 2")
}

// Requests count by the route that carried them (its configured name, or its index) and
// by the identity of the endpoint that answered ("unmeshed" without one).
func TestRecordByRouteAndIdentity(t *testing.T) {
	m := telemetry.New()
	table, err := router.Build(&api.Snapshot{Version: 1, Services: []*api.Service{{Namespace: "shop", Name: "web", Ports: []*api.ServicePort{{Port: 80, Routes: []*api.Route{
		{Name: "api", Matches: []*api.HTTPMatch{{PathRegex: "/api"}}, Backends: []*api.Backend{{Service: "web", Weight: 1, Endpoints: []*api.Endpoint{{Ip: "10.0.0.1", Port: 8080}}}}},
		{Backends: []*api.Backend{{Service: "web-v2", Weight: 1, Endpoints: []*api.Endpoint{{Ip: "10.0.0.3", Port: 8080, Identity: "spiffe://cluster.local/ns/shop/sa/web-v2", ProxyPort: 15006}}}}},
	}}}}}}, "shop", "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	port := resolve(t, table, "web")
	api, rest := port.Routes()[0], port.Routes()[1]
	d := m.Destination(port)
	d.Record(api, &api.Backends()[0].Endpoints()[0].Endpoint, 200, telemetry.Success, time.Millisecond)
	d.Record(rest, &rest.Backends()[0].Endpoints()[0].Endpoint, 200, telemetry.Success, time.Millisecond)
	d.Record(rest, &rest.Backends()[0].Endpoints()[0].Endpoint, 200, telemetry.Success, time.Millisecond)
	const web = "code_class=2xx,direction=outbound,"
	checkSeries(t, m, "braid_proxy_requests_total",
		web+"dst_identity=unmeshed,dst_port=80,dst_service=shop/web,result=success,route=api,status_code=200: 1",
		web+"dst_identity=spiffe://cluster.local/ns/shop/sa/web-v2,dst_port=80,dst_service=shop/web,result=success,route=1,status_code=200: 2")
}

// A port's identity labels are bounded: past MaxIdentityLabels, identities count as
// "other". (They come from the configuration, but a backend may have many.)
func TestIdentityLabelsAreBounded(t *testing.T) {
	m := telemetry.New()
	table := build(t, 1, "shop/web")
	port := resolve(t, table, "web")
	d := m.Destination(port)
	for i := range telemetry.MaxIdentityLabels + 5 {
		ep := &router.Endpoint{Identity: fmt.Sprintf("spiffe://cluster.local/ns/shop/sa/a%d", i)}
		d.Record(port.Routes()[0], ep, 200, telemetry.Success, time.Millisecond)
		d.Record(port.Routes()[0], ep, 200, telemetry.Success, time.Millisecond)
	}
	got := series(t, m, "braid_proxy_response_latency_seconds")
	if len(got) != telemetry.MaxIdentityLabels+1 {
		t.Errorf("%d latency series, want %d identities and other:\n%s", len(got), telemetry.MaxIdentityLabels, strings.Join(got, "\n"))
	}
	if !slices.Contains(got, "direction=outbound,dst_identity=other,dst_port=80,dst_service=shop/web,route=0: 10") {
		t.Errorf("no series of the 5 identities past the bound, 2 requests each:\n%s", strings.Join(got, "\n"))
	}
}

// A request finds its destination by the *router.Port it resolved to; the ports of later
// tables for the same Service port share its series.
func TestDestinationIsPerServicePort(t *testing.T) {
	m := telemetry.New()
	t1 := build(t, 1, "shop/web", "other/api")
	web := m.Destination(resolve(t, t1, "web"))
	if again := m.Destination(resolve(t, t1, "web.shop:80")); again != web {
		t.Error("two lookups of the same port gave different destinations")
	}
	if other := m.Destination(resolve(t, t1, "web:8080")); other == web {
		t.Error("ports 80 and 8080 share a destination")
	}
	if other := m.Destination(resolve(t, t1, "api.other")); other == web {
		t.Error("two services share a destination")
	}
	t2 := build(t, 2, "shop/web")
	m.ConfigApplied(t2)
	if again := m.Destination(resolve(t, t2, "web")); again != web {
		t.Error("the same Service port in a new table has a new destination: its series would restart")
	}
	unknown := m.Destination(nil)
	if again := m.Destination(nil); again != unknown {
		t.Error("unknown destinations differ")
	}
}

// A Service port the configuration no longer has loses its series, so that the number of
// series follows the configuration rather than growing forever.
func TestConfigAppliedForgetsRemovedPorts(t *testing.T) {
	m := telemetry.New()
	t1 := build(t, 1, "shop/web", "other/api")
	m.ConfigApplied(t1)
	checkSeries(t, m, "braid_proxy_config_version", ": 1")
	web, api := resolve(t, t1, "web"), resolve(t, t1, "api.other")
	m.Destination(web).Record(web.Routes()[0], nil, 200, telemetry.Success, time.Millisecond)
	m.Destination(api).Record(api.Routes()[0], nil, 200, telemetry.Success, time.Millisecond)
	m.Destination(nil).Record(nil, nil, 404, telemetry.ProxyError, time.Millisecond)

	t2 := build(t, 2, "shop/web")
	m.ConfigApplied(t2)
	checkSeries(t, m, "braid_proxy_config_version", ": 2")
	checkSeries(t, m, "braid_proxy_requests_total",
		"code_class=2xx,direction=outbound,dst_identity=none,dst_port=80,dst_service=shop/web,result=success,route=0,status_code=200: 1",
		"code_class=4xx,direction=outbound,dst_identity=none,dst_port=unknown,dst_service=unknown,result=proxy_error,route=none,status_code=404: 1")
	checkSeries(t, m, "braid_proxy_response_latency_seconds",
		"direction=outbound,dst_identity=none,dst_port=80,dst_service=shop/web,route=0: 1",
		"direction=outbound,dst_identity=none,dst_port=unknown,dst_service=unknown,route=none: 1")

	// Back again: it counts from zero.
	t3 := build(t, 3, "shop/web", "other/api")
	m.ConfigApplied(t3)
	api = resolve(t, t3, "api.other")
	m.Destination(api).Record(api.Routes()[0], nil, 500, telemetry.Failure, time.Millisecond)
	checkSeries(t, m, "braid_proxy_requests_total",
		"code_class=2xx,direction=outbound,dst_identity=none,dst_port=80,dst_service=shop/web,result=success,route=0,status_code=200: 1",
		"code_class=4xx,direction=outbound,dst_identity=none,dst_port=unknown,dst_service=unknown,result=proxy_error,route=none,status_code=404: 1",
		"code_class=5xx,direction=outbound,dst_identity=none,dst_port=80,dst_service=other/api,result=failure,route=0,status_code=500: 1")
}

// A route or an endpoint identity the port no longer has loses its series on the next
// configuration; those the port keeps go on counting.
func TestConfigAppliedForgetsRemovedRoutesAndIdentities(t *testing.T) {
	m := telemetry.New()
	t1 := build(t, 1, "shop/web")
	m.ConfigApplied(t1)
	port := resolve(t, t1, "web")
	meshed, unmeshed := endpoints(t, port)
	d := m.Destination(port)
	d.Record(port.Routes()[0], meshed, 200, telemetry.Success, time.Millisecond)
	d.Record(port.Routes()[0], unmeshed, 200, telemetry.Success, time.Millisecond)

	// The same port, its route renamed and its meshed endpoint gone.
	t2, err := router.Build(&api.Snapshot{Version: 2, Services: []*api.Service{{Namespace: "shop", Name: "web", Ports: []*api.ServicePort{
		{Port: 80, Routes: []*api.Route{{Name: "renamed", Backends: []*api.Backend{{Service: "web", Weight: 1, Endpoints: []*api.Endpoint{{Ip: "10.0.0.2", Port: 8080}}}}}}},
	}}}}, "shop", "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	m.ConfigApplied(t2)
	checkSeries(t, m, "braid_proxy_response_latency_seconds")
	port = resolve(t, t2, "web")
	m.Destination(port).Record(port.Routes()[0], &port.Routes()[0].Backends()[0].Endpoints()[0].Endpoint, 200, telemetry.Success, time.Millisecond)
	checkSeries(t, m, "braid_proxy_response_latency_seconds",
		"direction=outbound,dst_identity=unmeshed,dst_port=80,dst_service=shop/web,route=renamed: 1")

	// A configuration that keeps the route and the endpoint keeps the series.
	t3, err := router.Build(&api.Snapshot{Version: 3, Services: []*api.Service{{Namespace: "shop", Name: "web", Ports: []*api.ServicePort{
		{Port: 80, Routes: []*api.Route{{Name: "renamed", Backends: []*api.Backend{{Service: "web", Weight: 1, Endpoints: []*api.Endpoint{{Ip: "10.0.0.2", Port: 8080}}}}}}},
	}}}}, "shop", "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	m.ConfigApplied(t3)
	checkSeries(t, m, "braid_proxy_response_latency_seconds",
		"direction=outbound,dst_identity=unmeshed,dst_port=80,dst_service=shop/web,route=renamed: 1")
}

func TestConfigRejected(t *testing.T) {
	m := telemetry.New()
	checkSeries(t, m, "braid_proxy_config_rejections_total", ": 0")
	checkSeries(t, m, "braid_proxy_config_version", ": 0")
	m.ConfigRejected()
	m.ConfigRejected()
	checkSeries(t, m, "braid_proxy_config_rejections_total", ": 2")
}

// A nil *Metrics records nothing, and does not fail.
func TestNilMetrics(t *testing.T) {
	var m *telemetry.Metrics
	m.ConfigApplied(build(t, 1, "shop/web"))
	m.ConfigRejected()
	m.Destination(nil).Record(nil, nil, 200, telemetry.Success, time.Millisecond)
	m.DeniedTCP(nil)
}

func TestRuntimeMetrics(t *testing.T) {
	m := telemetry.New()
	if got := series(t, m, "go_goroutines"); len(got) != 1 {
		t.Errorf("go_goroutines: %v, want one sample", got)
	}
	if got := series(t, m, "process_resident_memory_bytes"); len(got) != 1 {
		t.Errorf("process_resident_memory_bytes: %v, want one sample", got)
	}
}

// BenchmarkRecord measures what metrics add to a request: finding the destination of
// the port it resolved to, and counting it.
func BenchmarkRecord(b *testing.B) {
	m := telemetry.New()
	table, err := router.Build(&api.Snapshot{Services: []*api.Service{{Namespace: "shop", Name: "web", Ports: []*api.ServicePort{{Port: 80}}}}}, "shop", "cluster.local")
	if err != nil {
		b.Fatal(err)
	}
	port, err := table.Resolve("web")
	if err != nil {
		b.Fatal(err)
	}
	route := &router.Route{Label: "0"}
	ep := &router.Endpoint{Identity: "spiffe://cluster.local/ns/shop/sa/web"}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Destination(port).Record(route, ep, 200, telemetry.Success, 300*time.Microsecond)
		}
	})
}

// Status codes label requests by number, and anything outside 100–599 (which only a
// broken application could answer) shares one label.
func TestStatusLabelsAreBounded(t *testing.T) {
	for status, want := range map[int]string{200: "200", 599: "599", 100: "100", 0: "other", 99: "other", 600: "other", 1000: "other"} {
		if got := telemetry.StatusLabel(status); got != want {
			t.Errorf("StatusLabel(%d) = %q, want %q", status, got, want)
		}
	}
}
