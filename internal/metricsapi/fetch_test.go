package metricsapi

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A pod whose proxy fails, answers garbage or has none is left out; the others count.
func TestFetchAllSkipsFailingProxies(t *testing.T) {
	var gotWindow string
	good := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotWindow = r.URL.Query().Get("window")
		_, _ = w.Write([]byte(`{"latencyBoundsMs":[1],"edges":[{"direction":"inbound","peerAddr":"10.0.0.9","success":3,"latencyCounts":[3,0]}]}`))
	}))
	defer good.Close()
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "boom", http.StatusInternalServerError) }))
	defer failing.Close()
	garbage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("{not json")) }))
	defer garbage.Close()
	addrs := map[string]string{
		"good": strings.TrimPrefix(good.URL, "http://"), "failing": strings.TrimPrefix(failing.URL, "http://"),
		"garbage": strings.TrimPrefix(garbage.URL, "http://"), "gone": "127.0.0.1:1",
	}
	f := &fetcher{log: logr.Discard(), client: &http.Client{}, addr: func(p *corev1.Pod) (string, bool) {
		a, ok := addrs[p.Name]
		return a, ok
	}}
	var pods []*corev1.Pod
	for _, name := range []string{"good", "failing", "garbage", "gone", "unmeshed"} {
		pods = append(pods, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name}})
	}
	stats := f.fetchAll(context.Background(), pods, 90*time.Second)
	if len(stats) != 1 || stats[0].pod.Name != "good" || inboundTotals(stats).success != 3 {
		t.Fatalf("stats %+v, want only the good proxy's", stats)
	}
	if gotWindow != "1m30s" {
		t.Errorf("asked for window %q, want 1m30s", gotWindow)
	}
}

func TestPodAdminAddr(t *testing.T) {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{"braid.dev/injected": "true"}}, Status: corev1.PodStatus{PodIP: "10.1.2.3", Phase: corev1.PodRunning}}
	if a, ok := PodAdminAddr(p); !ok || a != "10.1.2.3:15000" {
		t.Errorf("injected pod: %q %v", a, ok)
	}
	p.Status.Phase = corev1.PodSucceeded
	if _, ok := PodAdminAddr(p); ok {
		t.Error("a finished pod has no proxy to ask")
	}
	p.Status.Phase, p.Annotations = corev1.PodRunning, nil
	if _, ok := PodAdminAddr(p); ok {
		t.Error("a pod without the injected annotation has no proxy")
	}
}
