package controlplane

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/braidmesh/braid/proxy/api"
)

func TestViewKeepsInboundAndBundleAcrossDeltas(t *testing.T) {
	var v view
	locked := &api.Inbound{Mode: "Strict"}
	got := v.apply(&api.Snapshot{Version: 1, Full: true, Inbound: locked, TrustBundle: "ROOTS-1",
		Services: []*api.Service{{Namespace: "shop", Name: "web"}}})
	if !proto.Equal(got.GetInbound(), locked) || got.GetTrustBundle() != "ROOTS-1" {
		t.Fatalf("full snapshot view = %v", got)
	}
	// A delta without them keeps them.
	got = v.apply(&api.Snapshot{Version: 2, Services: []*api.Service{{Namespace: "shop", Name: "db"}}})
	if !proto.Equal(got.GetInbound(), locked) || got.GetTrustBundle() != "ROOTS-1" || len(got.GetServices()) != 2 {
		t.Fatalf("after a services-only delta = %v", got)
	}
	// A delta with them replaces them.
	open := &api.Inbound{Mode: "Targeted", AllowAll: true}
	got = v.apply(&api.Snapshot{Version: 3, Inbound: open, TrustBundle: "ROOTS-2"})
	if !proto.Equal(got.GetInbound(), open) || got.GetTrustBundle() != "ROOTS-2" {
		t.Fatalf("after a policy delta = %v", got)
	}
	// A full snapshot replaces everything, including a policy it does not carry.
	got = v.apply(&api.Snapshot{Version: 4, Full: true})
	if got.GetInbound() != nil || got.GetTrustBundle() != "" || len(got.GetServices()) != 0 {
		t.Fatalf("after an empty full snapshot = %v", got)
	}
}
