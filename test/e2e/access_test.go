package e2e

import (
	"context"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/test/harness"
)

// meshedService starts a meshed workload of ServiceAccount sa behind Service name (port
// 80): a Pod object (injected, with its ServiceAccount and IP), the Service's
// EndpointSlices pointing at the pod, the application on the pod's address, and a
// braid-proxy serving the pod's inbound port 15006 there, with a certificate of the
// ServiceAccount's identity.
func meshedService(ctx context.Context, t *testing.T, ca *harness.TestCA, ns, name, sa, ip string) {
	t.Helper()
	app, err := harness.StartBackendPort(name, ip, 8080)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = app.Close() })
	create(ctx, t, env.cp.Client, harness.Service(ns, name, 80))
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-0", Annotations: map[string]string{"braid.dev/injected": "true"}},
		Spec:       corev1.PodSpec{ServiceAccountName: sa, Containers: []corev1.Container{{Name: "app", Image: "app"}}},
	}
	create(ctx, t, env.cp.Client, pod)
	pod.Status = corev1.PodStatus{PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
	if err := env.cp.Client.Status().Update(ctx, pod); err != nil {
		t.Fatal(err)
	}
	for _, s := range harness.EndpointSlices(ns, name, app.Addr) {
		s.Endpoints[0].TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: pod.Name}
		create(ctx, t, env.cp.Client, s)
	}
	meshProxy(ctx, t, ca, ns, sa, "--inbound-listen", ip+":15006", "--app-host", ip)
}

// meshProxy starts a braid-proxy for ServiceAccount sa of ns, with its certificate.
func meshProxy(ctx context.Context, t *testing.T, ca *harness.TestCA, ns, sa string, extra ...string) *harness.Proxy {
	t.Helper()
	args, err := ca.ProxyArgs(t.TempDir(), ns, sa)
	if err != nil {
		t.Fatal(err)
	}
	args = append(args, "--service-account", sa, "--proxy-id", ns+"-"+sa)
	logs := &harness.LogBuffer{}
	p, err := harness.StartProxy(ctx, os.Getenv(proxyBinEnv), env.cp.ConfigAddr, ns, logs, append(args, extra...)...)
	if err != nil {
		t.Fatalf("%v\n%s", err, logs.String())
	}
	t.Cleanup(func() {
		_ = p.Stop()
		if t.Failed() {
			t.Logf("braid-proxy %s/%s logs:\n%s", ns, sa, logs.String())
		}
	})
	return p
}

// waitStatus sends GET path for host through p until the answer has status want.
func waitStatus(ctx context.Context, t *testing.T, p *harness.Proxy, host, path string, want int) harness.Result {
	t.Helper()
	var last harness.Result
	var lastErr error
	for ctx.Err() == nil {
		last, lastErr = p.Request(ctx, host, path, nil)
		if lastErr == nil && last.Status == want {
			return last
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("GET %s%s never answered %d; last %+v, %v", host, path, want, last, lastErr)
	return last
}

// SMI's access scenarios, end to end: a strict namespace denies with 403s (from the
// client's own proxy while no grant lets it reach the destination at all, from the server
// proxy for requests a grant does not cover) until TrafficTargets grant, on the client's
// verified identity, exactly what their routes allow.
func TestTrafficTargetsGovernMeshedTraffic(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ca, err := harness.NewTestCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	ns := "access"
	nsObj := harness.Namespace(ns)
	nsObj.Annotations = map[string]string{"braid.dev/access-control": "Strict"}
	create(ctx, t, env.cp.Client, nsObj)
	meshedService(ctx, t, ca, ns, "reviews", "reviews", harness.MeshAddr(40))
	web := meshProxy(ctx, t, ca, ns, "web")
	other := meshProxy(ctx, t, ca, ns, "intruder")
	host := "reviews." + ns

	// Scoped config: until a TrafficTarget admits web, its proxy knows reviews only as a
	// stub that says why it may not reach it: no endpoint, no identity.
	waitScope(ctx, t, web, ns, "reviews", false)
	// Scenario 1: strict, no TrafficTarget: 403, not a reset.
	res := waitStatus(ctx, t, web, host, "/echo", http.StatusForbidden)
	if !strings.Contains(res.Body, "spiffe://cluster.local/ns/access/sa/web") {
		t.Errorf("the denial must name the client identity: %q", res.Body)
	}

	// Scenario 2: TCPRoute without ports and a target reviews <- web: allowed.
	create(ctx, t, env.cp.Client, harness.TCPRoute(ns, "all"))
	tt := harness.TrafficTarget("access.smi-spec.io/v1alpha3", ns, "reviews-from-web", "reviews", []string{"web"}, harness.TargetRule{Kind: "TCPRoute", Name: "all"})
	create(ctx, t, env.cp.Client, tt)
	// The grant reveals reviews to web's proxy, under reviews' identity.
	waitScope(ctx, t, web, ns, "reviews", true)
	if res := waitStatus(ctx, t, web, host, "/echo", http.StatusOK); res.Body != "reviews" {
		t.Errorf("allowed request answered %q, want the reviews app", res.Body)
	}
	// Scenario 3: another source stays out.
	if res, err := other.Request(ctx, host, "/echo", nil); err != nil || res.Status != http.StatusForbidden {
		t.Errorf("intruder: %+v, %v; want 403", res, err)
	}
	if _, err := harness.WaitForCondition(ctx, env.cp.Client, tt, "Programmed", metav1.ConditionTrue, "Programmed"); err != nil {
		t.Error(err)
	}

	// Scenarios 4 and 5: a path rule replaces the L4 grant: GET /metrics only.
	create(ctx, t, env.cp.Client, harness.HTTPRouteGroup(ns, "routes", map[string]any{"name": "metrics", "pathRegex": "/metrics", "methods": []any{"GET"}}))
	patch := []byte(`{"spec":{"rules":[{"kind":"HTTPRouteGroup","name":"routes","matches":["metrics"]}]}}`)
	if err := env.cp.Client.Patch(ctx, tt, client.RawPatch("application/merge-patch+json", patch)); err != nil {
		t.Fatal(err)
	}
	waitStatus(ctx, t, web, host, "/echo", http.StatusForbidden)
	waitStatus(ctx, t, web, host, "/metrics", http.StatusOK)

	// Deleting the target denies again.
	if err := env.cp.Client.Delete(ctx, tt); err != nil {
		t.Fatal(err)
	}
	waitStatus(ctx, t, web, host, "/metrics", http.StatusForbidden)
}

// waitScope waits until p's config holds Service namespace/name whole, under the identity
// of its ServiceAccount of the same name (reachable), or as a denied stub without routes.
func waitScope(ctx context.Context, t *testing.T, p *harness.Proxy, namespace, name string, reachable bool) {
	t.Helper()
	identity := "spiffe://cluster.local/ns/" + namespace + "/sa/" + name
	if _, err := p.WaitForConfig(ctx, func(s *api.Snapshot) bool {
		svc := findService(s, namespace, name)
		if !reachable {
			return svc != nil && svc.GetDenied() != "" && len(svc.GetPorts()) == 1 && len(svc.GetPorts()[0].GetRoutes()) == 0
		}
		port := harness.FindPort(s, namespace, name, 80)
		return svc.GetDenied() == "" && port != nil && len(harness.Backends(port)) == 1 &&
			len(harness.Backends(port)[0].GetEndpoints()) == 1 && harness.Backends(port)[0].GetEndpoints()[0].GetIdentity() == identity
	}); err != nil {
		t.Fatalf("%s/%s never became %s in the config of the client proxy: %v", namespace, name, map[bool]string{true: "reachable", false: "a denied stub"}[reachable], err)
	}
}

// findService returns the Service namespace/name of a snapshot, or nil.
func findService(s *api.Snapshot, namespace, name string) *api.Service {
	for _, svc := range s.GetServices() {
		if svc.GetNamespace() == namespace && svc.GetName() == name {
			return svc
		}
	}
	return nil
}
