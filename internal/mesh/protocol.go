package mesh

import (
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/braidmesh/braid/proxy/api"
)

// OpaquePortsAnnotation on a Service lists ports (comma-separated) whose traffic the
// proxies carry as opaque TCP, never parsed: for protocols whose server speaks first.
const OpaquePortsAnnotation = "braid.dev/opaque-ports"

// defaultOpaquePorts are the well-known ports of server-speaks-first protocols (SMTP,
// MySQL, PostgreSQL, Redis, memcached, NATS, Elasticsearch transport): detection would
// wait for a client that never speaks first, so they are opaque unless declared otherwise.
var defaultOpaquePorts = map[int32]bool{25: true, 587: true, 3306: true, 4222: true, 5432: true, 6379: true, 9300: true, 11211: true}

// OpaquePorts returns the ports a Service declares opaque in its annotation.
func OpaquePorts(svc *corev1.Service) map[int32]bool {
	out := map[int32]bool{}
	for _, f := range strings.Split(svc.Annotations[OpaquePortsAnnotation], ",") {
		if n, err := strconv.ParseUint(strings.TrimSpace(f), 10, 16); err == nil && n > 0 {
			out[int32(n)] = true
		}
	}
	return out
}

// PortProtocol decides how proxies carry a Service port: by its appProtocol when it names
// one (http, h2c, grpc, tcp…), as opaque TCP when the Service's annotation or the port's
// well-known number says so, and by detection otherwise.
func PortProtocol(p corev1.ServicePort, opaque map[int32]bool) api.Protocol {
	if p.AppProtocol != nil {
		switch strings.ToLower(strings.TrimPrefix(*p.AppProtocol, "kubernetes.io/")) {
		case "http", "http1", "http/1.1":
			return api.Protocol_PROTOCOL_HTTP1
		case "h2c", "http2", "grpc", "grpc-web":
			return api.Protocol_PROTOCOL_HTTP2
		case "tcp", "opaque", "mysql", "postgresql", "redis", "mongodb", "smtp":
			return api.Protocol_PROTOCOL_OPAQUE
		}
	}
	if opaque[p.Port] || (defaultOpaquePorts[p.Port] && p.AppProtocol == nil) {
		return api.Protocol_PROTOCOL_OPAQUE
	}
	return api.Protocol_PROTOCOL_DETECT
}
