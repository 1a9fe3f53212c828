package harness

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// TargetRule is a TrafficTarget rule: a kind (HTTPRouteGroup, TCPRoute, UDPRoute), a name and,
// for groups, the matches it admits (all of them when empty).
type TargetRule struct {
	Kind, Name string
	Matches    []string
}

// TrafficTarget is a TrafficTarget in the given apiVersion (access.smi-spec.io/v1alpha2 or
// v1alpha3) admitting the ServiceAccounts sources (of the target's namespace) to
// destination, as kubectl would write it.
func TrafficTarget(apiVersion, namespace, name, destination string, sources []string, rules ...TargetRule) *unstructured.Unstructured {
	srcs := make([]any, 0, len(sources))
	for _, s := range sources {
		srcs = append(srcs, map[string]any{"kind": "ServiceAccount", "name": s, "namespace": namespace})
	}
	rs := make([]any, 0, len(rules))
	for _, r := range rules {
		m := map[string]any{"kind": r.Kind, "name": r.Name}
		if len(r.Matches) > 0 {
			ms := make([]any, 0, len(r.Matches))
			for _, x := range r.Matches {
				ms = append(ms, x)
			}
			m["matches"] = ms
		}
		rs = append(rs, m)
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": apiVersion, "kind": "TrafficTarget",
		"metadata": map[string]any{"namespace": namespace, "name": name},
		"spec": map[string]any{
			"destination": map[string]any{"kind": "ServiceAccount", "name": destination, "namespace": namespace},
			"sources":     srcs, "rules": rs,
		},
	}}
}

// TCPRoute is a specs.smi-spec.io/v1alpha4 TCPRoute admitting ports (every port when none).
func TCPRoute(namespace, name string, ports ...int) *unstructured.Unstructured {
	return l4Route("TCPRoute", namespace, name, ports)
}

// UDPRoute is a specs.smi-spec.io/v1alpha4 UDPRoute admitting ports.
func UDPRoute(namespace, name string, ports ...int) *unstructured.Unstructured {
	return l4Route("UDPRoute", namespace, name, ports)
}

func l4Route(kind, namespace, name string, ports []int) *unstructured.Unstructured {
	ps := make([]any, 0, len(ports))
	for _, p := range ports {
		ps = append(ps, int64(p))
	}
	matches := map[string]any{"name": name}
	if len(ps) > 0 {
		matches["ports"] = ps
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": kind,
		"metadata": map[string]any{"namespace": namespace, "name": name},
		"spec":     map[string]any{"matches": matches},
	}}
}

// HTTPRouteGroup is a specs.smi-spec.io/v1alpha4 HTTPRouteGroup with the given matches
// (name, pathRegex, methods, headers, as the spec writes them).
func HTTPRouteGroup(namespace, name string, matches ...map[string]any) *unstructured.Unstructured {
	ms := make([]any, 0, len(matches))
	for _, m := range matches {
		ms = append(ms, m)
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup",
		"metadata": map[string]any{"namespace": namespace, "name": name},
		"spec":     map[string]any{"matches": ms},
	}}
}

// WaitForCondition waits until obj (read through obj's apiVersion and kind) carries a
// condition of type typ for its current generation with the given status and reason, and
// returns it.
func WaitForCondition(ctx context.Context, c client.Client, obj *unstructured.Unstructured, typ string, status metav1.ConditionStatus, reason string) (metav1.Condition, error) {
	var last metav1.Condition
	for {
		got := &unstructured.Unstructured{}
		got.SetGroupVersionKind(obj.GroupVersionKind())
		err := c.Get(ctx, client.ObjectKeyFromObject(obj), got)
		if err == nil {
			if cond := meta.FindStatusCondition(conditionsOf(got), typ); cond != nil && cond.ObservedGeneration == got.GetGeneration() {
				last = *cond
				if cond.Status == status && cond.Reason == reason {
					return *cond, nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return last, fmt.Errorf("waiting for %s=%s %s on %s %s (last: %s %s %q): %w",
				typ, status, reason, obj.GetKind(), obj.GetName(), last.Status, last.Reason, last.Message, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func conditionsOf(u *unstructured.Unstructured) []metav1.Condition {
	raw, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	out := make([]metav1.Condition, 0, len(raw))
	for _, r := range raw {
		m, ok := r.(map[string]any)
		if !ok {
			continue
		}
		var c metav1.Condition
		if err := runtimeConvert(m, &c); err == nil {
			out = append(out, c)
		}
	}
	return out
}

func runtimeConvert(m map[string]any, into *metav1.Condition) error {
	return runtime.DefaultUnstructuredConverter.FromUnstructured(m, into)
}
