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
