// Command controlplane benchmarks Braid's control plane on a real kube-apiserver: it
// creates a mesh of Services, EndpointSlices and TrafficSplits, connects simulated
// proxies (real gRPC streams that acknowledge every version), and measures how long a
// TrafficSplit weight change takes to be acknowledged by the last proxy, against the
// API server's own watch latency for the same change, measured in the same run.
//
// Run it with `make bench-control-plane`.
package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap/zapcore"
	"golang.org/x/sync/errgroup"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/braidmesh/braid/internal/configserver"
	"github.com/braidmesh/braid/test/harness"
)

type config struct {
	services, endpointsPerService, proxies, updates int
	debounce                                        time.Duration
	cpuProfile                                      string
}

func main() {
	var c config
	flag.IntVar(&c.services, "services", 1000, "Services, each the root of one TrafficSplit with two backends")
	flag.IntVar(&c.endpointsPerService, "endpoints", 5, "ready endpoints per root Service (pods)")
	flag.IntVar(&c.proxies, "proxies", 1000, "simulated proxies connected to the config server")
	flag.IntVar(&c.updates, "updates", 100, "weight updates to time")
	flag.DurationVar(&c.debounce, "debounce", 10*time.Millisecond, "the config server's debounce window (the operator's default)")
	flag.StringVar(&c.cpuProfile, "cpuprofile", "", "write a CPU profile of the update phase to this file")
	flag.Parse()
	if err := run(context.Background(), c); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

const ns = "bench"

func run(ctx context.Context, c config) error {
	cpuStart := cpuSeconds()
	cp, err := harness.StartControlPlaneWith(ctx, zap.New(zap.Level(zapcore.ErrorLevel)),
		harness.Options{ConfigServer: configserver.Options{Debounce: c.debounce}})
	if err != nil {
		return err
	}
	defer func() { _ = cp.Stop() }()
	fmt.Printf("creating %d services, %d endpoint slices (%d endpoints), %d traffic splits...\n",
		3*c.services, 3*c.services, c.services*c.endpointsPerService, c.services)
	createStart := time.Now()
	if err := createMesh(ctx, cp.Client, c); err != nil {
		return err
	}
	created := time.Since(createStart)

	syncStart := time.Now()
	proxies, err := connectProxies(ctx, cp.ConfigAddr, c.proxies)
	if err != nil {
		return err
	}
	defer proxies.close()
	if err := waitAllSynced(ctx, cp.ConfigServer, c.services*3, c.proxies); err != nil {
		return err
	}
	initialSync := time.Since(syncStart)
	heap, rss := memory()

	stopProfile, err := startProfile(c.cpuProfile)
	if err != nil {
		return err
	}
	t, err := timeUpdates(ctx, cp, c)
	stopProfile()
	if err != nil {
		return err
	}
	report(c, created, initialSync, t, heap, rss, cpuSeconds()-cpuStart)
	return nil
}

// createMesh creates, for each i, a root Service web-i selecting 5 pods, backends
// web-i-v1 and web-i-v2 with the same pods, and a TrafficSplit web-i at 100/0.
func createMesh(ctx context.Context, c client.Client, cfg config) error {
	if err := c.Create(ctx, harness.Namespace(ns)); err != nil {
		return err
	}
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i := range cfg.services {
		g.Go(func() error {
			root := fmt.Sprintf("web-%d", i)
			for _, name := range []string{root, root + "-v1", root + "-v2"} {
				if err := c.Create(ctx, harness.Service(ns, name, 80)); err != nil {
					return fmt.Errorf("creating service %s: %w", name, err)
				}
				for _, s := range harness.EndpointSlices(ns, name, endpoints(i, cfg.endpointsPerService)...) {
					if err := c.Create(ctx, s); err != nil {
						return fmt.Errorf("creating endpoint slice of %s: %w", name, err)
					}
				}
			}
			split := harness.TrafficSplit("split.smi-spec.io/v1alpha2", ns, root, root,
				harness.Weighted{Service: root + "-v1", Weight: 100}, harness.Weighted{Service: root + "-v2", Weight: 0})
			return c.Create(ctx, split)
		})
	}
	return g.Wait()
}

// proxyFleet is the simulated proxies: each acknowledges every version it receives.
type proxyFleet struct{ clients []*harness.StreamClient }

func connectProxies(ctx context.Context, addr string, n int) (*proxyFleet, error) {
	f := &proxyFleet{}
	for i := range n {
		c, err := harness.DialConfig(ctx, addr, fmt.Sprintf("proxy-%d", i), ns)
		if err != nil {
			f.close()
			return nil, err
		}
		f.clients = append(f.clients, c)
		go func() {
			for {
				snap, err := c.Recv()
				if err != nil {
					return
				}
				if c.Ack(snap.GetVersion(), "") != nil {
					return
				}
			}
		}()
	}
	return f, nil
}

func (f *proxyFleet) close() {
	for _, c := range f.clients {
		_ = c.Close()
	}
}

// waitAllSynced waits until the server holds every service and every proxy runs it.
func waitAllSynced(ctx context.Context, srv *configserver.Server, services, proxies int) error {
	deadline := time.Now().Add(10 * time.Minute)
	for time.Now().Before(deadline) {
		snap := srv.Snapshot()
		if len(snap.GetServices()) >= services {
			if acked, _, connected, _ := srv.AckStatus(snap.GetVersion()); acked == proxies && connected == proxies {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
	return fmt.Errorf("the proxies never synced %d services", services)
}

// timings are per-update durations.
type timings struct {
	// total: patch -> last proxy ACK; baseline: patch -> API server watch event;
	// compile: watch event -> config version carrying the change; fanout: that version ->
	// last proxy ACK (debounce window included).
	total, baseline, compile, fanout []time.Duration
}

// timeUpdates flips the weights of one split after another and times each update.
func timeUpdates(ctx context.Context, cp *harness.ControlPlane, c config) (t timings, err error) {
	wc, err := client.NewWithWatch(cp.RestConfig, client.Options{Scheme: cp.Client.Scheme()})
	if err != nil {
		return t, err
	}
	list := &unstructured.UnstructuredList{}
	list.SetAPIVersion("split.smi-spec.io/v1alpha2")
	list.SetKind("TrafficSplitList")
	w, err := wc.Watch(ctx, list, client.InNamespace(ns), &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: "0"}})
	if err != nil {
		return t, err
	}
	defer w.Stop()
	seen := watchTimes(w)
	for u := range c.updates {
		root := fmt.Sprintf("web-%d", (u*7919)%c.services) // spread over the mesh
		v1, v2 := 100-10*(u%10+1), 10*(u%10+1)
		split := harness.TrafficSplit("split.smi-spec.io/v1alpha2", ns, root, root)
		start := time.Now()
		if err := harness.SetWeights(ctx, cp.Client, split,
			harness.Weighted{Service: root + "-v1", Weight: v1}, harness.Weighted{Service: root + "-v2", Weight: v2}); err != nil {
			return t, err
		}
		rv := split.GetResourceVersion()
		version, err := waitCompiled(ctx, cp.ConfigServer, root, int64(v1), int64(v2))
		if err != nil {
			return t, err
		}
		compiled := time.Now()
		if err := waitAcked(ctx, cp.ConfigServer, version, c.proxies); err != nil {
			return t, err
		}
		done := time.Now()
		event := seen.wait(rv)
		t.total = append(t.total, done.Sub(start))
		t.baseline = append(t.baseline, event.Sub(start))
		t.compile = append(t.compile, compiled.Sub(event))
		t.fanout = append(t.fanout, done.Sub(compiled))
	}
	return t, nil
}

func waitCompiled(ctx context.Context, srv *configserver.Server, root string, v1, v2 int64) (uint64, error) {
	want := map[string]int64{root + "-v1": v1, root + "-v2": v2}
	for {
		snap := srv.Snapshot()
		if harness.SameShares(harness.Weights(snap, ns, root, 80), want) {
			return snap.GetVersion(), nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(time.Millisecond): // polls take the server's lock: not too often
		}
	}
}

func waitAcked(ctx context.Context, srv *configserver.Server, version uint64, proxies int) error {
	for {
		if acked, _, _, _ := srv.AckStatus(version); acked >= proxies {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond): // polls take the server's lock: not too often
		}
	}
}

// watchEvents records when each resourceVersion arrived on a watch.
type watchEvents struct {
	mu   sync.Mutex
	at   map[string]time.Time
	cond *sync.Cond
}

func watchTimes(w watch.Interface) *watchEvents {
	e := &watchEvents{at: map[string]time.Time{}}
	e.cond = sync.NewCond(&e.mu)
	go func() {
		for ev := range w.ResultChan() {
			now := time.Now()
			if o, ok := ev.Object.(client.Object); ok {
				e.mu.Lock()
				e.at[o.GetResourceVersion()] = now
				e.cond.Broadcast()
				e.mu.Unlock()
			}
		}
	}()
	return e
}

func (e *watchEvents) wait(rv string) time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	for {
		if t, ok := e.at[rv]; ok {
			return t
		}
		e.cond.Wait()
	}
}

func endpoints(i, n int) []netip.AddrPort {
	out := make([]netip.AddrPort, 0, n)
	for j := range n {
		out = append(out, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(1 + i/250), byte(i % 250), byte(1 + j)}), 8080))
	}
	return out
}

func memory() (heapMB, rssMB float64) {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	heapMB = float64(m.HeapAlloc) / (1 << 20)
	if status, err := os.ReadFile("/proc/self/status"); err == nil {
		for line := range strings.Lines(string(status)) {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
				kb, _ := strconv.ParseFloat(f[1], 64)
				rssMB = kb / 1024
			}
		}
	}
	return heapMB, rssMB
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.SortFunc(s, cmp.Compare)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

func report(c config, created, sync time.Duration, t timings, heap, rss, cpu float64) {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }
	fmt.Printf("\nBraid control plane: %d root services (%d Services), %d TrafficSplits, %d endpoints, %d connected proxies, debounce %v\n\n",
		c.services, 3*c.services, c.services, c.services*c.endpointsPerService, c.proxies, c.debounce)
	fmt.Printf("| %-52s | %10s | %10s | %8s |\n", "measure", "p50", "p99", "budget")
	fmt.Printf("|%s|%s|%s|%s|\n", strings.Repeat("-", 54), strings.Repeat("-", 12), strings.Repeat("-", 12), strings.Repeat("-", 10))
	lat := func(name string, d []time.Duration, budget string) {
		fmt.Printf("| %-52s | %10s | %10s | %8s |\n", name, ms(percentile(d, 0.5)), ms(percentile(d, 0.99)), budget)
	}
	lat(fmt.Sprintf("weight patch -> last of %d proxies ACKs (%d updates)", c.proxies, len(t.total)), t.total, "100 ms")
	lat("  baseline: patch -> API server watch event", t.baseline, "")
	lat("  watch event -> config version with the change", t.compile, "")
	lat("  config version -> last proxy ACK (incl. debounce)", t.fanout, "")
	fmt.Printf("\nratio total/baseline at p50: %.1fx\n\n", float64(percentile(t.total, 0.5))/float64(percentile(t.baseline, 0.5)))
	fmt.Printf("| %-52s | %10s | %8s |\n", "measure", "value", "budget")
	fmt.Printf("|%s|%s|%s|\n", strings.Repeat("-", 54), strings.Repeat("-", 12), strings.Repeat("-", 10))
	row := func(name, value, budget string) { fmt.Printf("| %-52s | %10s | %8s |\n", name, value, budget) }
	row("create the objects (API server, 16 clients)", fmt.Sprintf("%.1f s", created.Seconds()), "")
	row(fmt.Sprintf("initial sync: %d proxies ACK the whole mesh", c.proxies), fmt.Sprintf("%.2f s", sync.Seconds()), "")
	row("heap after GC (operator + proxy clients)", fmt.Sprintf("%.0f MB", heap), "")
	row("heap per connected proxy (upper bound)", fmt.Sprintf("%.0f KB", heap*1024/float64(c.proxies)), "1024 KB")
	row("RSS of the benchmark process", fmt.Sprintf("%.0f MB", rss), "")
	row("CPU seconds of the benchmark process", fmt.Sprintf("%.1f s", cpu), "")
	fmt.Printf("\nThe operator and the simulated proxies share one process, so heap, RSS and CPU are upper\nbounds for the operator; kube-apiserver and etcd run apart and are not counted.\n")
}

func startProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); _ = f.Close() }, nil
}
