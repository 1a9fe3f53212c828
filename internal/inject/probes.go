package inject

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/braidmesh/braid/proxy/admin"
)

// probeSlots are a container's probes by kind, with the JSON field each is patched at.
func probeSlots(c *corev1.Container) []struct {
	kind, field string
	probe       **corev1.Probe
} {
	return []struct {
		kind, field string
		probe       **corev1.Probe
	}{
		{admin.ProbeLiveness, "livenessProbe", &c.LivenessProbe},
		{admin.ProbeReadiness, "readinessProbe", &c.ReadinessProbe},
		{admin.ProbeStartup, "startupProbe", &c.StartupProbe},
	}
}

// AppProbe converts a container's probe into the proxy's form. It reports false for the
// probes the injector leaves alone: exec probes (they run inside the container, not over
// the network), probes with an explicit host (they target another machine) and probes on
// a named port the container does not declare (the kubelet fails those anyway).
func AppProbe(c *corev1.Container, p *corev1.Probe) (admin.AppProbe, bool) {
	if p == nil {
		return admin.AppProbe{}, false
	}
	out := admin.AppProbe{TimeoutSeconds: p.TimeoutSeconds}
	switch {
	case p.HTTPGet != nil:
		port, ok := containerPort(c, p.HTTPGet.Port)
		if !ok || p.HTTPGet.Host != "" {
			return admin.AppProbe{}, false
		}
		h := &admin.HTTPGetProbe{Path: p.HTTPGet.Path, Port: port, Scheme: string(p.HTTPGet.Scheme)}
		for _, hdr := range p.HTTPGet.HTTPHeaders {
			h.HTTPHeaders = append(h.HTTPHeaders, admin.HTTPHeader{Name: hdr.Name, Value: hdr.Value})
		}
		out.HTTPGet = h
	case p.GRPC != nil:
		g := &admin.GRPCProbe{Port: p.GRPC.Port}
		if p.GRPC.Service != nil {
			g.Service = *p.GRPC.Service
		}
		out.GRPC = g
	case p.TCPSocket != nil:
		port, ok := containerPort(c, p.TCPSocket.Port)
		if !ok || p.TCPSocket.Host != "" {
			return admin.AppProbe{}, false
		}
		out.TCPSocket = &admin.TCPSocketProbe{Port: port}
	default:
		return admin.AppProbe{}, false
	}
	return out, true
}

// containerPort resolves a probe's port: a number, or the name of one of c's ports.
func containerPort(c *corev1.Container, port intstr.IntOrString) (int32, bool) {
	if port.Type == intstr.Int {
		return port.IntVal, port.IntVal > 0 && port.IntVal <= 65535
	}
	for _, p := range c.Ports {
		if p.Name == port.StrVal {
			return p.ContainerPort, true
		}
	}
	return 0, false
}

// rewrittenProbe is p sent to the proxy's admin port instead, timing kept.
func rewrittenProbe(container, kind string, p *corev1.Probe) *corev1.Probe {
	return &corev1.Probe{
		ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
			Path:   admin.AppProbePathPrefix + container + "/" + kind,
			Port:   intstr.FromInt32(AdminPort),
			Scheme: corev1.URISchemeHTTP,
		}},
		InitialDelaySeconds:           p.InitialDelaySeconds,
		TimeoutSeconds:                p.TimeoutSeconds,
		PeriodSeconds:                 p.PeriodSeconds,
		SuccessThreshold:              p.SuccessThreshold,
		FailureThreshold:              p.FailureThreshold,
		TerminationGracePeriodSeconds: p.TerminationGracePeriodSeconds,
	}
}

// probed reports whether the kubelet probes c: a regular container, or an init container
// that is a native sidecar (only those may have probes).
func probed(c *corev1.Container, init bool) bool {
	return !init || (c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways)
}
