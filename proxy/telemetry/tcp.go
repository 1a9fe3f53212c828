package telemetry

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/braidmesh/braid/proxy/router"
)

// Passthrough is the dst_service and dst_port of TCP connections to destinations outside
// the mesh, which the proxy forwards unchanged: their addresses would make the labels
// unbounded.
const Passthrough = "passthrough"

// tcpMetrics count the connections the proxy forwards as opaque TCP.
type tcpMetrics struct {
	opened, closed, sent, received, denied *prometheus.CounterVec
}

func newTCPMetrics() tcpMetrics {
	labels := []string{"direction", "dst_service", "dst_port"}
	vec := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	}
	return tcpMetrics{
		opened: vec("braid_proxy_tcp_connections_opened_total",
			"TCP connections the proxy forwarded as opaque bytes, by destination Service port (passthrough: outside the mesh)."),
		closed: vec("braid_proxy_tcp_connections_closed_total",
			"Opaque TCP connections that ended, by destination Service port; those that failed to connect count too."),
		sent: vec("braid_proxy_tcp_sent_bytes_total",
			"Bytes of opaque TCP connections from the client to the destination, by destination Service port."),
		received: vec("braid_proxy_tcp_received_bytes_total",
			"Bytes of opaque TCP connections from the destination to the client, by destination Service port."),
		denied: vec("braid_proxy_tcp_connections_denied_total",
			"Opaque TCP connections the proxy closed at once because its workload may not reach the Service, by destination Service port."),
	}
}

func (t *tcpMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{t.opened, t.closed, t.sent, t.received, t.denied}
}

// forget deletes the series of a destination.
func (t *tcpMetrics) forget(labels prometheus.Labels) {
	for _, v := range []*prometheus.CounterVec{t.opened, t.closed, t.sent, t.received, t.denied} {
		v.DeletePartialMatch(labels)
	}
}

// TCPConn records one opaque TCP connection. A nil *TCPConn records nothing.
type TCPConn struct {
	closed, sent, received prometheus.Counter
}

// OpenTCP counts a new opaque TCP connection to a Service port (nil: a passthrough
// connection to a destination outside the mesh) and returns its recorder.
func (m *Metrics) OpenTCP(port *router.Port) *TCPConn {
	if m == nil {
		return nil
	}
	labels := prometheus.Labels{"direction": DirectionOutbound, "dst_service": Passthrough, "dst_port": Passthrough}
	if port != nil {
		// The Service port's Destination, so that its series go when the port does.
		labels = m.Destination(port).labels
	}
	m.tcp.opened.With(labels).Inc()
	return &TCPConn{closed: m.tcp.closed.With(labels), sent: m.tcp.sent.With(labels), received: m.tcp.received.With(labels)}
}

// DeniedTCP counts an opaque TCP connection to a Service port the workload may not
// reach, which the proxy closed without dialing anything. It counts as opened and closed
// too, like every connection the proxy could not forward.
func (m *Metrics) DeniedTCP(port *router.Port) {
	if m == nil {
		return
	}
	m.OpenTCP(port).Closed()
	m.tcp.denied.With(m.Destination(port).labels).Inc()
}

// Sent counts n bytes from the client to the destination.
func (c *TCPConn) Sent(n int) {
	if c != nil && n > 0 {
		c.sent.Add(float64(n))
	}
}

// Received counts n bytes from the destination to the client.
func (c *TCPConn) Received(n int) {
	if c != nil && n > 0 {
		c.received.Add(float64(n))
	}
}

// Closed counts the end of the connection; call it once.
func (c *TCPConn) Closed() {
	if c != nil {
		c.closed.Inc()
	}
}
