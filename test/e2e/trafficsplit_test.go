// Package e2e runs the whole slice for real: an envtest API server, the operator
// in-process, braid-proxy as a process, and HTTP backends on loopback addresses.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/braidmesh/braid/internal/mesh"
	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/test/harness"
)

const ns = "e2e"

var splitKey = types.NamespacedName{Namespace: ns, Name: "reviews"}

// proxyBinEnv passes the braid-proxy binary, built once before the tests enter their
// isolated network, to the re-run test binary.
const proxyBinEnv = "BRAID_E2E_PROXY_BIN"

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if harness.InIsolatedNetwork() {
		if err := harness.SetupIsolatedNetwork(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "braid-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = os.RemoveAll(dir) }()
	bin, err := harness.BuildProxy(context.Background(), dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code, err := harness.RunInIsolatedNetwork(proxyBinEnv + "=" + bin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	return code
}

type world struct {
	cp     *harness.ControlPlane
	proxy  *harness.Proxy
	v1, v2 *harness.Backend
}

func start(t *testing.T) *world {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cp, err := harness.StartControlPlane(t.Context(), testr.NewWithOptions(t, testr.Options{Verbosity: 0}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Errorf("stopping the control plane: %v", err)
		}
	})
	w := &world{cp: cp}
	w.v1 = backend(t, "v1", harness.MeshAddr(2))
	w.v2 = backend(t, "v2", harness.MeshAddr(3))
	var logs bytes.Buffer
	if w.proxy, err = harness.StartProxy(ctx, os.Getenv(proxyBinEnv), cp.ConfigAddr, ns, &logs); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := w.proxy.Stop(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("braid-proxy logs:\n%s", logs.String())
		}
	})

	create(ctx, t, cp.Client, harness.Namespace(ns))
	create(ctx, t, cp.Client, harness.Service(ns, "reviews", 80))
	create(ctx, t, cp.Client, harness.Service(ns, "reviews-v1", 80))
	create(ctx, t, cp.Client, harness.Service(ns, "reviews-v2", 80))
	for _, s := range harness.EndpointSlices(ns, "reviews", w.v1.Addr, w.v2.Addr) {
		create(ctx, t, cp.Client, s)
	}
	for _, s := range harness.EndpointSlices(ns, "reviews-v1", w.v1.Addr) {
		create(ctx, t, cp.Client, s)
	}
	for _, s := range harness.EndpointSlices(ns, "reviews-v2", w.v2.Addr) {
		create(ctx, t, cp.Client, s)
	}
	return w
}

func TestTrafficSplitEndToEnd(t *testing.T) {
	w := start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	t.Run("no split reaches every endpoint of the root", func(t *testing.T) { noSplit(ctx, t, w) })
	split := harness.TrafficSplit("split.smi-spec.io/v1alpha2", ns, "reviews", "reviews",
		harness.Weighted{Service: "reviews-v1", Weight: 80}, harness.Weighted{Service: "reviews-v2", Weight: 20})
	create(ctx, t, w.cp.Client, split)
	t.Run("80/20 split", func(t *testing.T) { split8020(ctx, t, w) })
	t.Run("shift to 0/100", func(t *testing.T) { shiftAll(ctx, t, w, split) })
	t.Run("all-zero split keeps the last good weights", func(t *testing.T) { allZero(ctx, t, w, split) })
	t.Run("unknown host is refused with a reason", func(t *testing.T) { unknownHost(ctx, t, w) })
}

// noSplit: without a split the root Service reaches both versions, as kube-proxy would.
func noSplit(ctx context.Context, t *testing.T, w *world) {
	if _, err := w.proxy.WaitForConfig(ctx, func(s *api.Snapshot) bool {
		p := harness.FindPort(s, ns, "reviews", 80)
		return p != nil && len(p.GetBackends()) == 1 && len(p.GetBackends()[0].GetEndpoints()) == 2
	}); err != nil {
		t.Fatal(err)
	}
	counts := spread(ctx, t, w.proxy, "reviews", 400)
	if counts["v1"] == 0 || counts["v2"] == 0 || counts["v1"]+counts["v2"] != 400 {
		t.Fatalf("without a split, want both versions to answer all 400 requests, got %s", harness.FormatCounts(counts))
	}
}

func split8020(ctx context.Context, t *testing.T, w *world) {
	expectAccepted(ctx, t, w.cp.Client, splitKey, metav1.ConditionTrue, mesh.ReasonAccepted)
	waitWeights(ctx, t, w.proxy, map[string]uint32{"reviews-v1": 4, "reviews-v2": 1})
	counts := spread(ctx, t, w.proxy, "reviews.e2e.svc.cluster.local:80", 2000)
	share := harness.Share(counts, "v1")
	t.Logf("80/20 over 2000 requests: %s (v1 %.1f%%)", harness.FormatCounts(counts), 100*share)
	if math.Abs(share-0.80) > 0.04 || counts["v1"]+counts["v2"] != 2000 {
		t.Fatalf("want v1 at 80%% ± 4 points of 2000 answered requests, got %s", harness.FormatCounts(counts))
	}
}

func shiftAll(ctx context.Context, t *testing.T, w *world, split *unstructured.Unstructured) {
	started := time.Now()
	if err := harness.SetWeights(ctx, w.cp.Client, split,
		harness.Weighted{Service: "reviews-v1", Weight: 0}, harness.Weighted{Service: "reviews-v2", Weight: 100}); err != nil {
		t.Fatal(err)
	}
	waitWeights(ctx, t, w.proxy, map[string]uint32{"reviews-v1": 0, "reviews-v2": 1})
	t.Logf("weight change reached the proxy in %v (from the patch to the proxy's /config showing it)", time.Since(started))
	counts := spread(ctx, t, w.proxy, "reviews.e2e", 500)
	if counts["v2"] != 500 {
		t.Fatalf("after 0/100 every request must reach v2, got %s", harness.FormatCounts(counts))
	}
}

func allZero(ctx context.Context, t *testing.T, w *world, split *unstructured.Unstructured) {
	if err := harness.SetWeights(ctx, w.cp.Client, split,
		harness.Weighted{Service: "reviews-v1", Weight: 0}, harness.Weighted{Service: "reviews-v2", Weight: 0}); err != nil {
		t.Fatal(err)
	}
	cond := expectAccepted(ctx, t, w.cp.Client, splitKey, metav1.ConditionFalse, mesh.ReasonAllWeightsZero)
	if !strings.Contains(cond.Message, "weight 0") {
		t.Errorf("the condition's message should say why: %q", cond.Message)
	}
	// Force a recompile of the root (a second v2 endpoint appears) and check the
	// recompiled config still carries the last accepted weights, not the zero ones.
	v2b := backend(t, "v2", harness.MeshAddr(4))
	for _, s := range harness.EndpointSlices(ns, "reviews-v2", w.v2.Addr, v2b.Addr) {
		apply(ctx, t, w.cp.Client, s)
	}
	snap, err := w.proxy.WaitForConfig(ctx, func(s *api.Snapshot) bool {
		p := harness.FindPort(s, ns, "reviews", 80)
		return p != nil && len(p.GetBackends()) == 2 && len(p.GetBackends()[1].GetEndpoints()) == 2
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := harness.Weights(snap, ns, "reviews", 80); got["reviews-v1"] != 0 || got["reviews-v2"] == 0 {
		t.Fatalf("an all-zero split must not reach proxies; weights now %v", got)
	}
	counts := spread(ctx, t, w.proxy, "reviews", 300)
	if counts["v2"] != 300 {
		t.Fatalf("want every request on v2 as before the all-zero update, got %s", harness.FormatCounts(counts))
	}
}

func unknownHost(ctx context.Context, t *testing.T, w *world) {
	for host, want := range map[string]string{"ratings.e2e:80": "e2e/ratings", "example.com": "example.com", "reviews:8080": "no port 8080"} {
		res, err := w.proxy.Get(ctx, host)
		if err != nil {
			t.Fatal(err)
		}
		if res.Status != http.StatusNotFound || !strings.Contains(res.Body, want) {
			t.Errorf("host %s: want 404 mentioning %q, got %d %q", host, want, res.Status, res.Body)
		}
	}
}

func backend(t *testing.T, name, ip string) *harness.Backend {
	t.Helper()
	b, err := harness.StartBackend(name, ip)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func create(ctx context.Context, t *testing.T, c client.Client, obj client.Object) {
	t.Helper()
	if err := c.Create(ctx, obj); err != nil {
		t.Fatalf("creating %T %s: %v", obj, obj.GetName(), err)
	}
}

// apply creates or replaces an EndpointSlice, as the EndpointSlice controller would.
func apply(ctx context.Context, t *testing.T, c client.Client, s *discoveryv1.EndpointSlice) {
	t.Helper()
	var cur discoveryv1.EndpointSlice
	if err := c.Get(ctx, client.ObjectKeyFromObject(s), &cur); err != nil {
		create(ctx, t, c, s)
		return
	}
	s.ResourceVersion = cur.ResourceVersion
	if err := c.Update(ctx, s); err != nil {
		t.Fatalf("updating endpoint slice %s: %v", s.Name, err)
	}
}

func spread(ctx context.Context, t *testing.T, p *harness.Proxy, host string, n int) map[string]int {
	t.Helper()
	counts, err := p.Spread(ctx, host, n)
	if err != nil {
		t.Fatal(err)
	}
	return counts
}

func waitWeights(ctx context.Context, t *testing.T, p *harness.Proxy, want map[string]uint32) {
	t.Helper()
	if _, err := p.WaitForConfig(ctx, func(s *api.Snapshot) bool {
		got := harness.Weights(s, ns, "reviews", 80)
		if len(got) != len(want) {
			return false
		}
		for k, v := range want {
			if got[k] != v {
				return false
			}
		}
		return true
	}); err != nil {
		t.Fatalf("the proxy never ran weights %v: %v", want, err)
	}
}

func expectAccepted(ctx context.Context, t *testing.T, c client.Client, key types.NamespacedName, status metav1.ConditionStatus, reason string) metav1.Condition {
	t.Helper()
	for {
		cond, err := harness.WaitForAccepted(ctx, c, key)
		if err != nil {
			t.Fatal(err)
		}
		if cond.Status == status && cond.Reason == reason {
			return cond
		}
		select {
		case <-ctx.Done():
			t.Fatalf("want Accepted=%s reason %s, last saw %s %s: %s", status, reason, cond.Status, cond.Reason, cond.Message)
		case <-time.After(10 * time.Millisecond):
		}
	}
}
