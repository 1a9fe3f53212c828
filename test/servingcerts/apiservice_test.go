package servingcerts

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/braidmesh/braid/controllers"
)

// The TrafficMetrics APIService is served with the same certificate as the webhooks: the
// operator puts the mesh trust bundle into its spec.caBundle and undoes any other value.
func TestAPIServiceCABundleIsTheTrustBundle(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	op := startOperator(ctx, t, controllers.CABundleOptions{APIService: controllers.DefaultMetricsAPIService})
	apiService := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
		"metadata": map[string]any{"name": controllers.DefaultMetricsAPIService},
		"spec": map[string]any{
			"group": "metrics.smi-spec.io", "version": "v1alpha1", "groupPriorityMinimum": int64(1000), "versionPriority": int64(100),
			"service":  map[string]any{"namespace": op.ns, "name": "braid-operator", "port": int64(9444)},
			"caBundle": encode(otherRoot(t)),
		},
	}}
	create(ctx, t, apiService)
	t.Cleanup(func() { _ = cl.Delete(context.WithoutCancel(ctx), apiService) })

	waitAPIServiceBundle(ctx, t, op)
	patch := fmt.Sprintf(`{"spec":{"caBundle":%q}}`, encode(otherRoot(t)))
	if err := cl.Patch(ctx, apiService, client.RawPatch("application/merge-patch+json", []byte(patch))); err != nil {
		t.Fatal(err)
	}
	waitAPIServiceBundle(ctx, t, op)
}

func waitAPIServiceBundle(ctx context.Context, t *testing.T, op *operator) {
	t.Helper()
	for {
		u := &unstructured.Unstructured{}
		u.SetAPIVersion("apiregistration.k8s.io/v1")
		u.SetKind("APIService")
		if err := cl.Get(ctx, client.ObjectKey{Name: controllers.DefaultMetricsAPIService}, u); err != nil {
			t.Fatal(err)
		}
		raw, _, _ := unstructured.NestedString(u.Object, "spec", "caBundle")
		got, _ := base64.StdEncoding.DecodeString(raw)
		if want := op.holder.TrustBundle(); len(want) > 0 && bytes.Equal(got, want) {
			return
		}
		wait(ctx, t, "the APIService caBundle to be the mesh trust bundle")
	}
}
