package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	metricsv1alpha2 "github.com/servicemeshinterface/smi-sdk-go/pkg/apis/metrics/v1alpha2"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/braidmesh/braid/internal/metricsapi"
	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/test/harness"
)

// metricsWorkload is a meshed Deployment of one pod: the Deployment, its ReplicaSet and
// pod (owned as the Deployment controller would own them, with the pod's IP), a Service
// of the same name whose EndpointSlice points at the pod, and, when it serves, the
// application on the pod's address (200 on every path, 500 on /fail) behind a
// braid-proxy with the ServiceAccount's certificate.
type metricsWorkload struct {
	pod   *corev1.Pod
	addr  netip.AddrPort
	proxy *harness.Proxy
}

func deployWorkload(ctx context.Context, t *testing.T, ca *harness.TestCA, ns, name, ip string, serves bool) *metricsWorkload {
	t.Helper()
	labels := map[string]string{"app": name}
	template := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: labels},
		Spec:       corev1.PodSpec{ServiceAccountName: name, Containers: []corev1.Container{{Name: "app", Image: "app"}}},
	}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec:       appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: template},
	}
	create(ctx, t, env.cp.Client, dep)
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-7f9c", Labels: labels, OwnerReferences: []metav1.OwnerReference{
			{APIVersion: "apps/v1", Kind: "Deployment", Name: dep.Name, UID: dep.UID, Controller: ptr.To(true)},
		}},
		Spec: appsv1.ReplicaSetSpec{Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: template},
	}
	create(ctx, t, env.cp.Client, rs)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ns, Name: rs.Name + "-x2k4", Labels: labels, Annotations: map[string]string{"braid.dev/injected": "true"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: rs.Name, UID: rs.UID, Controller: ptr.To(true)}},
		},
		Spec: template.Spec,
	}
	create(ctx, t, env.cp.Client, pod)
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
	if err := env.cp.Client.Status().Update(ctx, pod); err != nil {
		t.Fatal(err)
	}
	w := &metricsWorkload{pod: pod}
	if !serves {
		w.proxy = meshProxy(ctx, t, ca, ns, name)
		return w
	}
	w.addr = serveApp(t, name, ip)
	create(ctx, t, env.cp.Client, harness.Service(ns, name, 80))
	for _, s := range harness.EndpointSlices(ns, name, w.addr) {
		s.Endpoints[0].TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: pod.Name}
		create(ctx, t, env.cp.Client, s)
	}
	w.proxy = meshProxy(ctx, t, ca, ns, name, "--inbound-listen", ip+":15006", "--app-host", ip)
	return w
}

// serveApp answers its name on every path but /fail, which answers 500, on ip:8080.
func serveApp(t *testing.T, name, ip string) netip.AddrPort {
	t.Helper()
	lis, err := net.Listen("tcp", net.JoinHostPort(ip, "8080"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fail" {
			http.Error(w, name+" failed", http.StatusInternalServerError)
			return
		}
		_, _ = io.WriteString(w, name+"\n")
	})}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { _ = srv.Close() })
	return netip.MustParseAddrPort(lis.Addr().String())
}

// startMetricsAPI serves the TrafficMetrics API on its own address, registers it with
// the API server through an APIService, and returns its address. It asks each pod's proxy
// at the admin address admin maps the pod's name to.
func startMetricsAPI(ctx context.Context, t *testing.T, admin map[string]string) netip.AddrPort {
	t.Helper()
	fp := env.cp.FrontProxy
	cert, err := fp.ServingCert("braid-operator.braid-system.svc")
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", net.JoinHostPort(harness.MeshAddr(45), "0"))
	if err != nil {
		t.Fatal(err)
	}
	h := metricsapi.NewHandler(metricsapi.Options{
		Reader: env.cp.Client,
		AdminAddr: func(p *corev1.Pod) (string, bool) {
			a, ok := admin[p.Name]
			return a, ok
		},
		Authenticator: &metricsapi.FrontProxy{Load: metricsapi.ConfigMapLoader(env.cp.Client), Clock: clock.RealClock{}},
		Authorizer:    metricsapi.SubjectAccessReviews{Client: env.cp.Client},
		Log:           testr.New(t),
	})
	sctx, cancel := context.WithCancel(ctx)
	srv := &metricsapi.Server{Listener: lis, GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &cert, nil }, Handler: h, Log: testr.New(t)}
	done := make(chan error, 1)
	go func() { done <- srv.Start(sctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	addr := netip.MustParseAddrPort(lis.Addr().String())
	// The control plane outlives this test: an APIService left behind without its server
	// would make the API server's discovery report a failing group to later tests.
	t.Cleanup(func() {
		apiService := &unstructured.Unstructured{}
		apiService.SetAPIVersion("apiregistration.k8s.io/v1")
		apiService.SetKind("APIService")
		apiService.SetName(metricsapi.Version + "." + metricsapi.Group)
		if err := env.cp.Client.Delete(context.WithoutCancel(ctx), apiService); err != nil {
			t.Errorf("deleting the APIService: %v", err)
		}
	})
	if err := harness.RegisterAPIService(ctx, env.cp.RestConfig, env.cp.Client, harness.APIServiceBackend{
		Group: metricsapi.Group, Version: metricsapi.Version, Namespace: "braid-system", Service: "braid-operator",
		Addr: addr, CABundle: fp.CAPEM,
	}); err != nil {
		t.Fatal(err)
	}
	return addr
}

// getRaw GETs path from the API server as cfg's user, as kubectl get --raw does.
func getRaw(ctx context.Context, t *testing.T, cfg *rest.Config, path string) (int, []byte) {
	t.Helper()
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(cfg.Host, "/")+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

func getMetricsList(ctx context.Context, t *testing.T, path string) *metricsv1alpha2.TrafficMetricsList {
	t.Helper()
	code, body := getRaw(ctx, t, env.cp.RestConfig, path)
	if code != http.StatusOK {
		t.Fatalf("GET %s: HTTP %d: %s", path, code, body)
	}
	var list metricsv1alpha2.TrafficMetricsList
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatalf("GET %s: %v: %s", path, err, body)
	}
	if list.Kind != "TrafficMetricsList" || list.APIVersion != metricsapi.APIVersion {
		t.Errorf("GET %s: kind %s %s, want TrafficMetricsList %s", path, list.Kind, list.APIVersion, metricsapi.APIVersion)
	}
	return &list
}

// value returns a metric of an item: counts as integers, latencies in milliseconds.
func value(t *testing.T, item *metricsv1alpha2.TrafficMetrics, name string) float64 {
	t.Helper()
	m := item.Get(name)
	if m == nil || m.Value == nil {
		t.Fatalf("item %s (edge %+v) has no %s", item.Name, item.Edge, name)
		return 0
	}
	return m.Value.AsApproximateFloat64()
}

// edgeFrom returns the item of the list whose edge has direction dir and names peer.
func edgeFrom(list *metricsv1alpha2.TrafficMetricsList, dir metricsv1alpha2.Direction, kind, ns, peer string) *metricsv1alpha2.TrafficMetrics {
	for _, it := range list.Items {
		if e := it.Edge; e != nil && e.Direction == dir && e.Resource != nil && e.Resource.Kind == kind && e.Resource.Namespace == ns && e.Resource.Name == peer {
			return it
		}
	}
	return nil
}

func sendN(ctx context.Context, t *testing.T, p *harness.Proxy, host, path string, n, want int) {
	t.Helper()
	for range n {
		res, err := p.Request(ctx, host, path, nil)
		if err != nil || res.Status != want {
			t.Fatalf("GET %s%s: %+v, %v; want %d", host, path, res, err, want)
		}
	}
}

// metricsScene is scenario 18's world: a client Deployment app-a, two serving
// Deployments app-b and app-c behind a root Service app, and the metrics API.
type metricsScene struct {
	ns, base string
	a, b, c  *metricsWorkload
	server   netip.AddrPort
}

// The counts the scene's traffic gives app-b, after the baseline.
const sentOK, sentFailed = 20, 5

// Acceptance scenario 18: kubectl get --raw /apis/metrics.smi-spec.io/v1alpha1/namespaces/
// <ns>/deployments/app-b/edges, through the API server's aggregation layer, answers what
// real proxies measured of real traffic, per peer Deployment; a TrafficSplit answers one
// item per backend.
func TestTrafficMetricsThroughTheAggregator(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ca, err := harness.NewTestCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	s := &metricsScene{ns: "smi-metrics"}
	s.base = "/apis/metrics.smi-spec.io/v1alpha1/namespaces/" + s.ns
	create(ctx, t, env.cp.Client, harness.Namespace(s.ns))
	s.b = deployWorkload(ctx, t, ca, s.ns, "app-b", harness.MeshAddr(42), true)
	s.c = deployWorkload(ctx, t, ca, s.ns, "app-c", harness.MeshAddr(43), true)
	s.a = deployWorkload(ctx, t, ca, s.ns, "app-a", harness.MeshAddr(46), false)
	// The root Service of the split selects both versions.
	create(ctx, t, env.cp.Client, harness.Service(s.ns, "app", 80))
	for _, sl := range harness.EndpointSlices(s.ns, "app", s.b.addr, s.c.addr) {
		sl.Endpoints[0].TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: s.ns, Name: s.b.pod.Name}
		sl.Endpoints[1].TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: s.ns, Name: s.c.pod.Name}
		create(ctx, t, env.cp.Client, sl)
	}
	s.server = startMetricsAPI(ctx, t, map[string]string{s.b.pod.Name: s.b.proxy.AdminAddr, s.c.pod.Name: s.c.proxy.AdminAddr, s.a.pod.Name: s.a.proxy.AdminAddr})
	// The client reaches app-b through its proxy; app-b's inbound policy is in force too.
	waitStatus(ctx, t, s.a.proxy, "app-b."+s.ns, "/echo", http.StatusOK)
	waitStatus(ctx, t, s.b.proxy, "app-b."+s.ns, "/echo", http.StatusOK)

	t.Run("deployment edges", func(t *testing.T) { deploymentEdges(ctx, t, s) })
	t.Run("client side edges", func(t *testing.T) { clientEdges(ctx, t, s) })
	t.Run("traffic split per backend", func(t *testing.T) { splitPerBackend(ctx, t, s) })
	t.Run("lists and namespaces", func(t *testing.T) { listsAndNamespaces(ctx, t, s) })
	t.Run("unknown name is a 404 Status", func(t *testing.T) {
		code, body := getRaw(ctx, t, env.cp.RestConfig, s.base+"/deployments/missing/edges")
		var st metav1.Status
		if err := json.Unmarshal(body, &st); err != nil || code != http.StatusNotFound || st.Kind != "Status" || st.Reason != metav1.StatusReasonNotFound {
			t.Errorf("HTTP %d %s, want a NotFound Status", code, body)
		}
	})
	t.Run("refusals", func(t *testing.T) { metricsRefusals(ctx, t, s.ns, s.server) })
}

// deploymentEdges: app-a's requests to app-b, counted by app-b's proxy, under an edge
// from Deployment app-a.
func deploymentEdges(ctx context.Context, t *testing.T, s *metricsScene) {
	path := s.base + "/deployments/app-b/edges?window=5m"
	before := edgeFrom(getMetricsList(ctx, t, path), metricsv1alpha2.From, "Deployment", s.ns, "app-a")
	if before == nil {
		t.Fatal("app-b has no edge from Deployment app-a after the first request")
	}
	sendN(ctx, t, s.a.proxy, "app-b."+s.ns, "/echo", sentOK, http.StatusOK)
	sendN(ctx, t, s.a.proxy, "app-b."+s.ns, "/fail", sentFailed, http.StatusInternalServerError)
	list := getMetricsList(ctx, t, path)
	if list.Resource == nil || list.Resource.Kind != "Deployment" || list.Resource.Name != "app-b" {
		t.Errorf("list resource %+v, want Deployment app-b", list.Resource)
	}
	it := edgeFrom(list, metricsv1alpha2.From, "Deployment", s.ns, "app-a")
	if it == nil {
		t.Fatalf("no edge from Deployment %s/app-a in %+v", s.ns, list.Items)
	}
	if it.Edge.Side != metricsv1alpha2.Server || it.Window.Duration != 5*time.Minute || it.Timestamp.IsZero() {
		t.Errorf("edge %+v window %v timestamp %v: want the server side, 5m, a timestamp", it.Edge, it.Window, it.Timestamp)
	}
	if got := value(t, it, metricsapi.MetricSuccess) - value(t, before, metricsapi.MetricSuccess); got != sentOK {
		t.Errorf("success_count rose by %v, want %v", got, sentOK)
	}
	if got := value(t, it, metricsapi.MetricFailure) - value(t, before, metricsapi.MetricFailure); got != sentFailed {
		t.Errorf("failure_count rose by %v, want %v", got, sentFailed)
	}
	expectLatencies(t, it)
	// The default window is the SDK's 30 s.
	if d := getMetricsList(ctx, t, s.base+"/deployments/app-b/edges"); len(d.Items) == 0 || d.Items[0].Window.Duration != 30*time.Second {
		t.Errorf("default window: %+v", d.Items)
	}
}

// expectLatencies checks the three percentiles are positive milliseconds.
func expectLatencies(t *testing.T, it *metricsv1alpha2.TrafficMetrics) {
	t.Helper()
	for _, m := range []string{metricsapi.MetricP50, metricsapi.MetricP90, metricsapi.MetricP99} {
		if v := value(t, it, m); v <= 0 || it.Get(m).Unit != metricsv1alpha2.MilliSeconds {
			t.Errorf("%s = %v %s, want a positive number of ms", m, v, it.Get(m).Unit)
		}
	}
}

// clientEdges: the same requests, counted by app-a's proxy, under an edge to app-b.
func clientEdges(ctx context.Context, t *testing.T, s *metricsScene) {
	list := getMetricsList(ctx, t, s.base+"/deployments/app-a/edges?window=5m")
	it := edgeFrom(list, metricsv1alpha2.To, "Deployment", s.ns, "app-b")
	if it == nil || it.Edge.Side != metricsv1alpha2.Client {
		t.Fatalf("no client-side edge to Deployment app-b in %+v", list.Items)
	}
	if sc, f := value(t, it, metricsapi.MetricSuccess), value(t, it, metricsapi.MetricFailure); sc < sentOK || f != sentFailed {
		t.Errorf("client side: %v successes, %v failures; want at least %d and %d", sc, f, sentOK, sentFailed)
	}
}

// listsAndNamespaces: a list answers one item per Deployment (a label selector filters
// them), and a namespace counts what all its pods served.
func listsAndNamespaces(ctx context.Context, t *testing.T, s *metricsScene) {
	list := getMetricsList(ctx, t, s.base+"/deployments?window=5m")
	served := map[string]float64{}
	for _, it := range list.Items {
		served[it.Resource.Name] = value(t, it, metricsapi.MetricSuccess)
	}
	if len(served) != 3 || served["app-b"] < sentOK || served["app-a"] != 0 {
		t.Errorf("deployments served %v: want app-a, app-b and app-c, app-b at least %d, the client app-a none", served, sentOK)
	}
	if only := getMetricsList(ctx, t, s.base+"/deployments?labelSelector=app%3Dapp-c"); len(only.Items) != 1 || only.Items[0].Resource.Name != "app-c" {
		t.Errorf("labelSelector app=app-c: %+v", only.Items)
	}
	code, body := getRaw(ctx, t, env.cp.RestConfig, s.base+"?window=5m")
	var nsItem metricsv1alpha2.TrafficMetrics
	if err := json.Unmarshal(body, &nsItem); err != nil || code != http.StatusOK || nsItem.Resource == nil || nsItem.Resource.Kind != "Namespace" {
		t.Fatalf("namespace %s: HTTP %d %s", s.ns, code, body)
	}
	if got := value(t, &nsItem, metricsapi.MetricSuccess); got != served["app-b"]+served["app-c"] {
		t.Errorf("namespace success_count %v, want the sum of its deployments' %v", got, served["app-b"]+served["app-c"])
	}
}

// splitPerBackend: a 3:1 split of the root Service; each backend's item counts exactly
// the requests the split sent it.
func splitPerBackend(ctx context.Context, t *testing.T, s *metricsScene) {
	create(ctx, t, env.cp.Client, harness.TrafficSplit("split.smi-spec.io/v1alpha2", s.ns, "app-split", "app",
		harness.Weighted{Service: "app-b", Weight: 3}, harness.Weighted{Service: "app-c", Weight: 1}))
	if _, err := s.a.proxy.WaitForConfig(ctx, func(snap *api.Snapshot) bool {
		return harness.SameShares(harness.Weights(snap, s.ns, "app", 80), map[string]int64{"app-b": 3, "app-c": 1})
	}); err != nil {
		t.Fatal(err)
	}
	byBackend := func() map[string]*metricsv1alpha2.TrafficMetrics {
		out := map[string]*metricsv1alpha2.TrafficMetrics{}
		for _, it := range getMetricsList(ctx, t, s.base+"/trafficsplits/app-split?window=5m").Items {
			if it.Backend == nil {
				t.Fatalf("split item without backend: %+v", it)
			}
			out[it.Backend.Name] = it
		}
		return out
	}
	start := byBackend()
	counts, err := s.a.proxy.Spread(ctx, "app."+s.ns, 40)
	if err != nil {
		t.Fatal(err)
	}
	end := byBackend()
	for name, weight := range map[string]int{"app-b": 3, "app-c": 1} {
		it := end[name]
		if it == nil || it.Backend.Apex != "app" || it.Backend.Weight != weight || it.Resource.Kind != "Service" {
			t.Fatalf("backend %s: %+v, want apex app, weight %d", name, it, weight)
		}
		if got := value(t, it, metricsapi.MetricSuccess) - value(t, start[name], metricsapi.MetricSuccess); got != float64(counts[name]) {
			t.Errorf("backend %s: success_count rose by %v, the split sent it %d (%s)", name, got, counts[name], harness.FormatCounts(counts))
		}
	}
}

func metricsRefusals(ctx context.Context, t *testing.T, ns string, server netip.AddrPort) {
	path := "/apis/metrics.smi-spec.io/v1alpha1/namespaces/" + ns + "/deployments/app-b/edges"
	direct := func(cert *tls.Certificate, user string) (int, metav1.Status) {
		cfg := &tls.Config{InsecureSkipVerify: true} //nolint:gosec // the refusal, not the server, is under test
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+server.String()+path, nil)
		req.Header.Set("X-Remote-User", user)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		var st metav1.Status
		_ = json.NewDecoder(resp.Body).Decode(&st)
		return resp.StatusCode, st
	}
	// Straight to the server without the front proxy's certificate: the headers count for nothing.
	if code, st := direct(nil, "admin"); code != http.StatusUnauthorized || st.Reason != metav1.StatusReasonUnauthorized {
		t.Errorf("without a client certificate: HTTP %d %+v, want 401", code, st)
	}
	// With the front proxy's certificate, a user RBAC grants nothing is refused by the
	// server's own SubjectAccessReview.
	if code, st := direct(&env.cp.FrontProxy.Client, "nobody"); code != http.StatusForbidden || st.Reason != metav1.StatusReasonForbidden {
		t.Errorf("user nobody through the front proxy certificate: HTTP %d %+v, want 403", code, st)
	}
	// Through the API server, a user without RBAC on metrics.smi-spec.io gets a 403.
	stranger := envtest.User{Name: "metrics-stranger-" + strconv.Itoa(int(time.Now().UnixNano()%1000))}
	user, err := env.cp.Env.AddUser(stranger, nil)
	if err != nil {
		t.Fatal(err)
	}
	if code, body := getRaw(ctx, t, user.Config(), path); code != http.StatusForbidden {
		t.Errorf("a user without RBAC: HTTP %d %s, want 403", code, body)
	}
	// Granted get on deployments/edges in the namespace, the same user is answered: the
	// API server and the server's SubjectAccessReview both admit it.
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "edges-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{metricsapi.Group}, Resources: []string{"deployments/edges"}, Verbs: []string{"get"}}},
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "edges-reader"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: stranger.Name}},
	}
	create(ctx, t, env.cp.Client, role)
	create(ctx, t, env.cp.Client, binding)
	for {
		code, body := getRaw(ctx, t, user.Config(), path)
		if code == http.StatusOK {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("a user granted deployments/edges: HTTP %d %s, want 200", code, body)
		}
		time.Sleep(20 * time.Millisecond) // RBAC reaches the authorizer's cache shortly after the write
	}
}
