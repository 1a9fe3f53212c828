package webhooks_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/braidmesh/braid/test/harness"
)

var cp *harness.ControlPlane

// The webhooks run in the operator's manager; the API server calls them through the
// ValidatingWebhookConfiguration in config/webhook, as in a cluster.
func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	cp, err = harness.StartControlPlaneWith(context.Background(), zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.ErrorLevel)),
		harness.Options{Webhooks: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = cp.Stop() }()
	if err := cp.Client.Create(context.Background(), harness.Namespace("hooks")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

func routeGroup(name string, matches ...any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup",
		"metadata": map[string]any{"namespace": "hooks", "name": name},
		"spec":     map[string]any{"matches": matches},
	}}
}

func TestValidation(t *testing.T) {
	cases := []struct {
		name   string
		obj    *unstructured.Unstructured
		reject string // "" when admitted; otherwise part of the denial
	}{
		{"v1alpha1 negative quantity", harness.TrafficSplit("split.smi-spec.io/v1alpha1", "hooks", "neg", "web",
			harness.Weighted{Service: "web-v1", Weight: "-500m"}), "spec.backends[0].weight: -500m is negative"},
		{"a backend listed twice", harness.TrafficSplit("split.smi-spec.io/v1alpha4", "hooks", "dup", "web",
			harness.Weighted{Service: "web-v1", Weight: 1}, harness.Weighted{Service: "web-v1", Weight: 2}), "spec.backends[1].service"},
		{"Flagger linkerd: v1alpha1 canary 0, primary 100", harness.TrafficSplit("split.smi-spec.io/v1alpha1", "hooks", "flagger", "podinfo",
			harness.Weighted{Service: "podinfo-canary", Weight: "0"}, harness.Weighted{Service: "podinfo-primary", Weight: "100"}), ""},
		{"Argo: apex is the stable backend", harness.TrafficSplit("split.smi-spec.io/v1alpha3", "hooks", "argo", "reviews",
			harness.Weighted{Service: "reviews-canary", Weight: 0}, harness.Weighted{Service: "reviews", Weight: 100}), ""},
		{"all weights zero is a condition, not a refusal", harness.TrafficSplit("split.smi-spec.io/v1alpha2", "hooks", "zero", "web",
			harness.Weighted{Service: "web-v1", Weight: 0}), ""},
		{"a path regex that does not compile", routeGroup("badpath", map[string]any{"name": "m", "pathRegex": "/api/(v1"}), "spec.matches[0].pathRegex"},
		{"a header regex that does not compile", routeGroup("badheader",
			map[string]any{"name": "m", "headers": []any{map[string]any{"cookie": "[a-"}}}), "spec.matches[0].headers[cookie]"},
		{"an invalid header name", routeGroup("badname",
			map[string]any{"name": "m", "headers": map[string]any{"user agent": "x"}}), `"user agent"`},
		{"a valid group in the spec's map form", routeGroup("ok",
			map[string]any{"name": "ff", "headers": map[string]any{"user-agent": ".*Firefox.*"}, "pathRegex": "/api", "methods": []any{"GET", "*"}}), ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			err := cp.Client.Create(ctx, tc.obj)
			switch {
			case tc.reject == "" && err != nil:
				t.Fatalf("want admitted, got %v", err)
			case tc.reject != "" && err == nil:
				t.Fatalf("want refused mentioning %q, but it was admitted", tc.reject)
			case tc.reject != "" && !strings.Contains(err.Error(), tc.reject):
				t.Fatalf("want a refusal mentioning %q, got %v", tc.reject, err)
			case tc.reject != "" && !strings.Contains(err.Error(), "denied the request"):
				t.Fatalf("want the webhook's denial, not a schema error: %v", err)
			}
		})
	}
}

// An update is validated too: a merge patch (as Argo Rollouts writes) to a negative weight.
func TestValidationOnUpdate(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	split := harness.TrafficSplit("split.smi-spec.io/v1alpha1", "hooks", "patched", "web", harness.Weighted{Service: "web-v1", Weight: "1"})
	if err := cp.Client.Create(ctx, split); err != nil {
		t.Fatal(err)
	}
	err := harness.SetWeights(ctx, cp.Client, split, harness.Weighted{Service: "web-v1", Weight: "-1"})
	if err == nil || !strings.Contains(err.Error(), "is negative") {
		t.Fatalf("want the patch refused for a negative weight, got %v", err)
	}
}

func TestWeightBounds(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for name, tc := range map[string]struct {
		obj    *unstructured.Unstructured
		reject string
	}{
		"v1alpha1 quantity above the maximum": {harness.TrafficSplit("split.smi-spec.io/v1alpha1", "hooks", "huge-q", "web",
			harness.Weighted{Service: "web-v1", Weight: "9E"}), "is above 1000000"},
		"v1alpha2 integer above the maximum (schema)": {harness.TrafficSplit("split.smi-spec.io/v1alpha2", "hooks", "huge-i", "web",
			harness.Weighted{Service: "web-v1", Weight: 10000000000000000}), "1000000"},
		"the maximum itself": {harness.TrafficSplit("split.smi-spec.io/v1alpha2", "hooks", "max", "web",
			harness.Weighted{Service: "web-v1", Weight: 1000000}), ""},
	} {
		t.Run(name, func(t *testing.T) {
			err := cp.Client.Create(ctx, tc.obj)
			switch {
			case tc.reject == "" && err != nil:
				t.Fatalf("want admitted, got %v", err)
			case tc.reject != "" && (err == nil || !strings.Contains(err.Error(), tc.reject)):
				t.Fatalf("want refused mentioning %q, got %v", tc.reject, err)
			}
		})
	}
}
