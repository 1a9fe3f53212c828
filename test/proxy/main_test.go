// Package proxy tests the braid-proxy binary on its own, without a control plane: run
// standalone from a config file (braid-proxy run --config), with HTTP backends on
// loopback addresses. It covers config reloads under load, metrics, and graceful shutdown.
package proxy

import (
	"context"
	"flag"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/test/harness"
)

// proxyBin is the braid-proxy binary, built once for every test.
var proxyBin string

// eventually bounds how long a test waits for something that must happen.
const eventually = 10 * time.Second

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

// Environment of a re-run of this program in an isolated network (see isolated): the one
// test it runs, and the braid-proxy binary it uses.
const (
	isolatedTestEnv = "BRAID_TEST_PROXY_ISOLATED_TEST"
	proxyBinEnv     = "BRAID_TEST_PROXY_BIN"
)

func run(m *testing.M) int {
	if harness.InIsolatedNetwork() {
		return runIsolated(m)
	}
	dir, err := os.MkdirTemp("", "braid-proxy-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = os.RemoveAll(dir) }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if proxyBin, err = harness.BuildProxy(ctx, dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// runIsolated runs, in the isolated network, the one test the environment names, with the
// binary the first run built.
func runIsolated(m *testing.M) int {
	if err := harness.SetupIsolatedNetwork(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	proxyBin = os.Getenv(proxyBinEnv)
	flag.Parse()
	if err := flag.Set("test.run", "^"+regexp.QuoteMeta(os.Getenv(isolatedTestEnv))+"$"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// isolated runs the calling test again in a network namespace of its own, where it may
// change the firewall (nftables rules that redirect connections to the proxy, as
// braid-init does in a pod): it returns true there, and the test goes on; in the
// first run it waits for that re-run, fails the test when it failed, and returns false.
// It skips the test where a network namespace or nft is not available.
func isolated(t *testing.T) bool {
	t.Helper()
	if harness.InIsolatedNetwork() {
		return true
	}
	if os.Geteuid() != 0 {
		t.Skip("this test changes nftables rules in a network namespace of its own: it needs root (CI runs it as root)")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("this test needs the nft command (nftables) to redirect connections to the proxy")
	}
	code, err := harness.RunInIsolatedNetwork(isolatedTestEnv+"="+t.Name(), proxyBinEnv+"="+proxyBin)
	if err != nil || code != 0 {
		t.Fatalf("the test in its isolated network failed (exit code %d, %v): see its output above", code, err)
	}
	return false
}

// standalone writes config to a file and starts a braid-proxy run on it, for a workload
// in namespace shop; extraArgs are added to its command line. The proxy stops when the
// test ends, and its logs are shown if the test failed.
func standalone(t *testing.T, config string, extraArgs ...string) (*harness.Proxy, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "braid.yaml")
	writeConfig(t, path, config)
	logs := &harness.LogBuffer{}
	ctx, cancel := context.WithTimeout(t.Context(), eventually)
	defer cancel()
	p, err := harness.StartStandaloneProxy(ctx, proxyBin, path, "shop", logs, extraArgs...)
	if err != nil {
		t.Fatalf("%v\nlogs:\n%s", err, logs.String())
	}
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("braid-proxy logs:\n%s", logs.String())
		}
	})
	return p, path
}

func writeConfig(t *testing.T, path, config string) {
	t.Helper()
	if err := harness.WriteFileAtomically(path, []byte(config)); err != nil {
		t.Fatal(err)
	}
}

func backend(t *testing.T, name string) *harness.Backend {
	t.Helper()
	b, err := harness.StartBackend(name, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// weighted is a backend of a split and its weight.
type weighted struct {
	b      *harness.Backend
	weight int
}

// splitConfig is a config file in which shop/web port 80 splits its traffic between
// backends by weight.
func splitConfig(version int, backends ...weighted) string {
	var b strings.Builder
	fmt.Fprintf(&b, "version: %d\nservices:\n- namespace: shop\n  name: web\n  ports:\n  - port: 80\n    routes:\n    - backends:\n", version)
	for _, w := range backends {
		fmt.Fprintf(&b, "      - service: %s\n        weight: %d\n        endpoints:\n        - ip: %s\n          port: %d\n",
			w.b.Name, w.weight, w.b.Addr.Addr(), w.b.Addr.Port())
	}
	return b.String()
}

// waitWeights waits until the proxy runs the weights of want for shop/web port 80.
func waitWeights(ctx context.Context, t *testing.T, p *harness.Proxy, want ...weighted) {
	t.Helper()
	weights := map[string]uint32{}
	for _, w := range want {
		weights[w.b.Name] = uint32(w.weight)
	}
	ctx, cancel := context.WithTimeout(ctx, eventually)
	defer cancel()
	if _, err := p.WaitForConfig(ctx, func(s *api.Snapshot) bool {
		return maps.Equal(harness.Weights(s, "shop", "web", 80), weights)
	}); err != nil {
		t.Fatalf("the proxy never ran weights %v: %v", weights, err)
	}
}

// metric waits until the proxy's /metrics has the sample name with labels at want, and
// fails the test if it never does.
func metric(ctx context.Context, t *testing.T, p *harness.Proxy, name string, labels map[string]string, want float64) {
	t.Helper()
	deadline := time.Now().Add(eventually)
	for {
		samples, err := p.Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := samples.Value(name, labels)
		if ok && got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s%v = %v (present: %v), want %v", name, labels, got, ok, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// get sends one request for host through the proxy and fails the test on a transport error.
func get(ctx context.Context, t *testing.T, p *harness.Proxy, host string) harness.Result {
	t.Helper()
	res, err := p.Get(ctx, host)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func expectStatus(t *testing.T, res harness.Result, want int) {
	t.Helper()
	if res.Status != want {
		t.Fatalf("HTTP %d %q, want %d", res.Status, res.Body, want)
	}
}
