package controllers_test

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	braidv1alpha1 "github.com/braidmesh/braid/api/v1alpha1"
	"github.com/braidmesh/braid/internal/mesh"
	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/test/harness"
)

// accessNamespace creates a namespace for the test in the given access mode.
func accessNamespace(ctx context.Context, t *testing.T, mode braidv1alpha1.AccessMode) string {
	t.Helper()
	name := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(name) > 50 {
		name = name[:50]
	}
	ns := harness.Namespace(name)
	ns.Annotations = map[string]string{braidv1alpha1.AccessControlAnnotation: string(mode)}
	mustCreate(ctx, t, ns)
	// Proxies that connect from now on get the namespace's compiled policy, not the
	// deny-everything stand-in of a namespace the server does not know yet.
	for {
		if p, ok := cp.ConfigServer.Policy(name); ok && p.Default.GetMode() == string(mode) {
			return name
		}
		select {
		case <-ctx.Done():
			t.Fatalf("namespace %s's policy was never compiled in mode %s", name, mode)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func wantCondition(ctx context.Context, t *testing.T, obj *unstructured.Unstructured, typ string, status metav1.ConditionStatus, reason string) metav1.Condition {
	t.Helper()
	c, err := harness.WaitForCondition(ctx, cp.Client, obj, typ, status, reason)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// inboundOf connects a simulated proxy of namespace/serviceAccount and returns the
// inbound policy of its first snapshot, and the stream for what follows.
func inboundOf(ctx context.Context, t *testing.T, namespace, serviceAccount string) (*api.Inbound, *harness.StreamClient) {
	t.Helper()
	c, err := harness.DialConfigAs(ctx, cp.ConfigAddr, t.Name()+"-"+serviceAccount, namespace, serviceAccount)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	snap, err := c.Recv()
	if err != nil {
		t.Fatal(err)
	}
	return snap.GetInbound(), c
}

// nextInbound returns the next inbound policy the stream brings, acknowledging every
// snapshot on the way.
func nextInbound(t *testing.T, c *harness.StreamClient) *api.Inbound {
	t.Helper()
	for {
		snap, err := c.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Ack(snap.GetVersion(), ""); err != nil {
			t.Fatal(err)
		}
		if snap.GetInbound() != nil {
			return snap.GetInbound()
		}
	}
}

func TestStrictNamespaceDeniesUntilATargetAllows(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns := accessNamespace(ctx, t, braidv1alpha1.AccessStrict)

	// SMI scenario 1: strict, no TrafficTarget: b admits nothing.
	in, stream := inboundOf(ctx, t, ns, "b")
	if in.GetAllowAll() || len(in.GetAuthorizations()) > 0 || in.GetMode() != "Strict" {
		t.Fatalf("b's inbound policy without targets = %v, want Strict and nothing admitted", in)
	}
	// Scenario 2: a TCPRoute for every port and a TrafficTarget b <- a (written as v1alpha2).
	mustCreate(ctx, t, harness.TCPRoute(ns, "all"))
	tt := harness.TrafficTarget("access.smi-spec.io/v1alpha2", ns, "b-from-a", "b", []string{"a"}, harness.TargetRule{Kind: "TCPRoute", Name: "all"})
	mustCreate(ctx, t, tt)
	in = nextInbound(t, stream)
	want := "spiffe://cluster.local/ns/" + ns + "/sa/a"
	if len(in.GetAuthorizations()) != 1 || !slices.Equal(in.GetAuthorizations()[0].GetSources(), []string{want}) || !in.GetAuthorizations()[0].GetAnyRequest() {
		t.Fatalf("b's inbound policy = %v, want one L4 grant to %s", in, want)
	}
	wantCondition(ctx, t, tt, "Accepted", metav1.ConditionTrue, mesh.ReasonAccepted)
	// Neither ServiceAccount exists yet: the grant is in force all the same (identities
	// are names), and ResolvedRefs says which accounts are missing until they appear.
	c := wantCondition(ctx, t, tt, "ResolvedRefs", metav1.ConditionFalse, mesh.ReasonServiceAccountNotFound)
	if !strings.Contains(c.Message, `ServiceAccount "b"`) || !strings.Contains(c.Message, `ServiceAccount "a"`) {
		t.Errorf("ResolvedRefs must name both missing accounts: %q", c.Message)
	}
	mustCreate(ctx, t, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "b"}})
	mustCreate(ctx, t, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "a"}})
	wantCondition(ctx, t, tt, "ResolvedRefs", metav1.ConditionTrue, mesh.ReasonResolvedRefs)
	// The simulated proxy of b acknowledged the version carrying the grant.
	prog := wantCondition(ctx, t, tt, "Programmed", metav1.ConditionTrue, "Programmed")
	if !strings.Contains(prog.Message, "all 1 connected proxies of ServiceAccount b") {
		t.Errorf("Programmed message %q must count b's one proxy", prog.Message)
	}
	route := harness.TCPRoute(ns, "all")
	wantCondition(ctx, t, route, "Accepted", metav1.ConditionTrue, "Accepted")
	wantCondition(ctx, t, route, "ResolvedRefs", metav1.ConditionTrue, "ResolvedRefs")
	wantCondition(ctx, t, route, "Programmed", metav1.ConditionTrue, "Programmed")

	// Deleting both denies again.
	for _, o := range []client.Object{tt, route} {
		if err := cp.Client.Delete(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	expectGrantGone(t, stream)
}

// expectGrantGone reads b's policies while its target and the target's TCPRoute are
// deleted. The two deletions may be compiled one at a time: with the route gone first,
// the target grants no port (tcp_ports [0]) until it goes too. Every policy on the way
// admits nothing, and the last has no grant left.
func expectGrantGone(t *testing.T, stream *harness.StreamClient) {
	t.Helper()
	for {
		in := nextInbound(t, stream)
		if in.GetAllowAll() {
			t.Fatalf("after deleting the target, b's inbound = %v admits everyone", in)
		}
		if len(in.GetAuthorizations()) == 0 {
			return
		}
		if g := in.GetAuthorizations()[0]; !slices.Equal(g.GetTcpPorts(), []uint32{0}) {
			t.Fatalf("while the target goes, b's inbound = %v still grants a port", in)
		}
	}
}

func TestTargetedModeLocksOnlyTargetedDestinations(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns := accessNamespace(ctx, t, braidv1alpha1.AccessTargeted)
	mustCreate(ctx, t, harness.HTTPRouteGroup(ns, "routes", map[string]any{"name": "metrics", "pathRegex": "/metrics", "methods": []any{"GET"}}))
	apiTarget := harness.TrafficTarget("access.smi-spec.io/v1alpha3", ns, "api", "api", []string{"prometheus"},
		harness.TargetRule{Kind: "HTTPRouteGroup", Name: "routes"})
	mustCreate(ctx, t, apiTarget)
	// Programmed (no proxy of api is connected yet): the policy is compiled.
	wantCondition(ctx, t, apiTarget, "Programmed", metav1.ConditionTrue, "Programmed")
	wantCondition(ctx, t, harness.HTTPRouteGroup(ns, "routes"), "Programmed", metav1.ConditionTrue, "Programmed")
	// Ports out of range never reach the reconciler: the CRD refuses them.
	if err := cp.Client.Create(ctx, harness.TCPRoute(ns, "bad", 0, 70000)); err == nil || !strings.Contains(err.Error(), "70000") {
		t.Errorf("creating a TCPRoute with ports 0 and 70000 = %v, want a refusal naming the port", err)
	}
	api1, _ := inboundOf(ctx, t, ns, "api")
	other, _ := inboundOf(ctx, t, ns, "web")
	if api1.GetAllowAll() || len(api1.GetAuthorizations()) != 1 || len(api1.GetAuthorizations()[0].GetHttpMatches()) != 1 {
		t.Errorf("api's inbound = %v, want only GET /metrics from prometheus", api1)
	}
	if !other.GetAllowAll() {
		t.Errorf("web, which no target names, must stay open in Targeted mode: %v", other)
	}
}

func TestInvalidAndDanglingTargetsSayWhy(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns := accessNamespace(ctx, t, braidv1alpha1.AccessStrict)
	for _, sa := range []string{"a", "b"} {
		mustCreate(ctx, t, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: sa}})
	}

	// Scenario 17: a destination in another namespace is refused and grants nothing.
	elsewhere := harness.TrafficTarget("access.smi-spec.io/v1alpha3", ns, "elsewhere", "b", []string{"a"}, harness.TargetRule{Kind: "TCPRoute", Name: "all"})
	if err := unstructured.SetNestedField(elsewhere.Object, "other", "spec", "destination", "namespace"); err != nil {
		t.Fatal(err)
	}
	mustCreate(ctx, t, elsewhere)
	c := wantCondition(ctx, t, elsewhere, "Accepted", metav1.ConditionFalse, mesh.ReasonInvalidDestination)
	if !strings.Contains(c.Message, `"other"`) {
		t.Errorf("the message must name the foreign namespace: %q", c.Message)
	}
	wantCondition(ctx, t, elsewhere, "Programmed", metav1.ConditionFalse, "NotAccepted")

	// A group that does not exist yet: ResolvedRefs says so until it appears.
	dangling := harness.TrafficTarget("access.smi-spec.io/v1alpha3", ns, "dangling", "b", []string{"a"}, harness.TargetRule{Kind: "HTTPRouteGroup", Name: "later"})
	mustCreate(ctx, t, dangling)
	c = wantCondition(ctx, t, dangling, "ResolvedRefs", metav1.ConditionFalse, mesh.ReasonRouteNotFound)
	if !strings.Contains(c.Message, `"later"`) {
		t.Errorf("the message must name the missing group: %q", c.Message)
	}
	mustCreate(ctx, t, harness.HTTPRouteGroup(ns, "later", map[string]any{"name": "any", "pathRegex": ".*"}))
	wantCondition(ctx, t, dangling, "ResolvedRefs", metav1.ConditionTrue, mesh.ReasonResolvedRefs)
}

func TestPermissiveNamespaceSaysTargetsAreNotEnforced(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns := accessNamespace(ctx, t, braidv1alpha1.AccessPermissive)
	mustCreate(ctx, t, harness.TCPRoute(ns, "all"))
	tt := harness.TrafficTarget("access.smi-spec.io/v1alpha3", ns, "b-from-a", "b", []string{"a"}, harness.TargetRule{Kind: "TCPRoute", Name: "all"})
	mustCreate(ctx, t, tt)
	c := wantCondition(ctx, t, tt, "Programmed", metav1.ConditionFalse, mesh.ReasonNotEnforced)
	if !strings.Contains(c.Message, braidv1alpha1.AccessControlAnnotation) {
		t.Errorf("the message must say how to enforce: %q", c.Message)
	}
	if in, _ := inboundOf(ctx, t, ns, "b"); !in.GetAllowAll() || in.GetMode() != "Permissive" {
		t.Errorf("b's inbound in a permissive namespace = %v, want everything admitted", in)
	}
}

func TestUnacknowledgedPolicyIsPendingUntilTheProxyAcks(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns := accessNamespace(ctx, t, braidv1alpha1.AccessStrict)
	_, stream := inboundOf(ctx, t, ns, "b") // connected, acknowledges nothing
	mustCreate(ctx, t, harness.TCPRoute(ns, "all"))
	tt := harness.TrafficTarget("access.smi-spec.io/v1alpha3", ns, "b-from-a", "b", []string{"a"}, harness.TargetRule{Kind: "TCPRoute", Name: "all"})
	mustCreate(ctx, t, tt)
	c := wantCondition(ctx, t, tt, "Programmed", metav1.ConditionFalse, "Pending")
	if !strings.Contains(c.Message, "0 of 1 connected proxies of ServiceAccount b") {
		t.Errorf("Pending must count b's proxies: %q", c.Message)
	}
	for len(nextInbound(t, stream).GetAuthorizations()) == 0 { // acknowledges up to the grant
	}
	wantCondition(ctx, t, tt, "Programmed", metav1.ConditionTrue, "Programmed")
}

// Scoped config: a grant is programmed only once its sources' proxies have it too, since
// they are sent the destination's Services only when a grant lets them reach it.
func TestGrantIsPendingUntilTheSourcesProxiesHaveIt(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns := accessNamespace(ctx, t, braidv1alpha1.AccessStrict)
	source, err := harness.DialConfigAs(ctx, cp.ConfigAddr, t.Name()+"-a", ns, "a") // acknowledges nothing yet
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = source.Close() })
	first, err := source.Recv()
	if err != nil {
		t.Fatal(err)
	}
	_, dest := inboundOf(ctx, t, ns, "b")
	mustCreate(ctx, t, harness.TCPRoute(ns, "all"))
	tt := harness.TrafficTarget("access.smi-spec.io/v1alpha3", ns, "b-from-a", "b", []string{"a"}, harness.TargetRule{Kind: "TCPRoute", Name: "all"})
	mustCreate(ctx, t, tt)
	for len(nextInbound(t, dest).GetAuthorizations()) == 0 { // b acknowledges up to the grant
	}
	for {
		c := wantCondition(ctx, t, tt, "Programmed", metav1.ConditionFalse, "Pending")
		if strings.Contains(c.Message, "1 of 2 connected proxies") {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("Programmed must wait for the source's proxy: %q", c.Message)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// a acknowledges its full snapshot: nothing sent since holds anything for it.
	if err := source.Ack(first.GetVersion(), ""); err != nil {
		t.Fatal(err)
	}
	wantCondition(ctx, t, tt, "Programmed", metav1.ConditionTrue, "Programmed")
}

// Endpoints of injected pods are reached through their proxies, under the identity of
// their ServiceAccount; the others in plaintext.
func TestEndpointsOfMeshedPodsCarryTheirIdentity(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns := namespace(ctx, t)
	mustCreate(ctx, t, harness.Service(ns, "reviews", 80))
	pod := func(name, ip string, meshed bool) {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec:       corev1.PodSpec{ServiceAccountName: "reviews", Containers: []corev1.Container{{Name: "app", Image: "app"}}},
		}
		if meshed {
			p.Annotations = map[string]string{"braid.dev/injected": "true"}
		}
		mustCreate(ctx, t, p)
		p.Status = corev1.PodStatus{PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
		if err := cp.Client.Status().Update(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	pod("meshed", "198.18.9.1", true)
	pod("plain", "198.18.9.2", false)
	for _, s := range harness.EndpointSlices(ns, "reviews", netip.MustParseAddrPort("198.18.9.1:8080"), netip.MustParseAddrPort("198.18.9.2:8080")) {
		for i := range s.Endpoints {
			name := map[string]string{"198.18.9.1": "meshed", "198.18.9.2": "plain"}[s.Endpoints[i].Addresses[0]]
			s.Endpoints[i].TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: name}
		}
		mustCreate(ctx, t, s)
	}
	stream, err := harness.DialConfig(ctx, cp.ConfigAddr, t.Name(), ns)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = stream.Close() }()
	view := map[string]*api.Endpoint{}
	for len(view) < 2 {
		snap, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if p := harness.FindPort(snap, ns, "reviews", 80); p != nil {
			for _, b := range harness.Backends(p) {
				for _, e := range b.GetEndpoints() {
					view[e.GetIp()] = e
				}
			}
		}
	}
	if e := view["198.18.9.1"]; e.GetIdentity() != "spiffe://cluster.local/ns/"+ns+"/sa/reviews" || e.GetProxyPort() != 15006 {
		t.Errorf("the meshed pod's endpoint = %v, want its identity and proxy port 15006", e)
	}
	if e := view["198.18.9.2"]; e.GetIdentity() != "" || e.GetProxyPort() != 0 {
		t.Errorf("the plain pod's endpoint = %v, want no identity", e)
	}
}

// An EndpointSlice can reach the operator before the pod it points at (their informers do
// not keep each other's order, and a pod's IP comes in an update): the endpoint is plain
// until then, and turns meshed, under the pod's identity, when the pod arrives. Until
// the operator watched pods it stayed plain, and clients bypassed the pod's proxy.
func TestEndpointsFollowTheirPods(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns := namespace(ctx, t)
	mustCreate(ctx, t, harness.Service(ns, "ratings", 80))
	slice := func(name, ip, pod string) {
		for _, s := range harness.EndpointSlices(ns, "ratings", netip.MustParseAddrPort(ip+":8080")) {
			s.Name = name
			if pod != "" {
				s.Endpoints[0].TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: pod}
			}
			mustCreate(ctx, t, s)
		}
	}
	stream, err := harness.DialConfig(ctx, cp.ConfigAddr, t.Name(), ns)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = stream.Close() }()
	// await reads snapshots until ratings' endpoints satisfy done.
	await := func(what string, done func(map[string]*api.Endpoint) bool) map[string]*api.Endpoint {
		t.Helper()
		for {
			snap, err := stream.Recv()
			if err != nil {
				t.Fatalf("waiting for %s: %v", what, err)
			}
			if p := harness.FindPort(snap, ns, "ratings", 80); p != nil {
				eps := map[string]*api.Endpoint{}
				for _, b := range harness.Backends(p) {
					for _, e := range b.GetEndpoints() {
						eps[e.GetIp()] = e
					}
				}
				if done(eps) {
					return eps
				}
			}
		}
	}
	slice("late", "198.18.9.3", "late")
	if e := await("the endpoint of pod late", func(m map[string]*api.Endpoint) bool { return m["198.18.9.3"] != nil })["198.18.9.3"]; e.GetIdentity() != "" {
		t.Fatalf("the endpoint of a pod the operator has not seen = %v, want it plain", e)
	}
	// A compile that reads a second slice comes after every event queued before it: from
	// here on, only the pod can make the Service compile again.
	slice("other", "198.18.9.4", "")
	await("a second endpoint", func(m map[string]*api.Endpoint) bool { return m["198.18.9.4"] != nil })
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "late", Annotations: map[string]string{"braid.dev/injected": "true"}},
		Spec:       corev1.PodSpec{ServiceAccountName: "ratings", Containers: []corev1.Container{{Name: "app", Image: "app"}}},
	}
	mustCreate(ctx, t, p)
	p.Status = corev1.PodStatus{PodIP: "198.18.9.3", PodIPs: []corev1.PodIP{{IP: "198.18.9.3"}}}
	if err := cp.Client.Status().Update(ctx, p); err != nil {
		t.Fatal(err)
	}
	want := "spiffe://cluster.local/ns/" + ns + "/sa/ratings"
	await("pod late's identity on its endpoint", func(m map[string]*api.Endpoint) bool { return m["198.18.9.3"].GetIdentity() == want })
}
