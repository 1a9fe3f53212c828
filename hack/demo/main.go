// Command demo runs the Braid mesh locally, with no cluster: a real kube-apiserver and
// etcd (envtest), the operator, two versions of a "reviews" service and braid-proxy. It
// shifts a canary through TrafficSplit weights 90/10 -> 50/50 -> 0/100 and prints the
// split measured from real requests at each step. Everything it starts stops with it.
//
// Run it with `make demo`, which builds the API server once and sets KUBEBUILDER_ASSETS.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap/zapcore"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/test/harness"
)

const (
	namespace = "demo"
	requests  = 1000
	proxyEnv  = "BRAID_DEMO_PROXY_BIN"
)

func main() {
	os.Exit(run())
}

func run() int {
	if harness.InIsolatedNetwork() {
		if err := harness.SetupIsolatedNetwork(); err != nil {
			fmt.Fprintln(os.Stderr, "demo:", err)
			return 1
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if err := demo(ctx, os.Stdout); err != nil {
			if errors.Is(err, context.Canceled) {
				fmt.Println("\nInterrupted; everything the demo started has stopped.")
				return 130
			}
			fmt.Fprintln(os.Stderr, "demo:", err)
			return 1
		}
		return 0
	}
	fmt.Println("Building braid-proxy...")
	dir, err := os.MkdirTemp("", "braid-demo-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	defer func() { _ = os.RemoveAll(dir) }()
	bin, err := harness.BuildProxy(context.Background(), dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	code, err := harness.RunInIsolatedNetwork(proxyEnv + "=" + bin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
	}
	return code
}

type step struct {
	v1, v2 int64
}

func demo(ctx context.Context, out io.Writer) (err error) {
	say := func(format string, args ...any) { _, _ = fmt.Fprintf(out, format+"\n", args...) }
	say("Starting kube-apiserver and etcd, and the Braid operator (in this process)...")
	cp, err := harness.StartControlPlane(ctx, zap.New(zap.Level(zapcore.ErrorLevel)))
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, cp.Stop()) }()
	v1, err := harness.StartBackend("reviews-v1", harness.MeshAddr(2))
	if err != nil {
		return err
	}
	defer func() { _ = v1.Close() }()
	v2, err := harness.StartBackend("reviews-v2", harness.MeshAddr(3))
	if err != nil {
		return err
	}
	defer func() { _ = v2.Close() }()
	say("Backends: reviews-v1 at %s, reviews-v2 at %s (a private network namespace).", v1.Addr, v2.Addr)

	proxy, err := harness.StartProxy(ctx, os.Getenv(proxyEnv), cp.ConfigAddr, namespace, io.Discard)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, proxy.Stop()) }()
	say("braid-proxy: outbound %s, admin http://%s/config, config from %s.", proxy.OutboundAddr, proxy.AdminAddr, cp.ConfigAddr)

	if err := createApp(ctx, cp.Client, v1, v2); err != nil {
		return err
	}
	split := harness.TrafficSplit("split.smi-spec.io/v1alpha4", namespace, "reviews", "reviews",
		harness.Weighted{Service: "reviews-v1", Weight: 90}, harness.Weighted{Service: "reviews-v2", Weight: 10})
	if err := cp.Client.Create(ctx, split); err != nil {
		return fmt.Errorf("creating the TrafficSplit: %w", err)
	}
	say("\nCanary of reviews through TrafficSplit %s/reviews, %d requests per step to http://reviews/:", namespace, requests)
	say("%-10s %-28s %-16s %s", "weights", "measured (v1 / v2)", "Accepted", "applied by the proxy after")
	for i, s := range []step{{90, 10}, {50, 50}, {0, 100}} {
		started := time.Now()
		if i > 0 {
			if err := harness.SetWeights(ctx, cp.Client, split,
				harness.Weighted{Service: "reviews-v1", Weight: s.v1}, harness.Weighted{Service: "reviews-v2", Weight: s.v2}); err != nil {
				return err
			}
		}
		if err := runStep(ctx, out, cp.Client, proxy, s, started); err != nil {
			return err
		}
	}
	say("\nDone. Stopping the proxy, the operator, kube-apiserver and etcd.")
	return nil
}

func createApp(ctx context.Context, c client.Client, v1, v2 *harness.Backend) error {
	objs := []client.Object{
		harness.Namespace(namespace),
		harness.Service(namespace, "reviews", 80),
		harness.Service(namespace, "reviews-v1", 80),
		harness.Service(namespace, "reviews-v2", 80),
	}
	for _, s := range harness.EndpointSlices(namespace, "reviews", v1.Addr, v2.Addr) {
		objs = append(objs, s)
	}
	for _, s := range harness.EndpointSlices(namespace, "reviews-v1", v1.Addr) {
		objs = append(objs, s)
	}
	for _, s := range harness.EndpointSlices(namespace, "reviews-v2", v2.Addr) {
		objs = append(objs, s)
	}
	for _, o := range objs {
		if err := c.Create(ctx, o); err != nil {
			return fmt.Errorf("creating %T %s: %w", o, o.GetName(), err)
		}
	}
	return nil
}

func runStep(ctx context.Context, out io.Writer, c client.Client, proxy *harness.Proxy, s step, started time.Time) error {
	want := map[string]int64{"reviews-v1": s.v1, "reviews-v2": s.v2}
	if _, err := proxy.WaitForConfig(ctx, func(snap *api.Snapshot) bool {
		return harness.SameShares(harness.Weights(snap, namespace, "reviews", 80), want)
	}); err != nil {
		return err
	}
	applied := time.Since(started)
	cond, err := harness.WaitForAccepted(ctx, c, types.NamespacedName{Namespace: namespace, Name: "reviews"})
	if err != nil {
		return err
	}
	counts, err := proxy.Spread(ctx, "reviews", requests)
	if err != nil {
		return err
	}
	measured := fmt.Sprintf("%5.1f%% / %5.1f%%", 100*harness.Share(counts, "reviews-v1"), 100*harness.Share(counts, "reviews-v2"))
	if other := requests - counts["reviews-v1"] - counts["reviews-v2"]; other > 0 {
		measured += fmt.Sprintf(" (%d failed)", other)
	}
	accepted := string(cond.Status)
	if cond.Status != metav1.ConditionTrue {
		accepted += " " + cond.Reason
	}
	_, err = fmt.Fprintf(out, "%-10s %-28s %-16s %v\n", fmt.Sprintf("%d/%d", s.v1, s.v2), measured, accepted, applied.Round(time.Millisecond))
	return err
}
