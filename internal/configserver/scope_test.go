package configserver_test

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/braidmesh/braid/internal/configserver"
	"github.com/braidmesh/braid/proxy/api"
)

const (
	webID   = "spiffe://cluster.local/ns/shop/sa/web"
	adminID = "spiffe://cluster.local/ns/ops/sa/admin"
)

// paymentsAt is Service shop/payments on port 80, backed by one pod of ServiceAccount
// payments at ip.
func paymentsAt(ip string) *api.Service {
	svc := service("shop", "payments", 80, backend("payments", ip))
	ep := svc.GetPorts()[0].GetRoutes()[0].GetBackends()[0].GetEndpoints()[0]
	ep.Identity, ep.ProxyPort = "spiffe://cluster.local/ns/shop/sa/payments", 15006
	svc.ClusterIps = []string{"10.96.0.10"}
	return svc
}

// grantOnly is a Strict policy for namespace shop whose ServiceAccount payments admits only
// the sources given.
func grantOnly(sources ...string) *configserver.Policy {
	strict := &api.Inbound{Mode: "Strict"}
	pay := &api.Inbound{Mode: "Strict", Authorizations: []*api.Authorization{{Name: "shop/payments", Sources: sources, AnyRequest: true}}}
	return &configserver.Policy{Default: strict, ByServiceAccount: map[string]*api.Inbound{"payments": pay}}
}

// byName returns the service namespace/name in snap, or nil.
func byName(snap *api.Snapshot, key string) *api.Service {
	for _, svc := range snap.GetServices() {
		if svc.GetNamespace()+"/"+svc.GetName() == key {
			return svc
		}
	}
	return nil
}

// A workload receives in full only the Services it may reach; the others come as stubs
// with their addresses and ports, the reason, and no endpoint or identity.
func TestEachWorkloadReceivesOnlyWhatItMayReach(t *testing.T) {
	srv, addr := startServer(t)
	srv.SetPolicy("shop", grantOnly(webID))
	payments := paymentsAt("10.0.0.5")
	srv.SetService("shop", "payments", payments)
	legacy := service("shop", "legacy", 80, backend("legacy", "10.0.0.9")) // not meshed: nothing to enforce
	srv.SetService("shop", "legacy", legacy)
	empty := service("shop", "empty", 80, backend("empty"))
	srv.SetService("shop", "empty", empty)

	web := dial(t, addr, helloMsg("web-1", "shop", "web"))
	if got := byName(web.nextRaw(), "shop/payments"); !proto.Equal(got, payments) {
		t.Errorf("web, which a TrafficTarget admits, got %v, want the whole Service", got)
	}

	other := dial(t, addr, helloMsg("cart-1", "shop", "cart"))
	first := other.nextRaw()
	stub := byName(first, "shop/payments")
	if stub.GetDenied() == "" || !strings.Contains(stub.GetDenied(), "no TrafficTarget in namespace shop") {
		t.Errorf("cart got payments as %v, want a stub saying why it may not reach it", stub)
	}
	if len(stub.GetPorts()) != 1 || stub.GetPorts()[0].GetPort() != 80 || len(stub.GetPorts()[0].GetRoutes()) != 0 ||
		len(stub.GetClusterIps()) != 1 {
		t.Errorf("the stub must keep the addresses and ports and carry no routes: %v", stub)
	}
	for _, key := range []string{"shop/legacy", "shop/empty"} {
		if got := byName(first, key); got == nil || got.GetDenied() != "" {
			t.Errorf("cart got %s as %v, want it whole: nothing behind it enforces access", key, got)
		}
	}
	if st := proxyStatus(t, srv, "cart-1"); st.Denied != 1 {
		t.Errorf("cart-1 status counts %d denied services, want 1", st.Denied)
	}
	// The full snapshot others share is not altered by one proxy's scoping.
	if got := byName(srv.Snapshot(), "shop/payments"); !proto.Equal(got, payments) {
		t.Errorf("the server's snapshot now holds %v", got)
	}
}

// A grant reveals the Service to its new source in a delta, a revocation hides it again,
// and workloads whose view did not change receive nothing.
func TestPolicyChangesMoveTheScope(t *testing.T) {
	srv, addr := startServer(t)
	srv.SetPolicy("shop", grantOnly(webID))
	payments := paymentsAt("10.0.0.5")
	srv.SetService("shop", "payments", payments)

	admin := dial(t, addr, helloMsg("admin-1", "ops", "admin"))
	web := dial(t, addr, helloMsg("web-1", "shop", "web"))
	if snap := admin.nextRaw(); byName(snap, "shop/payments").GetDenied() == "" {
		t.Fatalf("admin must first see payments denied: %v", snap)
	} else {
		admin.ack(snap.GetVersion(), "")
	}
	snap := web.nextRaw()
	web.ack(snap.GetVersion(), "")

	v := srv.SetPolicy("shop", grantOnly(webID, adminID))
	delta := admin.nextRaw()
	if delta.GetFull() || delta.GetVersion() != v || len(delta.GetServices()) != 1 || !proto.Equal(delta.GetServices()[0], payments) {
		t.Fatalf("after the grant admin got %v, want payments whole at version %d", delta, v)
	}
	admin.ack(v, "")
	web.nothingMore() // its view is the same
	if acked, _, _, _ := srv.AckStatusFor(v, "shop", "web"); acked != 1 {
		t.Errorf("web, with nothing to apply, must count as running version %d", v)
	}

	// An endpoint change reaches admin whole; revoking the grant sends the stub.
	moved := paymentsAt("10.0.0.6")
	srv.SetService("shop", "payments", moved)
	if d := admin.nextRaw(); !proto.Equal(byName(d, "shop/payments"), moved) {
		t.Fatalf("admin got %v, want the moved endpoint", d)
	}
	v = srv.SetPolicy("shop", grantOnly(webID))
	d := admin.nextRaw()
	if got := byName(d, "shop/payments"); d.GetVersion() != v || got.GetDenied() == "" || len(got.GetPorts()[0].GetRoutes()) != 0 {
		t.Fatalf("after the revocation admin got %v, want the stub at version %d", d, v)
	}
	// While denied, endpoint changes are not news to admin: the stub stays the same.
	srv.SetService("shop", "payments", paymentsAt("10.0.0.7"))
	if d := web.nextRaw(); byName(d, "shop/payments") == nil {
		t.Fatalf("web must get the new endpoint: %v", d)
	}
	admin.nothingMore()
}

// Permissive (and Targeted without targets) destinations admit everyone: nothing is hidden.
func TestOpenPoliciesHideNothing(t *testing.T) {
	srv, addr := startServer(t)
	srv.SetPolicy("shop", &configserver.Policy{Default: &api.Inbound{Mode: "Permissive", AllowAll: true}})
	payments := paymentsAt("10.0.0.5")
	srv.SetService("shop", "payments", payments)
	stranger := dial(t, addr, helloMsg("x-1", "elsewhere", ""))
	if got := byName(stranger.nextRaw(), "shop/payments"); !proto.Equal(got, payments) {
		t.Errorf("got %v, want the Service whole", got)
	}
}
