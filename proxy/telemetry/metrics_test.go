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
			{Port: 80, Routes: []*api.Route{{Backends: []*api.Backend{{Service: name, Weight: 1}}}}},
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

func TestRecord(t *testing.T) {
	m := telemetry.New()
	table := build(t, 1, "shop/web")
	web := m.Destination(resolve(t, table, "web"))
	for _, status := range []int{200, 200, 204, 301, 404, 101} {
		web.Record(status, telemetry.Success, time.Millisecond)
	}
	web.Record(500, telemetry.Failure, time.Millisecond)
	web.Record(503, telemetry.Failure, time.Millisecond)
	web.Record(200, telemetry.Failure, time.Millisecond)
	web.Record(503, telemetry.ProxyError, time.Millisecond)
	web.Record(502, telemetry.ProxyError, time.Millisecond)
	web.Record(404, telemetry.ProxyError, time.Millisecond)
	unknown := m.Destination(nil)
	unknown.Record(404, telemetry.ProxyError, time.Microsecond)
	unknown.Record(404, telemetry.ProxyError, time.Microsecond)

	const web80 = "direction=outbound,dst_port=80,dst_service=shop/web"
	const unknownDst = "direction=outbound,dst_port=unknown,dst_service=unknown"
	checkSeries(t, m, "braid_proxy_requests_total",
		"code_class=1xx,"+web80+",result=success: 1",
		"code_class=2xx,"+web80+",result=success: 3",
		"code_class=2xx,"+web80+",result=failure: 1",
		"code_class=3xx,"+web80+",result=success: 1",
		"code_class=4xx,"+web80+",result=success: 1",
		"code_class=5xx,"+web80+",result=failure: 2",
		"code_class=5xx,"+web80+",result=proxy_error: 2",
		"code_class=4xx,"+web80+",result=proxy_error: 1",
		"code_class=4xx,"+unknownDst+",result=proxy_error: 2",
	)
	checkSeries(t, m, "braid_proxy_response_latency_seconds", web80+": 12", unknownDst+": 2")
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
	m.Destination(resolve(t, t1, "web")).Record(200, telemetry.Success, time.Millisecond)
	m.Destination(resolve(t, t1, "api.other")).Record(200, telemetry.Success, time.Millisecond)
	m.Destination(nil).Record(404, telemetry.ProxyError, time.Millisecond)

	t2 := build(t, 2, "shop/web")
	m.ConfigApplied(t2)
	checkSeries(t, m, "braid_proxy_config_version", ": 2")
	checkSeries(t, m, "braid_proxy_requests_total",
		"code_class=2xx,direction=outbound,dst_port=80,dst_service=shop/web,result=success: 1",
		"code_class=4xx,direction=outbound,dst_port=unknown,dst_service=unknown,result=proxy_error: 1")
	checkSeries(t, m, "braid_proxy_response_latency_seconds",
		"direction=outbound,dst_port=80,dst_service=shop/web: 1",
		"direction=outbound,dst_port=unknown,dst_service=unknown: 1")

	// Back again: it counts from zero.
	t3 := build(t, 3, "shop/web", "other/api")
	m.ConfigApplied(t3)
	m.Destination(resolve(t, t3, "api.other")).Record(500, telemetry.Failure, time.Millisecond)
	checkSeries(t, m, "braid_proxy_requests_total",
		"code_class=2xx,direction=outbound,dst_port=80,dst_service=shop/web,result=success: 1",
		"code_class=4xx,direction=outbound,dst_port=unknown,dst_service=unknown,result=proxy_error: 1",
		"code_class=5xx,direction=outbound,dst_port=80,dst_service=other/api,result=failure: 1")
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
	m.Destination(nil).Record(200, telemetry.Success, time.Millisecond)
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
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Destination(port).Record(200, telemetry.Success, 300*time.Microsecond)
		}
	})
}
