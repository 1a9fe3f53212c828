// Command cluster-demo runs Braid's canary demo on the real single-node cluster `braid up`
// starts: it installs Braid (kubectl apply -k config/default), deploys frontend and
// reviews v1/v2 in the meshed namespace demo, shifts reviews through TrafficSplit weights
// 90/10 -> 50/50 -> 0/100 with `kubectl apply`, and prints the split measured from real
// requests (frontend -> its sidecar -> reviews) at each step. It leaves everything running
// for you to explore; `make down` stops the cluster.
//
// Run it with `make demo` as root (it brings the cluster up first).
package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/braidmesh/braid/hack/clusterkit"
)

const (
	ns       = "demo"
	requests = 1000
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		_, _ = fmt.Fprintln(os.Stderr, "cluster-demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	kit, err := clusterkit.New()
	if err != nil {
		return err
	}
	root, _ := os.Getwd()
	fmt.Println("\n$ kubectl apply -k config/default")
	if _, err := kit.Run(ctx, "apply", "-k", filepath.Join(root, "config", "default")); err != nil {
		return err
	}
	t := time.Now()
	if _, err := kit.ReadyPods(ctx, "braid-system", "app.kubernetes.io/name=braid-operator", 1, 2*time.Minute); err != nil {
		return err
	}
	fmt.Printf("Braid's operator is Ready (%s).\n", time.Since(t).Round(100*time.Millisecond))

	fmt.Printf("\nDeploying frontend and reviews v1, v2 in namespace %s (label braid.dev/inject=enabled)...\n", ns)
	t = time.Now()
	if err := kit.Apply(ctx, clusterkit.Workloads(ns)); err != nil {
		return err
	}
	frontend, err := kit.ReadyPods(ctx, ns, "app=frontend", 1, 2*time.Minute)
	if err != nil {
		return err
	}
	for _, sel := range []string{"app=reviews,version=v1", "app=reviews,version=v2"} {
		if _, err := kit.ReadyPods(ctx, ns, sel, 1, 2*time.Minute); err != nil {
			return err
		}
	}
	p := frontend[0]
	fmt.Printf("Pods Ready in %s; each has the braid-init init container and the braid-proxy native sidecar:\n", time.Since(t).Round(100*time.Millisecond))
	for _, c := range p.Spec.InitContainers {
		fmt.Printf("  %s/%s: init container %s (%s)\n", ns, p.Name, c.Name, c.Image)
	}

	if err := canary(ctx, kit, p.Status.PodIP); err != nil {
		return err
	}
	if err := access(ctx, kit, p.Status.PodIP); err != nil {
		return err
	}
	fmt.Printf(`
Everything still runs. Explore:
  export KUBECONFIG=%s
  export PATH=%s:$PATH
  kubectl -n %s get pods,svc,trafficsplits
  kubectl -n %s get trafficsplit reviews -o yaml      # status.conditions: Accepted, Programmed
  curl -s 'http://%s:8080/call?n=100'    # frontend calls reviews 100 times
  kubectl get --raw /apis/metrics.smi-spec.io/v1alpha1/namespaces/%s/deployments/reviews-v2/edges   # SMI TrafficMetrics
  kubectl -n %s apply -f - <<EOF                    # change the weights
%sEOF
Stop the cluster and undo every change to the host: make down
`, kit.Kubeconfig, filepath.Dir(kit.Kubectl), ns, ns, p.Status.PodIP, ns, ns, clusterkit.TrafficSplit(ns, 70, 30))
	return nil
}

// canary shifts reviews through the weights with kubectl apply and prints the split
// measured from requests the frontend at frontendIP makes.
func canary(ctx context.Context, kit *clusterkit.Kit, frontendIP string) error {
	dir, err := os.MkdirTemp("", "braid-demo-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	fmt.Printf("\nCanary of reviews through TrafficSplit %s/reviews, %d requests per step from frontend to http://reviews:8080/:\n", ns, requests)
	fmt.Printf("%-10s %-26s %s\n", "weights", "measured (v1 / v2)", "measured after kubectl apply (incl. the requests)")
	for _, w := range [][2]int{{90, 10}, {50, 50}, {0, 100}} {
		file := filepath.Join(dir, fmt.Sprintf("split-%d-%d.yaml", w[0], w[1]))
		if err := os.WriteFile(file, []byte(clusterkit.TrafficSplit(ns, w[0], w[1])), 0o644); err != nil {
			return err
		}
		t := time.Now()
		if _, err := kit.Run(ctx, "apply", "-f", file); err != nil {
			return err
		}
		var r clusterkit.Result
		err := clusterkit.Eventually(ctx, 30*time.Second, 200*time.Millisecond, func() error {
			var err error
			if r, err = clusterkit.Call(ctx, frontendIP, "http://reviews:8080/", requests); err != nil {
				return err
			}
			if r.Errors > 0 {
				return fmt.Errorf("%d requests failed: %s", r.Errors, r.Error)
			}
			// A weight of 0 gets no traffic at all.
			if w[0] == 0 && r.Counts["v1"] > 0 || w[1] == 0 && r.Counts["v2"] > 0 {
				return fmt.Errorf("a backend of weight 0 answered: %v", r.Counts)
			}
			// Within 5 points of the weights: the proxies have the new split.
			if math.Abs(100*r.Share("v2")-float64(w[1])) > 5 {
				return fmt.Errorf("measured v2 %.1f%%, weights say %d%%", 100*r.Share("v2"), w[1])
			}
			return nil
		})
		if err != nil {
			return err
		}
		fmt.Printf("%-10s %5.1f%% / %5.1f%%            %s\n", fmt.Sprintf("%d/%d", w[0], w[1]),
			100*r.Share("v1"), 100*r.Share("v2"), time.Since(t).Round(10*time.Millisecond))
	}
	return nil
}

// access shows a TrafficTarget at work: reviews admits only the ServiceAccount it lists,
// on the caller's verified mTLS identity; frontend is denied (a 403 from its own proxy,
// which the control plane tells it may not reach reviews), then allowed.
func access(ctx context.Context, kit *clusterkit.Kit, frontendIP string) error {
	fmt.Printf("\nAccess control: TrafficTarget %s/reviews, 10 requests from frontend per step:\n", ns)
	for _, step := range []struct {
		source string
		denied bool
	}{{"nobody", true}, {"frontend", false}} {
		if err := kit.Apply(ctx, clusterkit.ReviewsAccess(ns, step.source)); err != nil {
			return err
		}
		t := time.Now()
		var r clusterkit.Result
		err := clusterkit.Eventually(ctx, 30*time.Second, 200*time.Millisecond, func() error {
			var err error
			if r, err = clusterkit.Call(ctx, frontendIP, "http://reviews:8080/", 10); err != nil {
				return err
			}
			if step.denied && r.Errors != 10 || !step.denied && r.Errors != 0 {
				return fmt.Errorf("%d of 10 requests refused", r.Errors)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if step.denied {
			fmt.Printf("  sources: [%s]   10 of 10 refused (%s after kubectl apply): %s\n", step.source, time.Since(t).Round(10*time.Millisecond), strings.TrimSpace(r.Error))
		} else {
			fmt.Printf("  sources: [%s] 10 of 10 answered (%s after kubectl apply), reviews saw the caller as %s\n", step.source, time.Since(t).Round(10*time.Millisecond), r.Last.Client)
		}
	}
	return nil
}
