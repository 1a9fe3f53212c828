// Package operator runs the braid-operator binary itself against a real API server: its
// flags, kubeconfig loading, probes, metrics and /debug/proxies, the config server, and a
// clean stop on SIGTERM. The other packages run the same reconcilers in-process.
package operator

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/braidmesh/braid/controllers"
	"github.com/braidmesh/braid/internal/smi"
	"github.com/braidmesh/braid/test/harness"
)

func TestOperatorBinary(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	// Braid's CRDs only: the operator must also run without the Gateway API CRDs.
	env, cfg := startAPIServer(t)
	op := startOperator(ctx, t, writeKubeconfig(t, env, cfg))

	waitHTTP(ctx, t, "http://"+op.probeAddr+"/readyz", "ok")
	createMesh(ctx, t, cfg)
	streamUntilSplit(ctx, t, op.configAddr)
	waitHTTP(ctx, t, "http://"+op.metricsAddr+"/debug/proxies", "smoke-proxy")
	waitHTTP(ctx, t, "http://"+op.metricsAddr+"/metrics", `braid_config_proxies{state="SYNCED"} 1`)

	op.stop(t)
	if !strings.Contains(op.logs.String(), "GAMMA routes are ignored") {
		t.Errorf("without the Gateway API CRDs the operator should say GAMMA is off; logs:\n%s", op.logs.String())
	}
}

type operator struct {
	metricsAddr, probeAddr, configAddr string
	cmd                                *exec.Cmd
	exited                             chan error
	logs                               *harness.LogBuffer
}

func startOperator(ctx context.Context, t *testing.T, kubeconfig string) *operator {
	t.Helper()
	addrs := freeAddrs(t, 3)
	op := &operator{metricsAddr: addrs[0], probeAddr: addrs[1], configAddr: addrs[2], exited: make(chan error, 1), logs: &harness.LogBuffer{}}
	op.cmd = exec.Command(buildOperator(ctx, t), "--metrics-bind-address", op.metricsAddr, "--health-probe-bind-address", op.probeAddr,
		"--config-server-address", op.configAddr, "--config-debounce", "5ms")
	op.cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	op.cmd.Stdout, op.cmd.Stderr = op.logs, op.logs
	op.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := op.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { op.exited <- op.cmd.Wait() }()
	t.Cleanup(func() {
		_ = op.cmd.Process.Kill()
		if t.Failed() {
			t.Logf("operator logs:\n%s", op.logs.String())
		}
	})
	return op
}

// stop sends SIGTERM and expects a clean exit.
func (op *operator) stop(t *testing.T) {
	t.Helper()
	if err := op.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-op.exited:
		if err != nil {
			t.Fatalf("the operator did not exit cleanly on SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the operator did not stop within 30s of SIGTERM")
	}
}

func createMesh(ctx context.Context, t *testing.T, cfg *rest.Config) {
	t.Helper()
	c := newClient(t, cfg)
	for _, obj := range []client.Object{harness.Namespace("shop"), harness.Service("shop", "web", 80), harness.Service("shop", "web-v1", 80),
		harness.EndpointSlices("shop", "web-v1", netip.MustParseAddrPort("10.1.0.1:8080"))[0],
		harness.TrafficSplit("split.smi-spec.io/v1alpha2", "shop", "web", "web", harness.Weighted{Service: "web-v1", Weight: 1})} {
		if err := c.Create(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}
}

// streamUntilSplit streams configuration as a proxy, acknowledging every version, until
// the split shows on its root.
func streamUntilSplit(ctx context.Context, t *testing.T, configAddr string) {
	t.Helper()
	proxy, err := harness.DialConfig(ctx, configAddr, "smoke-proxy", "shop")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })
	for {
		snap, err := proxy.Recv()
		if err != nil {
			t.Fatalf("config stream: %v", err)
		}
		if err := proxy.Ack(snap.GetVersion(), ""); err != nil {
			t.Fatal(err)
		}
		if harness.FindPort(snap, "shop", "web", 80).GetSplit() == "shop/web" { // full or delta, it carries web when web changed
			return
		}
	}
}

func buildOperator(ctx context.Context, t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "braid-operator")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	cmd.Dir = harness.RepoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the operator: %v\n%s", err, out)
	}
	return bin
}

func writeKubeconfig(t *testing.T, env *envtest.Environment, cfg *rest.Config) string {
	t.Helper()
	user, err := env.AddUser(envtest.User{Name: "braid-operator", Groups: []string{"system:masters"}}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	data, err := user.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	out := make([]string, 0, n)
	for range n {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, lis.Addr().String())
		defer func() { _ = lis.Close() }()
	}
	return out
}

// waitHTTP polls url until it answers 200 with a body containing want.
func waitHTTP(ctx context.Context, t *testing.T, url, want string) {
	t.Helper()
	var last string
	for {
		if resp, err := http.Get(url); err == nil {
			body, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			last = fmt.Sprintf("%d %s", resp.StatusCode, body)
			if resp.StatusCode == http.StatusOK && strings.Contains(string(body), want) {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s never answered 200 with %q; last: %.300s", url, want, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// A split that stops being valid keeps its last accepted form in the proxies, also after
// the operator restarts and has forgotten everything: the split's status remembers it.
func TestLastAcceptedSplitSurvivesARestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	env, cfg := startAPIServer(t)
	kubeconfig := writeKubeconfig(t, env, cfg)
	op := startOperator(ctx, t, kubeconfig)
	waitHTTP(ctx, t, "http://"+op.probeAddr+"/readyz", "ok")
	createMesh(ctx, t, cfg)
	streamUntilSplit(ctx, t, op.configAddr)

	c := newClient(t, cfg)
	waitLastAccepted(ctx, t, c, client.ObjectKey{Namespace: "shop", Name: "web"})
	// Every weight 0: not accepted; proxies keep web-v1 at weight 1.
	split := harness.TrafficSplit("split.smi-spec.io/v1alpha2", "shop", "web", "web", harness.Weighted{Service: "web-v1", Weight: 0})
	if err := harness.SetWeights(ctx, c, split, harness.Weighted{Service: "web-v1", Weight: 0}); err != nil {
		t.Fatal(err)
	}
	if _, err := harness.WaitForCondition(ctx, c, split, "Accepted", "False", "AllWeightsZero"); err != nil {
		t.Fatal(err)
	}
	op.stop(t)

	restarted := startOperator(ctx, t, kubeconfig)
	waitHTTP(ctx, t, "http://"+restarted.probeAddr+"/readyz", "ok")
	proxy, err := harness.DialConfig(ctx, restarted.configAddr, "after-restart", "shop")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = proxy.Close() }()
	snap, err := proxy.Recv()
	if err != nil {
		t.Fatal(err)
	}
	port := harness.FindPort(snap, "shop", "web", 80)
	if port.GetSplit() != "shop/web" || harness.Weights(snap, "shop", "web", 80)["web-v1"] != 1 {
		t.Fatalf("after the restart, shop/web runs %v, want the last accepted split (web-v1 at weight 1)", port)
	}
}

// waitLastAccepted waits until the split's status records its current generation as accepted.
func waitLastAccepted(ctx context.Context, t *testing.T, c client.Client, key client.ObjectKey) {
	t.Helper()
	for {
		var ts smi.TrafficSplit
		if err := c.Get(ctx, key, &ts); err != nil {
			t.Fatal(err)
		}
		if ts.Status.LastAccepted != nil && ts.Status.LastAccepted.Generation == ts.Generation {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatal("the split's status never recorded its accepted form")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// startAPIServer starts kube-apiserver and etcd with Braid's CRDs only: the operator must
// also run without the Gateway API CRDs.
func startAPIServer(t *testing.T) (*envtest.Environment, *rest.Config) {
	t.Helper()
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(harness.RepoRoot(), "config", "crd", "bases"), filepath.Join(harness.RepoRoot(), "config", "crd", "smi")},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	return env, cfg
}

// newClient is a client of cfg that knows Braid's types.
func newClient(t *testing.T, cfg *rest.Config) client.Client {
	t.Helper()
	scheme, err := controllers.NewScheme()
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}
