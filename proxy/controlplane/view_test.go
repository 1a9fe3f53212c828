package controlplane

import (
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/braidmesh/braid/proxy/api"
)

func TestViewKeepsInboundAndBundleAcrossDeltas(t *testing.T) {
	var v view
	locked := &api.Inbound{Mode: "Strict"}
	got := mustApply(t, &v, &api.Snapshot{Version: 1, Full: true, Inbound: locked, TrustBundle: "ROOTS-1",
		Services: []*api.Service{{Namespace: "shop", Name: "web"}}})
	if !proto.Equal(got.GetInbound(), locked) || got.GetTrustBundle() != "ROOTS-1" {
		t.Fatalf("full snapshot view = %v", got)
	}
	// A delta without them keeps them.
	got = mustApply(t, &v, &api.Snapshot{Version: 2, Services: []*api.Service{{Namespace: "shop", Name: "db"}}})
	if !proto.Equal(got.GetInbound(), locked) || got.GetTrustBundle() != "ROOTS-1" || len(got.GetServices()) != 2 {
		t.Fatalf("after a services-only delta = %v", got)
	}
	// A delta with them replaces them.
	open := &api.Inbound{Mode: "Targeted", AllowAll: true}
	got = mustApply(t, &v, &api.Snapshot{Version: 3, Inbound: open, TrustBundle: "ROOTS-2"})
	if !proto.Equal(got.GetInbound(), open) || got.GetTrustBundle() != "ROOTS-2" {
		t.Fatalf("after a policy delta = %v", got)
	}
	// A full snapshot replaces everything, including a policy it does not carry.
	got = mustApply(t, &v, &api.Snapshot{Version: 4, Full: true})
	if got.GetInbound() != nil || got.GetTrustBundle() != "" || len(got.GetServices()) != 0 {
		t.Fatalf("after an empty full snapshot = %v", got)
	}
}

func mustApply(t *testing.T, v *view, snap *api.Snapshot) *api.Snapshot {
	t.Helper()
	got, err := v.apply(snap)
	if err != nil {
		t.Fatalf("apply version %d: %v", snap.GetVersion(), err)
	}
	return got
}

// The view keeps what it received, not the received messages themselves: the snapshot
// it returns is the proxy's to keep or drop, and the stream's messages can go.
func TestViewKeepsServicesByValueInOrder(t *testing.T) {
	var v view
	web := &api.Service{Namespace: "shop", Name: "web", ClusterIps: []string{"10.0.0.1"}}
	mustApply(t, &v, &api.Snapshot{Version: 1, Full: true, Services: []*api.Service{
		web, {Namespace: "shop-eu", Name: "api"}, {Namespace: "shop", Name: "api"},
	}})
	web.ClusterIps[0] = "10.9.9.9" // the message the stream delivered, changed afterwards
	got := mustApply(t, &v, &api.Snapshot{Version: 2, Removed: []string{"shop/api"},
		Services: []*api.Service{{Namespace: "a", Name: "z"}}})
	var names []string
	for _, s := range got.GetServices() {
		names = append(names, s.GetNamespace()+"/"+s.GetName())
	}
	if want := []string{"a/z", "shop/web", "shop-eu/api"}; !slices.Equal(names, want) {
		t.Fatalf("services after the delta = %v, want %v (sorted by namespace, then name)", names, want)
	}
	if ips := got.GetServices()[1].GetClusterIps(); !slices.Equal(ips, []string{"10.0.0.1"}) {
		t.Fatalf("shop/web cluster IPs = %v, want the ones received in version 1", ips)
	}
	if got.GetServices()[1] == web {
		t.Fatal("the view returned the very message the stream delivered")
	}
}
