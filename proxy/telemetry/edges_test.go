package telemetry_test

import (
	"net/netip"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/braidmesh/braid/proxy/router"
	"github.com/braidmesh/braid/proxy/telemetry"
)

var (
	peerA = netip.MustParseAddr("10.0.0.1")
	peerB = netip.MustParseAddr("10.0.0.2")
	idA   = "spiffe://cluster.local/ns/shop/sa/a"
)

func find(snap telemetry.EdgeSnapshot, dir, addr string) *telemetry.EdgeStats {
	for i := range snap.Edges {
		if snap.Edges[i].Direction == dir && snap.Edges[i].PeerAddr == addr {
			return &snap.Edges[i]
		}
	}
	return nil
}

func TestEdgesCountPerPeerAndDirection(t *testing.T) {
	clk := clocktesting.NewFakePassiveClock(time.Unix(1000, 0))
	e := telemetry.NewEdges(telemetry.EdgesOptions{Clock: clk})
	e.Inbound("10.0.0.1:40000", idA, 200, time.Millisecond)
	e.Inbound("10.0.0.1:40001", idA, 503, time.Millisecond)
	e.Inbound("10.0.0.1:40002", idA, 0, time.Millisecond) // no answer: a failure
	e.Inbound("[::ffff:10.0.0.1]:40003", idA, 404, time.Millisecond)
	e.Inbound("not an address", idA, 200, time.Millisecond)
	e.Outbound(router.Endpoint{Addr: netip.MustParseAddrPort("10.0.0.2:8080"), Identity: "b"}, 200, false, 2*time.Millisecond)
	e.Outbound(router.Endpoint{Addr: netip.MustParseAddrPort("10.0.0.2:8080"), Identity: "b"}, 200, true, 2*time.Millisecond)
	e.Outbound(router.Endpoint{}, 503, false, time.Millisecond) // no endpoint tried: no edge

	snap := e.Snapshot(30 * time.Second)
	if len(snap.Edges) != 2 {
		t.Fatalf("edges %+v, want inbound from A and outbound to B", snap.Edges)
	}
	in := find(snap, "inbound", "10.0.0.1")
	if in == nil || in.Success != 2 || in.Failure != 2 || in.PeerIdentity != idA {
		t.Errorf("inbound edge %+v, want 2 successes (200, 404) and 2 failures (503, none) from %s", in, idA)
	}
	out := find(snap, "outbound", "10.0.0.2")
	if out == nil || out.Success != 1 || out.Failure != 1 || out.PeerIdentity != "b" {
		t.Errorf("outbound edge %+v, want 1 success and 1 broken answer", out)
	}
	if len(snap.LatencyBoundsMs) != len(out.LatencyCounts)-1 {
		t.Errorf("%d latency counts for %d bounds", len(out.LatencyCounts), len(snap.LatencyBoundsMs))
	}
}

func TestEdgesWindowsSlideWithTheClock(t *testing.T) {
	clk := clocktesting.NewFakePassiveClock(time.Unix(1000, 0)) // the start of a 10 s slot
	e := telemetry.NewEdges(telemetry.EdgesOptions{Clock: clk})
	e.Record(telemetry.EdgeInbound, peerA, idA, false, time.Millisecond)
	clk.SetTime(clk.Now().Add(25 * time.Second)) // two slots later
	e.Record(telemetry.EdgeInbound, peerA, idA, true, time.Millisecond)

	count := func(window time.Duration) (uint64, uint64) {
		st := find(e.Snapshot(window), "inbound", "10.0.0.1")
		if st == nil {
			return 0, 0
		}
		return st.Success, st.Failure
	}
	if s, f := count(10 * time.Second); s != 0 || f != 1 {
		t.Errorf("10s window: %d successes, %d failures; want only the recent failure", s, f)
	}
	if s, f := count(30 * time.Second); s != 1 || f != 1 {
		t.Errorf("30s window: %d successes, %d failures; want both", s, f)
	}
	// Five minutes on, both have left every window, and the edge is forgotten.
	clk.SetTime(clk.Now().Add(5 * time.Minute))
	if s, f := count(5 * time.Minute); s != 0 || f != 0 {
		t.Errorf("after 5 minutes: %d successes, %d failures; want none", s, f)
	}
	e.Record(telemetry.EdgeInbound, peerA, idA, false, time.Millisecond)
	if s, f := count(5 * time.Minute); s != 1 || f != 0 {
		t.Errorf("a reused slot must start from zero: %d successes, %d failures", s, f)
	}
}

func TestEdgesEvictTheLeastRecentlyUsedPeer(t *testing.T) {
	clk := clocktesting.NewFakePassiveClock(time.Unix(1000, 0))
	e := telemetry.NewEdges(telemetry.EdgesOptions{Clock: clk, MaxPeers: 2})
	e.Record(telemetry.EdgeInbound, peerA, "", false, time.Millisecond)
	clk.SetTime(clk.Now().Add(10 * time.Second))
	e.Record(telemetry.EdgeInbound, peerB, "", false, time.Millisecond)
	clk.SetTime(clk.Now().Add(10 * time.Second))
	e.Record(telemetry.EdgeOutbound, peerA, "", false, time.Millisecond) // a third edge: A inbound goes
	snap := e.Snapshot(time.Minute)
	if find(snap, "inbound", "10.0.0.1") != nil || find(snap, "inbound", "10.0.0.2") == nil || find(snap, "outbound", "10.0.0.1") == nil {
		t.Errorf("edges %+v: want the oldest (inbound from 10.0.0.1) evicted", snap.Edges)
	}
}

func TestEdgeLatencyHistogram(t *testing.T) {
	clk := clocktesting.NewFakePassiveClock(time.Unix(1000, 0))
	e := telemetry.NewEdges(telemetry.EdgesOptions{Clock: clk})
	for _, d := range []time.Duration{50 * time.Microsecond, 3 * time.Millisecond, 3 * time.Millisecond, 10 * time.Minute} {
		e.Record(telemetry.EdgeInbound, peerA, "", false, d)
	}
	snap := e.Snapshot(time.Minute)
	counts := snap.Edges[0].LatencyCounts
	bounds := snap.LatencyBoundsMs
	if counts[0] != 1 || counts[len(counts)-1] != 1 {
		t.Errorf("50µs must count in the first bucket and 10m above every bound: %v", counts)
	}
	for i, c := range counts[:len(bounds)] {
		if c == 2 && (bounds[i] < 3 || (i > 0 && bounds[i-1] >= 3)) {
			t.Errorf("3ms counted under bound %v ms", bounds[i])
		}
	}
}

// Requests record concurrently with snapshots and evictions (run with -race).
func TestEdgesConcurrentUse(t *testing.T) {
	clk := clocktesting.NewFakePassiveClock(time.Unix(1000, 0))
	e := telemetry.NewEdges(telemetry.EdgesOptions{Clock: clk, MaxPeers: 4})
	done := make(chan struct{})
	for g := range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range 500 {
				peer := netip.AddrFrom4([4]byte{10, 0, byte(g), byte(i % 8)})
				e.Record(telemetry.EdgeInbound, peer, "", i%5 == 0, time.Millisecond)
			}
		}()
	}
	for range 50 {
		if n := len(e.Snapshot(time.Minute).Edges); n > 4 {
			t.Fatalf("%d edges held, want at most 4", n)
		}
	}
	for range 4 {
		<-done
	}
}

func BenchmarkEdgesRecord(b *testing.B) {
	e := telemetry.NewEdges(telemetry.EdgesOptions{})
	ep := router.Endpoint{Addr: netip.MustParseAddrPort("10.0.0.2:8080"), Identity: "spiffe://cluster.local/ns/shop/sa/b"}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			e.Outbound(ep, 200, false, time.Millisecond)
		}
	})
}
