package inject

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	braidv1alpha1 "github.com/braidmesh/braid/api/v1alpha1"
)

// Default proxy resources, when neither the MeshConfig nor an annotation sets them.
var (
	DefaultCPURequest    = resource.MustParse("10m")
	DefaultMemoryRequest = resource.MustParse("32Mi")
	DefaultMemoryLimit   = resource.MustParse("256Mi")
)

// settings are the pod's annotations, parsed and checked.
type settings struct {
	// The init container's lists, comma-separated, normalised; empty when none.
	skipInboundPorts, skipOutboundPorts, skipOutboundCIDRs string
	resources                                              corev1.ResourceRequirements
}

// parseAnnotations reads the pod's braid.dev/ annotations; problem names the first that
// does not parse, and is empty when all do.
func parseAnnotations(ann map[string]string, mesh *braidv1alpha1.MeshConfigSpec) (s settings, problem string) {
	inbound, err := parsePorts(ann[AnnotationSkipInboundPorts])
	if err != nil {
		return s, annotationProblem(AnnotationSkipInboundPorts, ann, err)
	}
	// The admin port is never redirected (the kubelet probes it), nor is the inbound
	// listener itself.
	s.skipInboundPorts = joinPorts(append([]int{AdminPort, InboundPort}, inbound...))
	outbound, err := parsePorts(ann[AnnotationSkipOutboundPorts])
	if err != nil {
		return s, annotationProblem(AnnotationSkipOutboundPorts, ann, err)
	}
	s.skipOutboundPorts = joinPorts(outbound)
	if s.skipOutboundCIDRs, err = parseCIDRs(ann[AnnotationSkipOutboundCIDRs]); err != nil {
		return s, annotationProblem(AnnotationSkipOutboundCIDRs, ann, err)
	}
	s.resources, problem = proxyResources(ann, mesh)
	return s, problem
}

func annotationProblem(key string, ann map[string]string, err error) string {
	return fmt.Sprintf("annotation %s: %q: %v", key, ann[key], err)
}

// parsePorts parses a comma-separated list of ports, as braid-init does.
func parsePorts(s string) ([]int, error) {
	var out []int
	for _, f := range splitList(s) {
		n, err := strconv.ParseUint(f, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("%q is not a port (1-65535)", f)
		}
		out = append(out, int(n))
	}
	return out, nil
}

// joinPorts returns ports sorted, without duplicates, comma-separated.
func joinPorts(ports []int) string {
	slices.Sort(ports)
	ports = slices.Compact(ports)
	parts := make([]string, len(ports))
	for i, p := range ports {
		parts[i] = strconv.Itoa(p)
	}
	return strings.Join(parts, ",")
}

// parseCIDRs parses a comma-separated list of networks or addresses, as braid-init
// does, and returns it normalised (an address as a one-host network, host bits cleared).
func parseCIDRs(s string) (string, error) {
	var out []string
	for _, f := range splitList(s) {
		p, err := netip.ParsePrefix(f)
		if err != nil {
			addr, aerr := netip.ParseAddr(f)
			if aerr != nil || addr.Zone() != "" {
				return "", fmt.Errorf("%q is not a network (10.0.0.0/8, fd00::/8) or an address", f)
			}
			p = netip.PrefixFrom(addr, addr.BitLen())
		}
		if p.Addr().Is4In6() {
			return "", fmt.Errorf("%q: give IPv4 networks in IPv4 form", f)
		}
		out = append(out, p.Masked().String())
	}
	return strings.Join(slices.Compact(out), ","), nil
}

func splitList(s string) []string {
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// proxyResources returns the MeshConfig's proxy resources (or the defaults) with the pod's
// annotations applied over them.
func proxyResources(ann map[string]string, mesh *braidv1alpha1.MeshConfigSpec) (corev1.ResourceRequirements, string) {
	var r corev1.ResourceRequirements
	if mesh != nil && mesh.Proxy.Resources != nil {
		r = *mesh.Proxy.Resources.DeepCopy()
	} else {
		r = corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: DefaultCPURequest, corev1.ResourceMemory: DefaultMemoryRequest},
			Limits:   corev1.ResourceList{corev1.ResourceMemory: DefaultMemoryLimit},
		}
	}
	overrides := []struct {
		key  string
		list *corev1.ResourceList
		name corev1.ResourceName
	}{
		{AnnotationProxyCPURequest, &r.Requests, corev1.ResourceCPU},
		{AnnotationProxyCPULimit, &r.Limits, corev1.ResourceCPU},
		{AnnotationProxyMemoryRequest, &r.Requests, corev1.ResourceMemory},
		{AnnotationProxyMemoryLimit, &r.Limits, corev1.ResourceMemory},
	}
	annotated := false
	for _, o := range overrides {
		v, ok := ann[o.key]
		if !ok {
			continue
		}
		q, err := resource.ParseQuantity(v)
		if err != nil || q.Sign() <= 0 {
			return r, fmt.Sprintf("annotation %s: %q is not a positive quantity", o.key, v)
		}
		if *o.list == nil {
			*o.list = corev1.ResourceList{}
		}
		(*o.list)[o.name] = q
		annotated = true
	}
	if annotated {
		for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			req, hasReq := r.Requests[name]
			limit, hasLimit := r.Limits[name]
			if hasReq && hasLimit && req.Cmp(limit) > 0 {
				return r, fmt.Sprintf("annotations braid.dev/proxy-%s-request and -limit: the request %s is above the limit %s", name, req.String(), limit.String())
			}
		}
	}
	return r, ""
}
