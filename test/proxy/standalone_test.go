package proxy

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/braidmesh/braid/test/harness"
)

// load sends requests for host through the proxy from workers concurrent clients until
// ctx ends, and counts the answers by backend name; anything but a 200 counts under
// "HTTP <status>", a transport error under "error: …".
func load(ctx context.Context, p *harness.Proxy, host string, workers int) map[string]int {
	var (
		mu     sync.Mutex
		counts = map[string]int{}
		wg     sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				res, err := p.Get(context.WithoutCancel(ctx), host) // a request started is finished
				key := res.Body
				switch {
				case err != nil:
					key = "error: " + err.Error()
				case res.Status != http.StatusOK:
					key = fmt.Sprintf("HTTP %d", res.Status)
				}
				mu.Lock()
				counts[key]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return counts
}

// Traffic follows the config file as it is rewritten, and no request fails while the
// proxy swaps one configuration for the next under load.
func TestStandaloneFollowsTheFileUnderLoad(t *testing.T) {
	ctx := t.Context()
	v1, v2 := backend(t, "web-v1"), backend(t, "web-v2")
	p, path := standalone(t, splitConfig(1, weighted{v1, 100}, weighted{v2, 0}))
	if counts, err := p.Spread(ctx, "web.shop", 100); err != nil || counts["web-v1"] != 100 {
		t.Fatalf("at 100/0: %s (%v), want every request on web-v1", harness.FormatCounts(counts), err)
	}

	writeConfig(t, path, splitConfig(2, weighted{v1, 70}, weighted{v2, 30}))
	waitWeights(ctx, t, p, weighted{v1, 70}, weighted{v2, 30})
	counts, err := p.Spread(ctx, "web", 200) // a bare name: the proxy's namespace, shop
	if err != nil {
		t.Fatal(err)
	}
	if share := harness.Share(counts, "web-v2"); math.Abs(share-0.30) > 0.03 || counts["web-v1"]+counts["web-v2"] != 200 {
		t.Fatalf("at 70/30: %s, want 30%% ±3 on web-v2 and nothing else", harness.FormatCounts(counts))
	}

	// Eight clients for two seconds while the file changes every 200 ms.
	loadCtx, stopLoad := context.WithTimeout(ctx, 2*time.Second)
	defer stopLoad()
	result := make(chan map[string]int, 1)
	go func() { result <- load(loadCtx, p, "web.shop", 8) }()
	steps := [][2]int{{0, 100}, {50, 50}, {100, 0}, {10, 90}, {1, 0}, {0, 1}}
	version := 2
	for i := 0; loadCtx.Err() == nil; i++ {
		s := steps[i%len(steps)]
		version++
		writeConfig(t, path, splitConfig(version, weighted{v1, s[0]}, weighted{v2, s[1]}))
		waitWeights(ctx, t, p, weighted{v1, s[0]}, weighted{v2, s[1]})
		select {
		case <-loadCtx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	counts = <-result
	total := counts["web-v1"] + counts["web-v2"]
	if total != sumCounts(counts) {
		t.Errorf("under load with %d config changes: %s, want every request answered by a backend", version-2, harness.FormatCounts(counts))
	}
	if total < 200 || counts["web-v1"] == 0 || counts["web-v2"] == 0 {
		t.Errorf("under load: %s, want at least 200 requests, on both backends", harness.FormatCounts(counts))
	}
	t.Logf("%d requests under load across %d config changes: %s", total, version-2, harness.FormatCounts(counts))

	writeConfig(t, path, splitConfig(version+1, weighted{v1, 0}, weighted{v2, 100}))
	waitWeights(ctx, t, p, weighted{v1, 0}, weighted{v2, 100})
	if counts, err := p.Spread(ctx, "web.shop.svc.cluster.local", 100); err != nil || counts["web-v2"] != 100 {
		t.Fatalf("at 0/100: %s (%v), want every request on web-v2", harness.FormatCounts(counts), err)
	}
}

func sumCounts(counts map[string]int) int {
	n := 0
	for _, c := range counts {
		n += c
	}
	return n
}

// A config file that does not parse, or parses but does not build, is rejected and
// counted; the last good configuration keeps serving until a good file comes.
func TestStandaloneKeepsTheLastGoodConfig(t *testing.T) {
	ctx := t.Context()
	v1, v2 := backend(t, "web-v1"), backend(t, "web-v2")
	p, path := standalone(t, splitConfig(1, weighted{v1, 1}, weighted{v2, 0}))
	rejections := func(want float64) {
		t.Helper()
		metric(ctx, t, p, "braid_proxy_config_rejections_total", map[string]string{}, want)
	}
	rejections(0)
	metric(ctx, t, p, "braid_proxy_config_version", map[string]string{}, 1)

	broken := map[string]string{
		"YAML syntax":      "services: [\n",
		"unknown field":    "version: 2\nservices: [{namespace: shop, name: web, prots: []}]\n",
		"bad regex":        "version: 2\nservices: [{namespace: shop, name: web, ports: [{port: 80, routes: [{matches: [{pathRegex: \"(\"}]}]}]}]\n",
		"invalid endpoint": "version: 2\nservices: [{namespace: shop, name: web, ports: [{port: 80, routes: [{backends: [{service: web, weight: 1, endpoints: [{ip: nowhere, port: 80}]}]}]}]}]\n",
	}
	n := 0
	for what, config := range broken {
		writeConfig(t, path, config)
		n++
		rejections(float64(n))
		if snap, err := p.Snapshot(ctx); err != nil || snap.GetVersion() != 1 {
			t.Fatalf("after a file with a bad %s, /config shows version %d (%v), want 1", what, snap.GetVersion(), err)
		}
		if res := get(ctx, t, p, "web.shop"); res.Status != http.StatusOK || res.Body != "web-v1" {
			t.Fatalf("after a file with a bad %s: HTTP %d %q, want web-v1", what, res.Status, res.Body)
		}
		if ready, err := p.Admin(ctx, "/ready"); err != nil {
			t.Fatalf("after a file with a bad %s the proxy is not ready: %v %s", what, err, ready)
		}
	}
	metric(ctx, t, p, "braid_proxy_config_version", map[string]string{}, 1)

	writeConfig(t, path, splitConfig(5, weighted{v1, 0}, weighted{v2, 1}))
	waitWeights(ctx, t, p, weighted{v1, 0}, weighted{v2, 1})
	expectStatus(t, get(ctx, t, p, "web.shop"), http.StatusOK)
	if res := get(ctx, t, p, "web.shop"); res.Body != "web-v2" {
		t.Fatalf("after a good file: %q, want web-v2", res.Body)
	}
	metric(ctx, t, p, "braid_proxy_config_version", map[string]string{}, 5)
	rejections(float64(n))
}

// A config file that cannot be loaded at startup stops the proxy: there is no last good
// configuration to serve.
func TestStandaloneRefusesToStartWithoutConfig(t *testing.T) {
	path := t.TempDir() + "/broken.yaml"
	writeConfig(t, path, "services: [")
	logs := &harness.LogBuffer{}
	if p, err := harness.StartStandaloneProxy(t.Context(), proxyBin, path, "shop", logs); err == nil {
		_ = p.Stop()
		t.Fatalf("braid-proxy run started with a broken config file; logs:\n%s", logs.String())
	}
	if !containsAll(logs.String(), "broken.yaml", "parsing YAML") {
		t.Errorf("braid-proxy did not say why it stopped:\n%s", logs.String())
	}
}
