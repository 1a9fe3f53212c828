// Package crds checks Braid's CRDs against a real API server: what each served version
// accepts, what it rejects, and that each rejection says what to do instead.
package crds

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/braidmesh/braid/test/harness"
)

var c client.Client

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	env := &envtest.Environment{
		CRDDirectoryPaths: []string{
			filepath.Join(harness.RepoRoot(), "config", "crd", "bases"),
			filepath.Join(harness.RepoRoot(), "config", "crd", "smi"),
		},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := env.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the API server:", err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	if c, err = client.New(cfg, client.Options{}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

type admission struct {
	name string
	obj  map[string]any
	// reject is empty when the object must be accepted, otherwise a part of the message.
	reject string
}

func obj(apiVersion, kind, name string, fields map[string]any) map[string]any {
	o := map[string]any{"apiVersion": apiVersion, "kind": kind, "metadata": map[string]any{"name": name, "namespace": "default"}}
	for k, v := range fields {
		o[k] = v
	}
	return o
}

func split(version, name string, weight any) map[string]any {
	return obj("split.smi-spec.io/"+version, "TrafficSplit", name, map[string]any{"spec": map[string]any{
		"service": "web", "backends": []any{map[string]any{"service": "web-v1", "weight": weight}},
	}})
}

func TestAdmission(t *testing.T) {
	target := func(version string, spec map[string]any) map[string]any {
		return obj("access.smi-spec.io/"+version, "TrafficTarget", "tt-"+version, map[string]any{"spec": spec})
	}
	dest := map[string]any{"kind": "ServiceAccount", "name": "b", "namespace": "default"}
	sources := []any{map[string]any{"kind": "ServiceAccount", "name": "a", "namespace": "default"}}
	rules := []any{map[string]any{"kind": "TCPRoute", "name": "all"}}
	cases := []admission{
		{name: "split v1alpha1 quantity string", obj: split("v1alpha1", "q-string", "500m")},
		{name: "split v1alpha1 integer", obj: split("v1alpha1", "q-int", 100)},
		{name: "split v1alpha1 not a quantity", obj: split("v1alpha1", "q-bad", "lots"), reject: "weight"},
		{name: "split v1alpha2 integer", obj: split("v1alpha2", "i-int", 100)},
		{name: "split v1alpha2 zero", obj: split("v1alpha2", "i-zero", 0)},
		{name: "split v1alpha2 negative", obj: split("v1alpha2", "i-neg", -1), reject: "weight"},
		{name: "split v1alpha2 string", obj: split("v1alpha2", "i-str", "100"), reject: "weight"},
		{name: "split v1alpha4 matches another kind", obj: obj("split.smi-spec.io/v1alpha4", "TrafficSplit", "m-kind", map[string]any{"spec": map[string]any{
			"service": "web", "backends": []any{map[string]any{"service": "web-v1", "weight": 1}},
			"matches": []any{map[string]any{"kind": "TCPRoute", "name": "x"}},
		}}), reject: "kind"},
		{name: "target v1alpha1 is refused with the version to use", obj: obj("access.smi-spec.io/v1alpha1", "TrafficTarget", "tt1", map[string]any{
			"destination": dest, "sources": sources, "specs": []any{map[string]any{"kind": "TCPRoute", "name": "all"}},
		}), reject: "access.smi-spec.io/v1alpha3"},
		{name: "target v1alpha2 without port", obj: target("v1alpha2", map[string]any{"destination": dest, "sources": sources, "rules": rules})},
		{name: "target v1alpha2 with port is refused", obj: obj("access.smi-spec.io/v1alpha2", "TrafficTarget", "tt2p", map[string]any{"spec": map[string]any{
			"destination": map[string]any{"kind": "ServiceAccount", "name": "b", "namespace": "default", "port": 8080}, "sources": sources, "rules": rules,
		}}), reject: "spec.destination.port"},
		{name: "target v1alpha3", obj: target("v1alpha3", map[string]any{"destination": dest, "sources": sources, "rules": rules})},
		{name: "target v1alpha3 without rules", obj: obj("access.smi-spec.io/v1alpha3", "TrafficTarget", "tt3-norules", map[string]any{"spec": map[string]any{
			"destination": dest, "sources": sources,
		}}), reject: "rules"},
		{name: "route group v1alpha2 is refused with the version to use", obj: obj("specs.smi-spec.io/v1alpha2", "HTTPRouteGroup", "hrg2", map[string]any{
			"matches": []any{map[string]any{"name": "m", "pathRegex": "/metrics"}},
		}), reject: "specs.smi-spec.io/v1alpha4"},
		{name: "route group v1alpha4 headers as a list", obj: obj("specs.smi-spec.io/v1alpha4", "HTTPRouteGroup", "hrg-list", map[string]any{"spec": map[string]any{
			"matches": []any{map[string]any{"name": "ff", "headers": []any{map[string]any{"user-agent": ".*Firefox.*"}}}},
		}})},
		{name: "route group v1alpha4 headers as a map", obj: obj("specs.smi-spec.io/v1alpha4", "HTTPRouteGroup", "hrg-map", map[string]any{"spec": map[string]any{
			"matches": []any{map[string]any{"name": "ff", "headers": map[string]any{"user-agent": ".*Firefox.*"}}},
		}})},
		{name: "route group v1alpha4 unknown method", obj: obj("specs.smi-spec.io/v1alpha4", "HTTPRouteGroup", "hrg-method", map[string]any{"spec": map[string]any{
			"matches": []any{map[string]any{"name": "m", "methods": []any{"FETCH"}}},
		}}), reject: "methods"},
		{name: "tcp route v1alpha4 ports", obj: obj("specs.smi-spec.io/v1alpha4", "TCPRoute", "tr", map[string]any{"spec": map[string]any{
			"matches": map[string]any{"ports": []any{8301, 8302}},
		}})},
		{name: "tcp route v1alpha4 port out of range", obj: obj("specs.smi-spec.io/v1alpha4", "TCPRoute", "tr-bad", map[string]any{"spec": map[string]any{
			"matches": map[string]any{"ports": []any{70000}},
		}}), reject: "ports"},
		{name: "udp route v1alpha4", obj: obj("specs.smi-spec.io/v1alpha4", "UDPRoute", "ur", map[string]any{"spec": map[string]any{
			"matches": map[string]any{"ports": []any{8301}},
		}})},
		{name: "mesh config named braid", obj: map[string]any{"apiVersion": "braid.dev/v1alpha1", "kind": "MeshConfig", "metadata": map[string]any{"name": "braid"}}},
		{name: "a second mesh config", obj: map[string]any{"apiVersion": "braid.dev/v1alpha1", "kind": "MeshConfig", "metadata": map[string]any{"name": "other"}}, reject: "named braid"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := c.Create(context.Background(), &unstructured.Unstructured{Object: tc.obj})
			switch {
			case tc.reject == "" && err != nil:
				t.Fatalf("want accepted, got %v", err)
			case tc.reject != "" && err == nil:
				t.Fatalf("want rejected (mentioning %q), but it was accepted", tc.reject)
			case tc.reject != "" && !strings.Contains(err.Error(), tc.reject):
				t.Fatalf("want a rejection mentioning %q, got %v", tc.reject, err)
			}
		})
	}
}
