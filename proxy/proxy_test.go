package proxy_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

	"github.com/braidmesh/braid/internal/configserver"
	"github.com/braidmesh/braid/proxy"
	"github.com/braidmesh/braid/proxy/api"
)

const eventually = 10 * time.Second

func freeAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lis.Close() }()
	return lis.Addr().String()
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// waitMetrics waits until the admin port's /metrics has every one of lines.
func waitMetrics(t *testing.T, admin string, lines ...string) {
	t.Helper()
	deadline := time.Now().Add(eventually)
	for {
		_, body := get(t, "http://"+admin+"/metrics")
		missing := ""
		for _, l := range lines {
			if !strings.Contains(body, "\n"+l+"\n") {
				missing = l
				break
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics never had %q; last:\n%s", missing, body)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func service(ip string) *api.Service {
	return &api.Service{Namespace: "shop", Name: "web", Ports: []*api.ServicePort{{
		Port: 80, Routes: []*api.Route{{Backends: []*api.Backend{{Service: "web", Weight: 1, Endpoints: []*api.Endpoint{{Ip: ip, Port: 8080}}}}}},
	}}}
}

// A snapshot from the control plane that the proxy NACKs counts as a rejection; the
// version gauge stays at the last version applied.
func TestMetricsCountNACKs(t *testing.T) {
	srv := configserver.New(testr.New(t), configserver.Options{})
	srv.MarkReady()
	srv.SetService("shop", "web", service("10.0.0.1"))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, lis) }()
	opts := proxy.Options{
		ControlPlane: lis.Addr().String(), OutboundAddr: freeAddr(t), AdminAddr: freeAddr(t),
		ProxyID: "web-1", Namespace: "shop", ServiceAccount: "web", ClusterDomain: "cluster.local", DrainTimeout: time.Second,
	}
	ran := make(chan error, 1)
	go func() { ran <- proxy.Run(ctx, testr.New(t), opts) }()
	t.Cleanup(func() {
		cancel()
		for _, done := range []chan error{ran, served} {
			select {
			case err := <-done:
				if err != nil {
					t.Error(err)
				}
			case <-time.After(eventually):
				t.Error("the proxy or the config server did not stop")
			}
		}
	})

	waitMetrics(t, opts.AdminAddr, "braid_proxy_config_version 1", "braid_proxy_config_rejections_total 0")
	srv.SetService("shop", "web", service("not-an-ip"))
	waitMetrics(t, opts.AdminAddr, "braid_proxy_config_version 1", "braid_proxy_config_rejections_total 1")
	srv.SetService("shop", "web", service("10.0.0.2"))
	waitMetrics(t, opts.AdminAddr, "braid_proxy_config_version 3", "braid_proxy_config_rejections_total 1")

	if code, body := get(t, "http://"+opts.AdminAddr+"/debug/pprof/"); code != http.StatusOK || !strings.Contains(body, "goroutine") {
		t.Errorf("/debug/pprof/: %d %q, want the profile index", code, body)
	}
	if code, body := get(t, "http://"+opts.AdminAddr+"/debug/pprof/goroutine?debug=1"); code != http.StatusOK || !strings.Contains(body, "proxy.Run") {
		t.Errorf("/debug/pprof/goroutine: %d, want a profile mentioning proxy.Run:\n%s", code, body)
	}
}
