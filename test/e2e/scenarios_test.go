package e2e

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/braidmesh/braid/internal/mesh"
	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/test/harness"
)

// The acceptance scenarios of smi-spec.md §9 that the other e2e tests do not already walk
// through with real traffic (1–4: access_test.go; 15: abtest_test.go; 16: compat_test.go
// and test/crds; 17: controllers and internal/mesh; 18: the TrafficMetrics API tests).

// call is one request of a scenario and the status the mesh must answer.
type call struct {
	method, path string
	header       http.Header
	want         int
}

// expectCalls polls the first call until it answers as wanted (the policy has reached both
// proxies), then checks the others once each.
func expectCalls(ctx context.Context, t *testing.T, p *harness.Proxy, host string, calls ...call) {
	t.Helper()
	var last harness.Result
	var lastErr error
	seen := map[string]int{} // what the proxy answered meanwhile, for a failure's message
	for first := calls[0]; ; time.Sleep(20 * time.Millisecond) {
		if last, lastErr = p.Send(ctx, first.method, host, first.path, first.header); lastErr == nil && last.Status == first.want {
			break
		}
		seen[answerOf(last, lastErr)]++
		if ctx.Err() != nil {
			t.Fatalf("%s %s%s %v never answered %d; last %+v, %v; answers meanwhile: %v", first.method, host, first.path, first.header, first.want, last, lastErr, seen)
		}
	}
	for _, c := range calls[1:] {
		res, err := p.Send(ctx, c.method, host, c.path, c.header)
		if err != nil || res.Status != c.want {
			t.Errorf("%s %s%s %v answered %+v, %v; want %d", c.method, host, c.path, c.header, res, err, c.want)
		}
	}
}

// replaceTarget deletes the previous target (waiting until the client is denied again, so
// no grant of a previous step lingers) and creates tt.
func replaceTarget(ctx context.Context, t *testing.T, client *harness.Proxy, host string, old, tt *unstructured.Unstructured) {
	t.Helper()
	if old != nil {
		if err := env.cp.Client.Delete(ctx, old); err != nil {
			t.Fatal(err)
		}
		expectCalls(ctx, t, client, host, call{method: http.MethodGet, path: "/", want: http.StatusForbidden})
	}
	create(ctx, t, env.cp.Client, tt)
}

// answerOf sums up one answer for expectCalls' tally: its status and the start of its
// body, or the start of its error.
func answerOf(r harness.Result, err error) string {
	if err != nil {
		return "error: " + prefix(err.Error(), 80)
	}
	return fmt.Sprintf("%d %s", r.Status, prefix(r.Body, 80))
}

func prefix(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func header(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	return h
}

// SMI scenarios 5–8: method rules, a rule without matches, header logic, L4 ports; with
// real proxies over mTLS in a strict namespace.
func TestSMIAccessScenarios(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	ca, err := harness.NewTestCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	ns := "smi-access"
	nsObj := harness.Namespace(ns)
	nsObj.Annotations = map[string]string{"braid.dev/access-control": "Strict"}
	create(ctx, t, env.cp.Client, nsObj)
	ip := harness.MeshAddr(41)
	meshedService(ctx, t, ca, ns, "b", "b", ip)
	secondPort(ctx, t, ns, "b-tcp", "b-0", ip, 8300)
	a := meshProxy(ctx, t, ca, ns, "a")
	host := "b." + ns
	target := func(name string, rules ...harness.TargetRule) *unstructured.Unstructured {
		return harness.TrafficTarget("access.smi-spec.io/v1alpha3", ns, name, "b", []string{"a"}, rules...)
	}
	get := func(path string, want int, kv ...string) call {
		return call{method: http.MethodGet, path: path, header: header(kv...), want: want}
	}
	expectCalls(ctx, t, a, host, get("/", http.StatusForbidden))

	// Scenario 5: match ".*" with methods [GET]: GET is allowed, POST is not.
	create(ctx, t, env.cp.Client, harness.HTTPRouteGroup(ns, "get-only", map[string]any{"name": "all-get", "pathRegex": ".*", "methods": []any{"GET"}}))
	tt5 := target("scenario-5", harness.TargetRule{Kind: "HTTPRouteGroup", Name: "get-only", Matches: []string{"all-get"}})
	create(ctx, t, env.cp.Client, tt5)
	expectCalls(ctx, t, a, host, get("/anything", http.StatusOK),
		call{method: http.MethodPost, path: "/anything", want: http.StatusForbidden})

	// Scenario 6: a rule without matches admits every match of its group.
	create(ctx, t, env.cp.Client, harness.HTTPRouteGroup(ns, "two",
		map[string]any{"name": "metrics", "pathRegex": "/metrics", "methods": []any{"GET"}},
		map[string]any{"name": "health", "pathRegex": "/health", "methods": []any{"GET"}}))
	tt6 := target("scenario-6", harness.TargetRule{Kind: "HTTPRouteGroup", Name: "two"})
	replaceTarget(ctx, t, a, host, tt5, tt6)
	expectCalls(ctx, t, a, host, get("/metrics", http.StatusOK), get("/health", http.StatusOK), get("/other", http.StatusForbidden))

	// Scenario 7: the headers of one match are ANDed, matches are ORed.
	create(ctx, t, env.cp.Client, harness.HTTPRouteGroup(ns, "headers",
		map[string]any{"name": "android-insider", "headers": map[string]any{"user-agent": ".*Android.*", "cookie": "type=insider"}},
		map[string]any{"name": "firefox", "headers": map[string]any{"user-agent": ".*Firefox.*"}}))
	tt7 := target("scenario-7", harness.TargetRule{Kind: "HTTPRouteGroup", Name: "headers", Matches: []string{"android-insider"}})
	replaceTarget(ctx, t, a, host, tt6, tt7)
	android := "Mozilla/5.0 (Linux; Android 14)"
	expectCalls(ctx, t, a, host,
		get("/", http.StatusOK, "User-Agent", android, "Cookie", "type=insider"),
		get("/", http.StatusForbidden, "User-Agent", android),
		get("/", http.StatusForbidden, "User-Agent", "curl/8", "Cookie", "type=insider"),
		get("/", http.StatusForbidden, "User-Agent", "Mozilla/5.0 Firefox/130.0"))
	patch := []byte(`{"spec":{"rules":[{"kind":"HTTPRouteGroup","name":"headers","matches":["android-insider","firefox"]}]}}`)
	if err := env.cp.Client.Patch(ctx, tt7, client.RawPatch(types.MergePatchType, patch)); err != nil {
		t.Fatal(err)
	}
	expectCalls(ctx, t, a, host,
		get("/", http.StatusOK, "User-Agent", "Mozilla/5.0 Firefox/130.0"),
		get("/", http.StatusOK, "User-Agent", android, "Cookie", "type=insider"),
		get("/", http.StatusForbidden, "User-Agent", android))

	// Scenario 8: TCPRoute ports [8301, 8302, 8300] admit the workload's port 8300 (b-tcp)
	// and not its port 8080 (b). The UDPRoute's ports are compiled and reported; the proxy
	// carries no UDP (see internal/mesh testdata l4-ports-tcp-udp for UDP 8300 vs 8301).
	create(ctx, t, env.cp.Client, harness.TCPRoute(ns, "tcp-ports", 8301, 8302, 8300))
	create(ctx, t, env.cp.Client, harness.UDPRoute(ns, "udp-ports", 8301, 8302))
	tt8 := target("scenario-8", harness.TargetRule{Kind: "TCPRoute", Name: "tcp-ports"}, harness.TargetRule{Kind: "UDPRoute", Name: "udp-ports"})
	replaceTarget(ctx, t, a, host, tt7, tt8)
	expectCalls(ctx, t, a, "b-tcp."+ns, get("/", http.StatusOK))
	if res, err := a.Request(ctx, host, "/", nil); err != nil || res.Status != http.StatusForbidden || !strings.Contains(res.Body, "port 8080") {
		t.Errorf("port 8080, which no TCPRoute lists: %+v, %v; want a 403 naming the port", res, err)
	}
	if _, err := harness.WaitForCondition(ctx, env.cp.Client, tt8, "Programmed", metav1.ConditionTrue, "Programmed"); err != nil {
		t.Error(err)
	}
}

// secondPort serves another port of the meshed pod podName at ip, behind its own Service.
func secondPort(ctx context.Context, t *testing.T, ns, service, podName, ip string, port int) {
	t.Helper()
	app, err := harness.StartBackendPort(service, ip, port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = app.Close() })
	create(ctx, t, env.cp.Client, harness.Service(ns, service, 80))
	for _, s := range harness.EndpointSlices(ns, service, app.Addr) {
		s.Endpoints[0].TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: podName}
		create(ctx, t, env.cp.Client, s)
	}
}

// waitOnly waits until the proxy sends every request for app-svc's port 80 to backend alone.
func waitOnly(ctx context.Context, t *testing.T, ns, backend string) {
	const root = "app-svc"
	t.Helper()
	if _, err := env.proxy.WaitForConfig(ctx, func(s *api.Snapshot) bool {
		w := harness.Weights(s, ns, root, 80)
		if w[backend] == 0 {
			return false
		}
		for name, weight := range w {
			if name != backend && weight != 0 {
				return false
			}
		}
		return true
	}); err != nil {
		t.Fatalf("the proxy never sent %s/%s to %s alone: %v", ns, root, backend, err)
	}
}

// SMI scenarios 9–14 with the smi-spec.md numbers: 1/0, the flip, ratios, no split, a
// missing backend, a backend lacking the root's port.
func TestSMISplitScenarios(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	ns := "smi-split"
	b, c, x := backend(t, "b"), backend(t, "c"), backend(t, "x")
	app(ctx, t, ns, map[string][]*harness.Backend{"app-svc": {b, c}, "b": {b}, "c": {c}})
	// x serves only port 1024: the root's port 80 has no counterpart there.
	create(ctx, t, env.cp.Client, harness.Service(ns, "x", 1024))
	setEndpoints(ctx, t, ns, "x", x)
	host := "app-svc." + ns

	// Scenario 12: no split: app-svc balances over b and c.
	if _, err := env.proxy.WaitForConfig(ctx, func(s *api.Snapshot) bool {
		p := harness.FindPort(s, ns, "app-svc", 80)
		return p != nil && len(harness.Backends(p)) == 1 && len(harness.Backends(p)[0].GetEndpoints()) == 2
	}); err != nil {
		t.Fatal(err)
	}
	if counts := spread(ctx, t, host, 200); counts["b"] == 0 || counts["c"] == 0 || counts["b"]+counts["c"] != 200 {
		t.Errorf("scenario 12: without a split both must answer all 200 requests: %s", harness.FormatCounts(counts))
	}

	split := harness.TrafficSplit("split.smi-spec.io/v1alpha4", ns, "app-split", "app-svc",
		harness.Weighted{Service: "b", Weight: 1}, harness.Weighted{Service: "c", Weight: 0})
	create(ctx, t, env.cp.Client, split)
	allOn(ctx, t, ns, "scenario 9 (1/0)", "b")
	// Scenario 10: the flip.
	setWeights(ctx, t, split, harness.Weighted{Service: "b", Weight: 0}, harness.Weighted{Service: "c", Weight: 1})
	allOn(ctx, t, ns, "scenario 10 (0/1)", "c")

	// Scenario 11: 75/25 over 500 requests gives b 75% ± 5; 1000/500 about 67/33.
	for _, r := range []struct {
		b, c int
		want float64
	}{{75, 25, 0.75}, {1000, 500, 2.0 / 3}} {
		setWeights(ctx, t, split, harness.Weighted{Service: "b", Weight: r.b}, harness.Weighted{Service: "c", Weight: r.c})
		waitShares(ctx, t, ns, "app-svc", map[string]int64{"b": int64(r.b), "c": int64(r.c)})
		counts := spread(ctx, t, host, 500)
		if share := harness.Share(counts, "b"); math.Abs(share-r.want) > 0.05 || counts["b"]+counts["c"] != 500 {
			t.Errorf("scenario 11: weights %d/%d over 500 requests: %s, b at %.1f%%, want %.1f%% ± 5", r.b, r.c, harness.FormatCounts(counts), 100*share, 100*r.want)
		}
	}

	// Scenario 13: a backend that does not exist yet, at weight 0: accepted, no error,
	// everything on the existing backend.
	setWeights(ctx, t, split, harness.Weighted{Service: "b", Weight: 1}, harness.Weighted{Service: "not-yet", Weight: 0})
	expectAccepted(ctx, t, types.NamespacedName{Namespace: ns, Name: "app-split"}, metav1.ConditionTrue, mesh.ReasonAccepted)
	allOn(ctx, t, ns, "scenario 13 (missing backend at 0)", "b")

	// Scenario 14: x lacks the root's port 80: it gets no traffic, and a Warning Event
	// says why.
	setWeights(ctx, t, split, harness.Weighted{Service: "b", Weight: 50}, harness.Weighted{Service: "x", Weight: 50})
	waitLacksPortEvent(ctx, t, ns, "app-split")
	allOn(ctx, t, ns, "scenario 14 (backend lacking the port)", "b")
}

func setWeights(ctx context.Context, t *testing.T, split *unstructured.Unstructured, backends ...harness.Weighted) {
	t.Helper()
	if err := harness.SetWeights(ctx, env.cp.Client, split, backends...); err != nil {
		t.Fatal(err)
	}
}

// allOn waits until the proxy sends app-svc's traffic to backend alone, then checks that
// 50 of 50 requests reach it.
func allOn(ctx context.Context, t *testing.T, ns, scenario, backend string) {
	t.Helper()
	waitOnly(ctx, t, ns, backend)
	if counts := spread(ctx, t, "app-svc."+ns, 50); counts[backend] != 50 {
		t.Errorf("%s: want 50 of 50 on %s, got %s", scenario, backend, harness.FormatCounts(counts))
	}
}

// waitLacksPortEvent waits for the Warning Event that a split's backend lacks its root's port.
func waitLacksPortEvent(ctx context.Context, t *testing.T, ns, split string) {
	t.Helper()
	for ; ; time.Sleep(50 * time.Millisecond) {
		var list eventsv1.EventList
		if err := env.cp.Client.List(ctx, &list, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		for _, e := range list.Items {
			if e.Regarding.Kind == "TrafficSplit" && e.Regarding.Name == split && e.Type == corev1.EventTypeWarning && e.Reason == mesh.ReasonBackendLacksPort {
				return
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("no Warning Event %s on TrafficSplit %s; events: %v", mesh.ReasonBackendLacksPort, split, list.Items)
		}
	}
}
