package configserver_test

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/braidmesh/braid/internal/configserver"
	"github.com/braidmesh/braid/proxy/api"
)

func TestEachProxyGetsItsOwnWorkloadsPolicy(t *testing.T) {
	srv, addr := startServer(t)
	open := &api.Inbound{Mode: "Targeted", AllowAll: true}
	locked := &api.Inbound{Mode: "Targeted", Authorizations: []*api.Authorization{{Name: "shop/b", Sources: []string{"spiffe://cluster.local/ns/shop/sa/a"}, AnyRequest: true}}}
	srv.SetPolicy("shop", &configserver.Policy{Default: open, ByServiceAccount: map[string]*api.Inbound{"b": locked}})
	srv.SetTrustBundle("ROOTS-1")

	b := dial(t, addr, helloMsg("b-1", "shop", "b"))
	c := dial(t, addr, helloMsg("c-1", "shop", "c"))
	stranger := dial(t, addr, helloMsg("x-1", "elsewhere", "x"))
	expectFirst(t, b, locked)
	expectFirst(t, c, open)
	expectFirst(t, stranger, &api.Inbound{Mode: "Unknown"})

	// A change of shop's policy reaches shop's proxies whose policy changed, and only them.
	opened := &api.Inbound{Mode: "Targeted", AllowAll: true, Ports: map[uint32]api.Protocol{80: api.Protocol_PROTOCOL_HTTP1}}
	v := srv.SetPolicy("shop", &configserver.Policy{Default: opened, ByServiceAccount: map[string]*api.Inbound{"b": locked}})
	delta := c.nextRaw()
	if delta.GetFull() || delta.GetVersion() != v || !proto.Equal(delta.GetInbound(), opened) || len(delta.GetServices()) != 0 || delta.GetTrustBundle() != "" {
		t.Fatalf("c's delta = %v, want only the new inbound at version %d", delta, v)
	}
	b.nothingMore()
	stranger.nothingMore()
	c.ack(v, "")
	// Proxies that had nothing to apply are up to date at the new version all the same.
	eventuallyTrue(t, func() bool { acked, _, _, _ := srv.AckStatus(v); return acked == 3 })
	if acked, _, connected, _ := srv.AckStatusFor(v, "shop", "c"); acked != 1 || connected != 1 {
		t.Errorf("AckStatusFor(shop/c) = %d of %d, want 1 of 1", acked, connected)
	}

	// A namespace whose policy appears replaces the deny-everything stand-in.
	v = srv.SetPolicy("elsewhere", &configserver.Policy{Default: open})
	if d := stranger.nextRaw(); d.GetVersion() != v || !proto.Equal(d.GetInbound(), open) {
		t.Errorf("stranger's delta = %v, want the open policy", d)
	}
	// Setting an equal policy again is no change at all.
	if again := srv.SetPolicy("elsewhere", &configserver.Policy{Default: &api.Inbound{Mode: "Targeted", AllowAll: true}}); again != v {
		t.Errorf("an equal policy moved the version from %d to %d", v, again)
	}
}

func expectFirst(t *testing.T, p *proxy, want *api.Inbound) {
	t.Helper()
	snap := p.nextRaw()
	if !snap.GetFull() || !proto.Equal(snap.GetInbound(), want) || snap.GetTrustBundle() != "ROOTS-1" {
		t.Errorf("first snapshot: inbound %v bundle %q, want %v and ROOTS-1", snap.GetInbound(), snap.GetTrustBundle(), want)
	}
	p.ack(snap.GetVersion(), "")
}

func TestTrustBundleReachesEveryProxyOnce(t *testing.T) {
	srv, addr := startServer(t)
	srv.SetPolicy("shop", &configserver.Policy{Default: &api.Inbound{Mode: "Targeted", AllowAll: true}})
	srv.SetTrustBundle("ROOTS-1")
	b := dial(t, addr, helloMsg("b-1", "shop", "b"))
	c := dial(t, addr, helloMsg("c-1", "shop", "c"))
	expectFirst(t, b, &api.Inbound{Mode: "Targeted", AllowAll: true})
	expectFirst(t, c, &api.Inbound{Mode: "Targeted", AllowAll: true})
	v := srv.SetTrustBundle("ROOTS-1\nROOTS-2")
	for _, p := range []*proxy{b, c} {
		d := p.nextRaw()
		if d.GetVersion() != v || d.GetTrustBundle() != "ROOTS-1\nROOTS-2" || d.GetInbound() != nil {
			t.Errorf("delta = %v, want only the new bundle at version %d", d, v)
		}
	}
	if again := srv.SetTrustBundle("ROOTS-1\nROOTS-2"); again != v {
		t.Errorf("the same bundle again moved the version from %d to %d", v, again)
	}
}
