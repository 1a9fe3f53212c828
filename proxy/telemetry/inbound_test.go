package telemetry_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/braidmesh/braid/proxy/telemetry"
)

const web = "spiffe://cluster.local/ns/shop/sa/web"

// Inbound requests count by the client's identity ("plaintext" without one), the
// application port, the status and the result; the histogram by identity and port.
func TestInboundRequest(t *testing.T) {
	m := telemetry.New()
	in := m.Inbound()
	for range 2 {
		in.Request(web, 8080, 200, telemetry.Success, time.Millisecond)
	}
	in.Request(web, 8080, 503, telemetry.Failure, time.Millisecond)
	in.Request(web, 8080, 403, telemetry.Denied, time.Millisecond)
	in.Request(web, 9090, 200, telemetry.Success, time.Millisecond)
	in.Request("", 8080, 204, telemetry.Success, time.Millisecond)
	checkSeries(t, m, "braid_proxy_inbound_requests_total",
		"code_class=2xx,dst_port=8080,result=success,src_identity="+web+",status_code=200: 2",
		"code_class=5xx,dst_port=8080,result=failure,src_identity="+web+",status_code=503: 1",
		"code_class=4xx,dst_port=8080,result=denied,src_identity="+web+",status_code=403: 1",
		"code_class=2xx,dst_port=9090,result=success,src_identity="+web+",status_code=200: 1",
		"code_class=2xx,dst_port=8080,result=success,src_identity=plaintext,status_code=204: 1",
	)
	checkSeries(t, m, "braid_proxy_inbound_response_latency_seconds",
		"dst_port=8080,src_identity="+web+": 4",
		"dst_port=9090,src_identity="+web+": 1",
		"dst_port=8080,src_identity=plaintext: 1",
	)
	in.Connection(web, 5432, telemetry.Success)
	in.Connection("", 5432, telemetry.Denied)
	checkSeries(t, m, "braid_proxy_inbound_tcp_connections_total",
		"dst_port=5432,result=success,src_identity="+web+": 1",
		"dst_port=5432,result=denied,src_identity=plaintext: 1",
	)
}

// A request's target port comes from its client: past 64 distinct ports, the others
// share the label "other", for requests and connections alike.
func TestInboundPortLabelsAreBounded(t *testing.T) {
	m := telemetry.New()
	in := m.Inbound()
	for p := range uint32(70) {
		in.Request(web, 10000+p, 200, telemetry.Success, time.Millisecond)
	}
	in.Request(web, 10069, 200, telemetry.Success, time.Millisecond)
	in.Request(web, 10000, 200, telemetry.Success, time.Millisecond)
	in.Connection(web, 20000, telemetry.Success)
	got := map[string]bool{}
	for _, s := range series(t, m, "braid_proxy_inbound_requests_total") {
		got[s] = true
	}
	if len(got) != 65 {
		t.Errorf("%d request series, want 64 ports and other", len(got))
	}
	for _, want := range []string{
		"code_class=2xx,dst_port=other,result=success,src_identity=" + web + ",status_code=200: 7",
		"code_class=2xx,dst_port=10000,result=success,src_identity=" + web + ",status_code=200: 2",
		"code_class=2xx,dst_port=10063,result=success,src_identity=" + web + ",status_code=200: 1",
	} {
		if !got[want] {
			t.Errorf("missing %s", want)
		}
	}
	checkSeries(t, m, "braid_proxy_inbound_tcp_connections_total",
		"dst_port=other,result=success,src_identity="+web+": 1")
}

// A client chooses the port it targets: past the bound, requests to ports never seen
// cost nothing more, so the cache of series stays bounded whatever it sends.
func TestInboundPortsPastTheBoundAddNothing(t *testing.T) {
	in := telemetry.New().Inbound()
	for p := range uint32(64) {
		in.Request(web, 10000+p, 200, telemetry.Success, time.Millisecond)
	}
	in.Request(web, 20000, 200, telemetry.Success, time.Millisecond) // the shared series
	next := uint32(30000)
	allocs := testing.AllocsPerRun(200, func() {
		in.Request(web, next, 200, telemetry.Success, time.Millisecond)
		next++
	})
	if allocs != 0 {
		t.Errorf("a request to a new port past the bound allocates %v times, want 0", allocs)
	}
}

func TestNilInbound(_ *testing.T) {
	var in *telemetry.Inbound
	in.Request(web, 80, 200, telemetry.Success, time.Millisecond)
	in.Connection(web, 80, telemetry.Success)
}

// BenchmarkInboundRequest measures what inbound metrics add to a request, from clients
// of a few identities.
func BenchmarkInboundRequest(b *testing.B) {
	in := telemetry.New().Inbound()
	var ids [4]string
	for i := range ids {
		ids[i] = fmt.Sprintf("spiffe://cluster.local/ns/shop/sa/client-%d", i)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		in.Request(ids[i%len(ids)], 8080, 200, telemetry.Success, 300*time.Microsecond)
		i++
	}
}
