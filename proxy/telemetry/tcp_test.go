package telemetry_test

import (
	"testing"

	"github.com/braidmesh/braid/proxy/telemetry"
)

// Opaque connections count by Service port, or as passthrough; a Service port's series go
// when the port does, passthrough's stay.
func TestTCPConnections(t *testing.T) {
	m := telemetry.New()
	t1 := build(t, 1, "shop/web", "other/api")
	m.ConfigApplied(t1)
	c := m.OpenTCP(resolve(t, t1, "api.other"))
	c.Sent(10)
	c.Received(32)
	c.Closed()
	p := m.OpenTCP(nil)
	p.Sent(3)
	checkSeries(t, m, "braid_proxy_tcp_connections_opened_total",
		"direction=outbound,dst_port=80,dst_service=other/api: 1",
		"direction=outbound,dst_port=passthrough,dst_service=passthrough: 1")
	checkSeries(t, m, "braid_proxy_tcp_connections_closed_total",
		"direction=outbound,dst_port=80,dst_service=other/api: 1",
		"direction=outbound,dst_port=passthrough,dst_service=passthrough: 0")
	checkSeries(t, m, "braid_proxy_tcp_sent_bytes_total",
		"direction=outbound,dst_port=80,dst_service=other/api: 10",
		"direction=outbound,dst_port=passthrough,dst_service=passthrough: 3")
	checkSeries(t, m, "braid_proxy_tcp_received_bytes_total",
		"direction=outbound,dst_port=80,dst_service=other/api: 32",
		"direction=outbound,dst_port=passthrough,dst_service=passthrough: 0")

	m.ConfigApplied(build(t, 2, "shop/web"))
	checkSeries(t, m, "braid_proxy_tcp_connections_opened_total",
		"direction=outbound,dst_port=passthrough,dst_service=passthrough: 1")
}

func TestNilMetricsRecordNoTCP(_ *testing.T) { // nothing to check: it must not panic
	var m *telemetry.Metrics
	c := m.OpenTCP(nil)
	c.Sent(1)
	c.Received(1)
	c.Closed()
}

// A connection to a Service the workload may not reach counts as denied, and as opened
// and closed like every connection the proxy could not forward.
func TestDeniedTCP(t *testing.T) {
	m := telemetry.New()
	t1 := build(t, 1, "shop/web")
	m.ConfigApplied(t1)
	m.DeniedTCP(resolve(t, t1, "web"))
	m.DeniedTCP(resolve(t, t1, "web"))
	const web80 = "direction=outbound,dst_port=80,dst_service=shop/web: 2"
	checkSeries(t, m, "braid_proxy_tcp_connections_denied_total", web80)
	checkSeries(t, m, "braid_proxy_tcp_connections_opened_total", web80)
	checkSeries(t, m, "braid_proxy_tcp_connections_closed_total", web80)
}
