// Package e2e runs Braid for real: an envtest API server, the operator in-process,
// braid-proxy as a process, and HTTP backends, all inside a private network and PID
// namespace. One control plane and one proxy serve every test; each test works in its own
// namespace and calls Services by <svc>.<namespace>.
package e2e

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/test/harness"
)

// proxyBinEnv passes the braid-proxy binary, built once before the tests enter their
// isolated network, to the re-run test binary.
const proxyBinEnv = "BRAID_E2E_PROXY_BIN"

// proxyNamespace is the namespace of the workload the shared proxy serves.
const proxyNamespace = "e2e"

var env struct {
	cp    *harness.ControlPlane
	proxy *harness.Proxy
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if harness.InIsolatedNetwork() {
		if err := harness.SetupIsolatedNetwork(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return runIsolated(m)
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

func runIsolated(m *testing.M) (code int) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var err error
	env.cp, err = harness.StartControlPlane(context.Background(), zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.ErrorLevel)))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() {
		if err := env.cp.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping the control plane:", err)
		}
	}()
	logs := &harness.LogBuffer{}
	if env.proxy, err = harness.StartProxy(ctx, os.Getenv(proxyBinEnv), env.cp.ConfigAddr, proxyNamespace, logs); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() {
		if err := env.proxy.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
		if code != 0 {
			fmt.Fprintf(os.Stderr, "braid-proxy logs:\n%s\n", logs.String())
		}
	}()
	if err := env.cp.Client.Create(ctx, harness.Namespace(proxyNamespace)); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

var nextAddr atomic.Int32

// backend starts an HTTP server answering name, on its own address of the isolated network.
func backend(t *testing.T, name string) *harness.Backend {
	t.Helper()
	b, err := harness.StartBackend(name, harness.MeshAddr(2+int(nextAddr.Add(1))%30))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// app creates a namespace and, for each Service, the Service (port 80, targetPort http)
// and the EndpointSlices of the backends it selects.
func app(ctx context.Context, t *testing.T, ns string, services map[string][]*harness.Backend) {
	t.Helper()
	create(ctx, t, env.cp.Client, harness.Namespace(ns))
	for name, backends := range services {
		create(ctx, t, env.cp.Client, harness.Service(ns, name, 80))
		setEndpoints(ctx, t, ns, name, backends...)
	}
}

// setEndpoints points a Service's EndpointSlices at backends, as the EndpointSlice
// controller does when the Service's selector or its pods change.
func setEndpoints(ctx context.Context, t *testing.T, ns, service string, backends ...*harness.Backend) {
	t.Helper()
	var old discoveryv1.EndpointSliceList
	if err := env.cp.Client.List(ctx, &old, client.InNamespace(ns), client.MatchingLabels{discoveryv1.LabelServiceName: service}); err != nil {
		t.Fatal(err)
	}
	for i := range old.Items {
		if err := env.cp.Client.Delete(ctx, &old.Items[i]); err != nil {
			t.Fatal(err)
		}
	}
	for i, b := range backends {
		for _, s := range harness.EndpointSlices(ns, service, b.Addr) {
			s.Name = fmt.Sprintf("%s-%d", service, i)
			create(ctx, t, env.cp.Client, s)
		}
	}
}

func create(ctx context.Context, t *testing.T, c client.Client, obj client.Object) {
	t.Helper()
	if err := c.Create(ctx, obj); err != nil {
		t.Fatalf("creating %T %s: %v", obj, obj.GetName(), err)
	}
}

func spread(ctx context.Context, t *testing.T, host string, n int) map[string]int {
	t.Helper()
	counts, err := env.proxy.Spread(ctx, host, n)
	if err != nil {
		t.Fatal(err)
	}
	return counts
}

// waitShares waits until the proxy runs weights with the shares of want for the root.
func waitShares(ctx context.Context, t *testing.T, ns, root string, want map[string]int64) {
	t.Helper()
	if _, err := env.proxy.WaitForConfig(ctx, func(s *api.Snapshot) bool {
		return harness.SameShares(harness.Weights(s, ns, root, 80), want)
	}); err != nil {
		t.Fatalf("the proxy never ran weights %v for %s/%s: %v", want, ns, root, err)
	}
}

func expectAccepted(ctx context.Context, t *testing.T, key types.NamespacedName, status metav1.ConditionStatus, reason string) metav1.Condition {
	t.Helper()
	for {
		cond, err := harness.WaitForAccepted(ctx, env.cp.Client, key)
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
