package mesh

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func svc(name string, ports ...int32) *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name}}
	for _, p := range ports {
		s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Port: p, Protocol: corev1.ProtocolTCP})
	}
	return s
}

func TestCheckBackends(t *testing.T) {
	root := svc("reviews", 8080)
	split := func(weights ...int64) Split {
		s := Split{Namespace: "shop", Name: "reviews", Root: "reviews"}
		for i, w := range weights {
			s.Backends = append(s.Backends, SplitBackend{Service: []string{"v1", "v2", "x"}[i], MilliWeight: w})
		}
		return s
	}
	cases := []struct {
		name     string
		split    Split
		services map[string]*corev1.Service
		resolved bool
		reason   string
		mention  []string
	}{
		{"all resolve", split(1, 1), map[string]*corev1.Service{"v1": svc("v1", 8080), "v2": svc("v2", 8080, 9090)}, true, ReasonResolvedRefs, nil},
		{"a weight-0 backend may not exist yet", split(1000, 0), map[string]*corev1.Service{"v1": svc("v1", 8080)}, true, ReasonResolvedRefs,
			[]string{"v2", "weight 0"}},
		{"a missing backend with weight", split(1000, 1000), map[string]*corev1.Service{"v1": svc("v1", 8080)}, false, ReasonBackendNotFound,
			[]string{"v2", "503"}},
		{"a backend without the root port", split(1, 1, 1), map[string]*corev1.Service{"v1": svc("v1", 8080), "v2": svc("v2", 1024), "x": svc("x", 8080)},
			false, ReasonBackendLacksPort, []string{"v2 (lacks port 8080)"}},
		{"missing wins over port", split(1, 1, 1), map[string]*corev1.Service{"v1": svc("v1", 1024)}, false, ReasonBackendNotFound,
			[]string{"v1 (lacks port 8080)", "not found: v2, x"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := CheckBackends(tc.split, root, tc.services)
			if v.Resolved != tc.resolved || v.Reason != tc.reason {
				t.Fatalf("got %t %s (%s), want %t %s", v.Resolved, v.Reason, v.Message, tc.resolved, tc.reason)
			}
			for _, m := range tc.mention {
				if !strings.Contains(v.Message, m) {
					t.Errorf("message %q should mention %q", v.Message, m)
				}
			}
		})
	}
}
