package controllers_test

import (
	"context"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/braidmesh/braid/internal/mesh"
	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/test/harness"
)

var cp *harness.ControlPlane

// The reconcilers run against one real API server for the whole package; each test works
// in its own namespace.
func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	cp, err = harness.StartControlPlane(context.Background(), zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.ErrorLevel)))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() {
		if err := cp.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}()
	return m.Run()
}

func namespace(ctx context.Context, t *testing.T) string {
	t.Helper()
	name := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(name) > 50 {
		name = name[:50]
	}
	mustCreate(ctx, t, harness.Namespace(name))
	return name
}

func mustCreate(ctx context.Context, t *testing.T, obj client.Object) {
	t.Helper()
	if err := cp.Client.Create(ctx, obj); err != nil {
		t.Fatalf("creating %T %s: %v", obj, obj.GetName(), err)
	}
}

func waitCondition(ctx context.Context, t *testing.T, key types.NamespacedName, status metav1.ConditionStatus, reason string) metav1.Condition {
	t.Helper()
	var last metav1.Condition
	for ctx.Err() == nil {
		cond, err := harness.WaitForAccepted(ctx, cp.Client, key)
		if err != nil {
			break
		}
		if last = cond; cond.Status == status && cond.Reason == reason {
			return cond
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("want Accepted=%s %s on %s, last %s %s: %q", status, reason, key, last.Status, last.Reason, last.Message)
	return last
}

func TestSplitWithoutRootIsNotAcceptedUntilTheRootExists(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns := namespace(ctx, t)
	split := harness.TrafficSplit("split.smi-spec.io/v1alpha4", ns, "web", "web",
		harness.Weighted{Service: "web-v1", Weight: 1}, harness.Weighted{Service: "web-v2", Weight: 1})
	mustCreate(ctx, t, split)
	key := types.NamespacedName{Namespace: ns, Name: "web"}

	cond := waitCondition(ctx, t, key, metav1.ConditionFalse, mesh.ReasonRootServiceNotFound)
	if !strings.Contains(cond.Message, `"web"`) || cond.ObservedGeneration != split.GetGeneration() {
		t.Errorf("the condition must name the missing root and observe generation %d: %+v", split.GetGeneration(), cond)
	}
	mustCreate(ctx, t, harness.Service(ns, "web", 80))
	waitCondition(ctx, t, key, metav1.ConditionTrue, mesh.ReasonAccepted)
}

// Braid writes only status: the spec a tool wrote must read back unchanged through the
// version it was written in, including v1alpha4 matches that v1alpha1 (the version Braid
// reads through) does not declare. Flagger re-updates on any spec difference.
func TestStatusWritesLeaveTheSpecAsWritten(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns := namespace(ctx, t)
	mustCreate(ctx, t, harness.Service(ns, "web", 80))
	split := harness.TrafficSplit("split.smi-spec.io/v1alpha4", ns, "web", "web",
		harness.Weighted{Service: "web-v1", Weight: 0}, harness.Weighted{Service: "web-v2", Weight: 100})
	split.Object["spec"].(map[string]any)["matches"] = []any{map[string]any{"kind": "HTTPRouteGroup", "name": "firefox"}}
	mustCreate(ctx, t, split)
	written := split.Object["spec"]
	waitCondition(ctx, t, types.NamespacedName{Namespace: ns, Name: "web"}, metav1.ConditionTrue, mesh.ReasonAccepted)

	got := &unstructured.Unstructured{}
	got.SetAPIVersion("split.smi-spec.io/v1alpha4")
	got.SetKind("TrafficSplit")
	if err := cp.Client.Get(ctx, client.ObjectKeyFromObject(split), got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Object["spec"], written) {
		t.Fatalf("spec changed by Braid:\nwritten %v\nread    %v", written, got.Object["spec"])
	}
	if got.GetGeneration() != split.GetGeneration() {
		t.Fatalf("generation moved from %d to %d: something wrote the spec", split.GetGeneration(), got.GetGeneration())
	}
}

// Flagger's linkerd provider writes v1alpha1 with string weights; quantities are relative.
func TestV1alpha1QuantityWeightsAreCompiled(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns := namespace(ctx, t)
	for _, name := range []string{"web", "web-primary", "web-canary"} {
		mustCreate(ctx, t, harness.Service(ns, name, 80))
	}
	mustCreate(ctx, t, harness.TrafficSplit("split.smi-spec.io/v1alpha1", ns, "web", "web",
		harness.Weighted{Service: "web-canary", Weight: "500m"}, harness.Weighted{Service: "web-primary", Weight: "1"}))
	waitCondition(ctx, t, types.NamespacedName{Namespace: ns, Name: "web"}, metav1.ConditionTrue, mesh.ReasonAccepted)
	waitSnapshot(ctx, t, func(s *api.Snapshot) bool {
		w := harness.Weights(s, ns, "web", 80)
		return w["web-canary"] == 1 && w["web-primary"] == 2
	})
}

func TestAllZeroSplitIsRejectedAndNeverProgrammed(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns := namespace(ctx, t)
	mustCreate(ctx, t, harness.Service(ns, "web", 80))
	mustCreate(ctx, t, harness.Service(ns, "web-v1", 80))
	mustCreate(ctx, t, harness.TrafficSplit("split.smi-spec.io/v1alpha2", ns, "web", "web",
		harness.Weighted{Service: "web-v1", Weight: 0}))
	cond := waitCondition(ctx, t, types.NamespacedName{Namespace: ns, Name: "web"}, metav1.ConditionFalse, mesh.ReasonAllWeightsZero)
	if cond.Message == "" {
		t.Error("the condition needs a message")
	}
	// Never accepted, so the root compiles as if it had no split.
	snap := waitSnapshot(ctx, t, func(s *api.Snapshot) bool { return harness.FindPort(s, ns, "web", 80) != nil })
	if p := harness.FindPort(snap, ns, "web", 80); p.GetSplit() != "" || len(harness.Backends(p)) != 1 || harness.Backends(p)[0].GetService() != "web" {
		t.Fatalf("a split that was never accepted must not be programmed: %v", p)
	}
}

func TestDeletedServiceLeavesTheConfig(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns := namespace(ctx, t)
	svc := harness.Service(ns, "gone", 80)
	mustCreate(ctx, t, svc)
	waitSnapshot(ctx, t, func(s *api.Snapshot) bool { return harness.FindPort(s, ns, "gone", 80) != nil })
	if err := cp.Client.Delete(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "gone"}}); err != nil {
		t.Fatal(err)
	}
	waitSnapshot(ctx, t, func(s *api.Snapshot) bool { return harness.FindPort(s, ns, "gone", 80) == nil })
}

func waitSnapshot(ctx context.Context, t *testing.T, cond func(*api.Snapshot) bool) *api.Snapshot {
	t.Helper()
	for {
		snap := cp.ConfigServer.Snapshot()
		if cond(snap) {
			return snap
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the config server never reached the expected state; last snapshot version %d", snap.GetVersion())
		case <-time.After(10 * time.Millisecond):
		}
	}
}
