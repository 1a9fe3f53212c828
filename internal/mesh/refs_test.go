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
		groups   map[string]bool
		resolved bool
		reason   string
		mention  []string
	}{
		{"all resolve", split(1, 1), map[string]*corev1.Service{"v1": svc("v1", 8080), "v2": svc("v2", 8080, 9090)}, nil, true, ReasonResolvedRefs, nil},
		{"a weight-0 backend may not exist yet", split(1000, 0), map[string]*corev1.Service{"v1": svc("v1", 8080)}, nil, true, ReasonResolvedRefs,
			[]string{"v2", "weight 0"}},
		{"a missing backend with weight", split(1000, 1000), map[string]*corev1.Service{"v1": svc("v1", 8080)}, nil, false, ReasonBackendNotFound,
			[]string{"v2", "503"}},
		{"a backend without the root port", split(1, 1, 1), map[string]*corev1.Service{"v1": svc("v1", 8080), "v2": svc("v2", 1024), "x": svc("x", 8080)}, nil,
			false, ReasonBackendLacksPort, []string{"v2 (lacks port 8080)"}},
		{"missing wins over port", split(1, 1, 1), map[string]*corev1.Service{"v1": svc("v1", 1024)}, nil, false, ReasonBackendNotFound,
			[]string{"v1 (lacks port 8080)", "not found: v2, x"}},
		{"a missing route group", withMatches(split(1), "firefox", "android"), map[string]*corev1.Service{"v1": svc("v1", 8080)},
			map[string]bool{"android": true}, false, ReasonRouteGroupNotFound, []string{"HTTPRouteGroups not found: firefox", "unsplit"}},
		{"route groups resolve", withMatches(split(1), "firefox"), map[string]*corev1.Service{"v1": svc("v1", 8080)},
			map[string]bool{"firefox": true}, true, ReasonResolvedRefs, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := CheckRefs(tc.split, root, tc.services, tc.groups)
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

func withMatches(s Split, groups ...string) Split {
	s.Matches = groups
	return s
}

func TestCheckRouteGroup(t *testing.T) {
	cases := []struct {
		name    string
		matches []RouteMatch
		ok      bool
		mention []string
	}{
		{"valid", []RouteMatch{{Name: "m", PathRegex: "/api", Methods: []string{"*"}, Headers: map[string]string{"user-agent": ".*Firefox.*"}}}, true, nil},
		{"no matches", nil, true, nil},
		{"bad path regex", []RouteMatch{{Name: "m"}, {Name: "n", PathRegex: "/api/(v1"}}, false, []string{"spec.matches[1].pathRegex"}},
		{"unknown method", []RouteMatch{{Name: "m", Methods: []string{"GET", "FETCH"}}}, false, []string{"spec.matches[0].methods[1]", `"FETCH"`}},
		{"bad header name", []RouteMatch{{Name: "m", Headers: map[string]string{"user agent": "x"}}}, false, []string{`"user agent"`}},
		{"bad header regex", []RouteMatch{{Name: "m", Headers: map[string]string{"cookie": "[a-"}}}, false, []string{"spec.matches[0].headers[cookie]"}},
		{"a Host header match can never match", []RouteMatch{{Name: "m", Headers: map[string]string{"Host": "reviews.*"}}}, false, []string{"spec.matches[0].headers[Host]", "route by Service"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := CheckRouteGroup(RouteGroup{Namespace: "shop", Name: "g", Matches: tc.matches})
			if v.Accepted != tc.ok || (!tc.ok && v.Reason != ReasonInvalidMatch) {
				t.Fatalf("got %+v, want accepted=%t", v, tc.ok)
			}
			for _, m := range tc.mention {
				if !strings.Contains(v.Message, m) {
					t.Errorf("message %q should mention %q", v.Message, m)
				}
			}
		})
	}
}
