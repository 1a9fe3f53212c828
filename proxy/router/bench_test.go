package router_test

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/proxy/router"
)

// largeSnapshot is a mesh of n Services as make bench-proxy configures the client
// proxy: each with a cluster IP, one HTTP port, one route and two meshed endpoints.
func largeSnapshot(n int) *api.Snapshot {
	snap := &api.Snapshot{Version: 1}
	for i := range n {
		name := fmt.Sprintf("svc-%04d", i)
		eps := make([]*api.Endpoint, 2)
		for j := range eps {
			eps[j] = &api.Endpoint{Ip: fmt.Sprintf("10.244.%d.%d", (2*i+j)/250, (2*i+j)%250+1), Port: 8080,
				Identity: "spiffe://cluster.local/ns/bench/sa/" + name, ProxyPort: 15006}
		}
		snap.Services = append(snap.Services, &api.Service{Namespace: "bench", Name: name,
			ClusterIps: []string{fmt.Sprintf("10.96.%d.%d", i/250+1, i%250+1)},
			Ports:      []*api.ServicePort{port(80, backend(name, 1, eps...))}})
	}
	return snap
}

// BenchmarkBuild builds a table of 1000 Services on a registry that already holds one
// (a configuration update), and reports the heap the proxy keeps for the table once it
// is built and its snapshot dropped (table-B/service: the table, its endpoint state and
// budgets, the strings it keeps of the snapshot, and whatever the registry keeps
// between builds).
func BenchmarkBuild(b *testing.B) {
	const services = 1000
	before := heapInUse()
	reg := router.NewRegistry(nil)
	tbl, err := reg.Build(largeSnapshot(services), "bench", "cluster.local")
	if err != nil {
		b.Fatal(err)
	}
	kept := heapInUse() - before
	snap := largeSnapshot(services)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := reg.Build(snap, "bench", "cluster.local"); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(kept)/services, "table-B/service")
	runtime.KeepAlive(tbl)
	runtime.KeepAlive(reg)
}

// heapInUse is the live heap after a full collection.
func heapInUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}
