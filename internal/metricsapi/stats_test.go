package metricsapi

import (
	"math"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

var bounds = []float64{1, 2, 4, 8}

func edgeStat(success, failure uint64, latency ...uint64) proxyEdgeStat {
	return proxyEdgeStat{Direction: directionInbound, Success: success, Failure: failure, LatencyCounts: latency}
}

func TestPercentilesOfMergedHistograms(t *testing.T) {
	tests := map[string]struct {
		edges    []proxyEdgeStat
		q, want  float64
		wantSucc uint64
	}{
		"no requests":                   {q: 0.99, want: 0},
		"one bucket interpolates":       {edges: []proxyEdgeStat{edgeStat(4, 0, 0, 4, 0, 0, 0)}, q: 0.5, want: 1.5, wantSucc: 4},
		"merged across proxies":         {edges: []proxyEdgeStat{edgeStat(2, 0, 2, 0, 0, 0, 0), edgeStat(1, 1, 0, 0, 0, 2, 0)}, q: 0.75, want: 6, wantSucc: 3},
		"median at a bucket edge":       {edges: []proxyEdgeStat{edgeStat(2, 0, 1, 1, 0, 0, 0)}, q: 0.5, want: 1, wantSucc: 2},
		"overflow counts at last bound": {edges: []proxyEdgeStat{edgeStat(1, 0, 0, 0, 0, 0, 1)}, q: 0.99, want: 8, wantSucc: 1},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			tot := newTotals()
			for _, e := range tc.edges {
				tot.add(e, bounds)
			}
			if got := tot.percentile(tc.q); math.Abs(got-tc.want) > 1e-9 {
				t.Errorf("p%v = %v, want %v", tc.q*100, got, tc.want)
			}
			if tot.success != tc.wantSucc {
				t.Errorf("success %d, want %d", tot.success, tc.wantSucc)
			}
		})
	}
}

// Proxies of other versions may use other bounds: buckets merge by their upper bound.
func TestTotalsMergeByBound(t *testing.T) {
	a, b := newTotals(), newTotals()
	a.add(edgeStat(1, 0, 1, 0), []float64{1})
	b.add(edgeStat(1, 0, 0, 1, 0), []float64{0.5, 1})
	a.merge(b)
	if a.latency[1] != 2 || a.success != 2 {
		t.Errorf("merged %+v, want both requests under the 1 ms bound", a)
	}
	if got := a.percentile(1); got != 1 {
		t.Errorf("p100 = %v, want 1", got)
	}
}

func pod(name, sa, ip string, owner *metav1.OwnerReference) corev1.Pod {
	p := corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name},
		Spec:       corev1.PodSpec{ServiceAccountName: sa},
		Status:     corev1.PodStatus{PodIP: ip},
	}
	if owner != nil {
		p.OwnerReferences = []metav1.OwnerReference{*owner}
	}
	return p
}

func ownedBy(kind, name string) *metav1.OwnerReference {
	return &metav1.OwnerReference{Kind: kind, Name: name, Controller: ptr.To(true)}
}

func TestPeerResolution(t *testing.T) {
	c := newCluster([]corev1.Pod{
		pod("web-1-a", "web", "10.0.0.1", ownedBy("ReplicaSet", "web-1")),
		pod("web-1-b", "web", "10.0.0.2", ownedBy("ReplicaSet", "web-1")),
		pod("db-0", "db", "10.0.0.3", ownedBy("StatefulSet", "db")),
		pod("bare", "tools", "10.0.0.4", nil),
		pod("batch-x", "shared", "10.0.0.5", ownedBy("ReplicaSet", "batch-1")),
		pod("other-x", "shared", "10.0.0.6", ownedBy("ReplicaSet", "other-1")),
	}, []appsv1.ReplicaSet{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-1", OwnerReferences: []metav1.OwnerReference{*ownedBy("Deployment", "web")}}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "batch-1", OwnerReferences: []metav1.OwnerReference{*ownedBy("Deployment", "batch")}}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "other-1", OwnerReferences: []metav1.OwnerReference{*ownedBy("Deployment", "other")}}},
	})
	deployments, _ := kindByResource("deployments")
	pods, _ := kindByResource("pods")
	id := func(sa string) string { return "spiffe://cluster.local/ns/shop/sa/" + sa }
	tests := map[string]struct {
		addr, identity string
		kind           kindInfo
		want           string // kind/name, "" for none
	}{
		"address of a deployment's pod":         {addr: "10.0.0.2", identity: id("web"), kind: deployments, want: "Deployment/web"},
		"as pods":                               {addr: "10.0.0.2", identity: id("web"), kind: pods, want: "Pod/web-1-b"},
		"plaintext client on a pod's address":   {addr: "10.0.0.1", kind: deployments, want: "Deployment/web"},
		"pod without a deployment is itself":    {addr: "10.0.0.3", identity: id("db"), kind: deployments, want: "Pod/db-0"},
		"address reused by another identity":    {addr: "10.0.0.3", identity: id("web"), kind: deployments, want: "Deployment/web"},
		"unknown address, identity's owner":     {addr: "192.168.1.1", identity: id("web"), kind: deployments, want: "Deployment/web"},
		"identity shared by two deployments":    {addr: "192.168.1.1", identity: id("shared"), kind: deployments, want: "ServiceAccount/shared"},
		"identity without pods":                 {addr: "192.168.1.1", identity: id("gone"), kind: deployments, want: "ServiceAccount/gone"},
		"unknown plaintext client is not named": {addr: "192.168.1.1", kind: deployments, want: ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ref := c.peerRef(proxyEdgeStat{PeerAddr: tc.addr, PeerIdentity: tc.identity}, tc.kind)
			got := ""
			if ref != nil {
				got = ref.Kind + "/" + ref.Name
			}
			if got != tc.want {
				t.Errorf("peer %s %s as %s = %q, want %q", tc.addr, tc.identity, tc.kind.resource, got, tc.want)
			}
		})
	}
	if got := len(c.podsOf(deployments, "shop", "web")); got != 2 {
		t.Errorf("deployment web has %d pods, want 2", got)
	}
}
