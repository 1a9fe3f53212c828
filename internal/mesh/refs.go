package mesh

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Reasons of a TrafficSplit's ResolvedRefs condition.
const (
	ReasonResolvedRefs       = "ResolvedRefs"
	ReasonBackendNotFound    = "BackendNotFound"
	ReasonBackendLacksPort   = "BackendLacksPort"
	ReasonRouteGroupNotFound = "RouteGroupNotFound"
)

// RefsVerdict says whether a split's backends resolve. LacksPort names each backend that
// misses a root port, with the ports it misses; those backends get no traffic on them.
type RefsVerdict struct {
	Resolved  bool
	Reason    string
	Message   string
	LacksPort []string
}

// CheckRefs resolves a split's backend Services against its root, and the HTTPRouteGroups
// it matches on. services maps each backend name to its Service, or to nil when it does
// not exist; groups says which named groups exist. A missing backend with
// weight 0 is fine (the documented rollout creates the split before the canary Service);
// a missing backend with a weight gets a 503 for its share, and a backend without one of
// the root's ports is left out of that port (SMI).
func CheckRefs(s Split, root *corev1.Service, services map[string]*corev1.Service, groups map[string]bool) RefsVerdict {
	var missing, waiting, lacks []string
	for _, b := range s.Backends {
		svc := services[b.Service]
		if svc == nil {
			if b.MilliWeight > 0 {
				missing = append(missing, b.Service)
			} else {
				waiting = append(waiting, b.Service)
			}
			continue
		}
		if ports := missingPorts(root, svc); len(ports) > 0 {
			lacks = append(lacks, fmt.Sprintf("%s (lacks %s)", b.Service, strings.Join(ports, ", ")))
		}
	}
	v := RefsVerdict{Resolved: true, Reason: ReasonResolvedRefs, LacksPort: lacks}
	var notes []string
	var noGroup []string
	for _, g := range s.Matches {
		if !groups[g] {
			noGroup = append(noGroup, g)
		}
	}
	if len(noGroup) > 0 {
		v.Resolved, v.Reason = false, ReasonRouteGroupNotFound
		notes = append(notes, fmt.Sprintf("HTTPRouteGroups not found: %s; until they exist their matches select nothing, so those requests go to root service %s unsplit",
			strings.Join(noGroup, ", "), s.Root))
	}
	if len(missing) > 0 {
		if v.Resolved {
			v.Resolved, v.Reason = false, ReasonBackendNotFound
		}
		notes = append(notes, fmt.Sprintf("backend services not found: %s; requests drawn for them get 503 until they exist", strings.Join(missing, ", ")))
	}
	if len(lacks) > 0 {
		if v.Resolved {
			v.Resolved, v.Reason = false, ReasonBackendLacksPort
		}
		notes = append(notes, fmt.Sprintf("backends without a port of root service %s get no traffic on that port: %s", s.Root, strings.Join(lacks, "; ")))
	}
	if len(waiting) > 0 {
		notes = append(notes, fmt.Sprintf("backend services with weight 0 that do not exist yet: %s", strings.Join(waiting, ", ")))
	}
	if len(notes) == 0 {
		notes = append(notes, "every backend service exists and exposes the root's ports")
	}
	v.Message = strings.Join(notes, ". ")
	return v
}

// missingPorts lists the root's TCP ports that backend does not expose.
func missingPorts(root, backend *corev1.Service) []string {
	if root == nil {
		return nil
	}
	var out []string
	for _, p := range root.Spec.Ports {
		if (p.Protocol == "" || p.Protocol == corev1.ProtocolTCP) && !hasPort(backend, p.Port) {
			out = append(out, fmt.Sprintf("port %d", p.Port))
		}
	}
	return slices.Compact(out)
}
