package configfile_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/proxy/configfile"
	"github.com/braidmesh/braid/proxy/router"
)

// eventually bounds how long a test waits for something that must happen.
const eventually = 10 * time.Second

func webSnapshot(version uint64) *api.Snapshot {
	return &api.Snapshot{Version: version, Full: true, Services: []*api.Service{{
		Namespace: "shop", Name: "web", Ports: []*api.ServicePort{{
			Port: 80, Routes: []*api.Route{{
				Matches:  []*api.HTTPMatch{{PathRegex: "/api/.*", Methods: []string{"GET"}, Headers: []*api.HeaderMatch{{Name: "X-Canary", ValueRegex: "true"}}}},
				Backends: []*api.Backend{{Service: "web", Weight: 1, Endpoints: []*api.Endpoint{{Ip: "10.0.0.1", Port: 8080}}}},
			}},
		}},
	}}}
}

func TestParse(t *testing.T) {
	cases := map[string]string{
		"yaml": `
version: 7
services:
- namespace: shop
  name: web
  ports:
  - port: 80
    routes:
    - matches:
      - pathRegex: "/api/.*"
        methods: [GET]
        headers: [{name: X-Canary, valueRegex: "true"}]
      backends:
      - {service: web, weight: 1, endpoints: [{ip: 10.0.0.1, port: 8080}]}
`,
		"json": `{"version": "7", "services": [{"namespace": "shop", "name": "web", "ports": [{"port": 80, "routes": [{
			"matches": [{"pathRegex": "/api/.*", "methods": ["GET"], "headers": [{"name": "X-Canary", "valueRegex": "true"}]}],
			"backends": [{"service": "web", "weight": 1, "endpoints": [{"ip": "10.0.0.1", "port": 8080}]}]}]}]}]}`,
		"proto field names": `
version: 7
full: true
services:
- namespace: shop
  name: web
  ports:
  - port: 80
    routes:
    - matches: [{path_regex: "/api/.*", methods: [GET], headers: [{name: X-Canary, value_regex: "true"}]}]
      backends: [{service: web, weight: 1, endpoints: [{ip: 10.0.0.1, port: 8080}]}]
`,
	}
	for name, text := range cases {
		t.Run(name, func(t *testing.T) {
			snap, err := configfile.Parse([]byte(text))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if want := webSnapshot(7); !proto.Equal(snap, want) {
				t.Errorf("Parse =\n%v\nwant\n%v", snap, want)
			}
		})
	}
}

func TestParseEmpty(t *testing.T) {
	for _, text := range []string{"", "# nothing yet\n", "{}"} {
		snap, err := configfile.Parse([]byte(text))
		if err != nil {
			t.Fatalf("Parse(%q): %v", text, err)
		}
		if len(snap.GetServices()) != 0 || snap.GetVersion() != 0 {
			t.Errorf("Parse(%q) = %v, want an empty snapshot", text, snap)
		}
	}
}

// A JSON file is decoded as it is, without the YAML detour: for 1000 Services that detour
// allocated more than 40 times the file's size.
func TestParseJSONInOnePass(t *testing.T) {
	snap := &api.Snapshot{Version: 1}
	for i := range 1000 {
		snap.Services = append(snap.Services, &api.Service{Namespace: "shop", Name: fmt.Sprintf("svc-%04d", i), ClusterIps: []string{fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)},
			Ports: []*api.ServicePort{{Name: "http", Port: 80, Routes: []*api.Route{{Backends: []*api.Backend{{Service: "svc", Weight: 1, Endpoints: []*api.Endpoint{
				{Ip: "10.244.0.1", Port: 8080, Identity: "spiffe://cluster.local/ns/shop/sa/svc", ProxyPort: 15006},
				{Ip: "10.244.0.2", Port: 8080, Identity: "spiffe://cluster.local/ns/shop/sa/svc", ProxyPort: 15006},
			}}}}}}},
		})
	}
	data, err := protojson.Marshal(snap)
	if err != nil {
		t.Fatal(err)
	}
	var got *api.Snapshot
	allocated := allocatedBy(func() { got, err = configfile.Parse(data) })
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if len(got.GetServices()) != 1000 || !got.GetFull() {
		t.Fatalf("Parse decoded %d Services (full %v), want 1000 (full)", len(got.GetServices()), got.GetFull())
	}
	if limit := 8 * uint64(len(data)); allocated > limit {
		t.Errorf("decoding a %d-byte JSON file allocated %d bytes, want at most %d", len(data), allocated, limit)
	}
}

// allocatedBy returns the bytes f allocates.
func allocatedBy(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// JSON that protojson refuses still reads as YAML reads it: a key given twice is the last.
func TestParseJSONAsYAML(t *testing.T) {
	snap, err := configfile.Parse([]byte(`{"version": 1, "version": 2}`))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if snap.GetVersion() != 2 {
		t.Errorf("version = %d, want 2 (the last)", snap.GetVersion())
	}
	if _, err := configfile.Parse([]byte(`{"services": [{"namespace": "shop", "name": "web", "prots": []}]}`)); err == nil || !strings.Contains(err.Error(), "prots") {
		t.Errorf("Parse of a misspelt field in JSON: error %v, want one naming it", err)
	}
}

func TestParseRejects(t *testing.T) {
	cases := map[string]struct{ text, mention string }{
		"YAML syntax":    {"services: [", "parsing YAML"},
		"unknown field":  {"services: [{namespace: shop, name: web, prots: []}]", "prots"},
		"misspelt field": {"services: [{namespace: shop, name: web, ports: [{port: 80, routes: [{matches: [{pathregex: /x}]}]}]}]", "pathregex"},
		"wrong type":     {"services: [{namespace: shop, name: web, ports: [{port: eighty}]}]", "port"},
		"negative":       {"services: [{namespace: shop, name: web, ports: [{port: -1}]}]", "port"},
		"removed":        {"removed: [shop/web]", "removed"},
		"not an object":  {"- a\n- b\n", "decoding"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := configfile.Parse([]byte(c.text))
			if err == nil || !strings.Contains(err.Error(), c.mention) {
				t.Errorf("Parse(%q) error = %v, want one mentioning %q", c.text, err, c.mention)
			}
		})
	}
}

// Every example of docs/proxy-config.md loads and builds, so the page cannot drift from
// what the proxy accepts.
func TestDocExamples(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "proxy-config.md"))
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?ms)^```(yaml|json)\n(.*?)^```").FindAllStringSubmatch(string(doc), -1)
	if len(blocks) < 5 { // one service, the same in JSON, a split, matches, unavailable
		t.Fatalf("found %d yaml/json examples in docs/proxy-config.md, want at least 5", len(blocks))
	}
	for i, b := range blocks {
		t.Run(b[1]+"-"+string(rune('1'+i)), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config."+b[1])
			if err := os.WriteFile(path, []byte(b[2]), 0o600); err != nil {
				t.Fatal(err)
			}
			snap, err := configfile.Load(path)
			if err != nil {
				t.Fatalf("example:\n%s\nLoad: %v", b[2], err)
			}
			if len(snap.GetServices()) == 0 {
				t.Errorf("example:\n%s\nhas no service", b[2])
			}
			if _, err := router.Build(snap, "shop", "cluster.local"); err != nil {
				t.Errorf("example:\n%s\nBuild: %v", b[2], err)
			}
		})
	}
}

// applied records what a Watcher applies and rejects.
type applied struct {
	mu       sync.Mutex
	versions []uint64
	rejected int
}

func (a *applied) apply(s *api.Snapshot) error {
	if _, err := router.Build(s, "shop", "cluster.local"); err != nil {
		a.mu.Lock()
		a.rejected++
		a.mu.Unlock()
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.versions = append(a.versions, s.GetVersion())
	return nil
}

func (a *applied) reject() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.rejected++
}

func (a *applied) state() ([]uint64, int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]uint64(nil), a.versions...), a.rejected
}

// waitFor waits until the watcher has applied want and rejected rejected files.
func (a *applied) waitFor(t *testing.T, want []uint64, rejected int) {
	t.Helper()
	deadline := time.Now().Add(eventually)
	for {
		got, rej := a.state()
		if slices.Equal(got, want) && rej == rejected {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("applied versions %v and rejected %d, want %v and %d", got, rej, want, rejected)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func write(t *testing.T, path, text string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func webConfig(version int, weight int) string {
	return fmt.Sprintf("version: %d\nservices: [{namespace: shop, name: web, ports: [{port: 80, routes: [{backends: [{service: web, weight: %d}]}]}]}]\n", version, weight)
}

func TestWatcher(t *testing.T) {
	path := filepath.Join(t.TempDir(), "braid.yaml")
	write(t, path, webConfig(1, 1))
	a := &applied{}
	w := &configfile.Watcher{Path: path, Apply: a.apply, Rejected: a.reject, Log: testr.New(t), Interval: 5 * time.Millisecond}
	if err := w.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	a.waitFor(t, []uint64{1}, 0)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()

	// A file of the same size, renamed over the first: a new file, read again.
	write(t, path, webConfig(2, 1))
	a.waitFor(t, []uint64{1, 2}, 0)
	// A file that does not parse, then one that parses but does not build: each is
	// rejected once, however many times the watcher looks at it.
	write(t, path, "services: [")
	a.waitFor(t, []uint64{1, 2}, 1)
	write(t, path, "services: [{namespace: shop, name: web, ports: [{port: 80}, {port: 80}]}]")
	a.waitFor(t, []uint64{1, 2}, 2)
	time.Sleep(50 * time.Millisecond) // ten more looks
	a.waitFor(t, []uint64{1, 2}, 2)
	// Gone for a while, then back.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	write(t, path, webConfig(3, 2))
	a.waitFor(t, []uint64{1, 2, 3}, 2)

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(eventually):
		t.Fatal("Run did not return after its context ended")
	}
}

func TestWatcherStartFails(t *testing.T) {
	dir := t.TempDir()
	broken := filepath.Join(dir, "broken.yaml")
	write(t, broken, "services: [")
	unbuildable := filepath.Join(dir, "unbuildable.yaml")
	write(t, unbuildable, "services: [{namespace: shop, name: web, ports: [{port: 0}]}]")
	for _, path := range []string{filepath.Join(dir, "missing.yaml"), broken, unbuildable} {
		a := &applied{}
		w := &configfile.Watcher{Path: path, Apply: a.apply, Rejected: a.reject, Log: testr.New(t), Interval: time.Second}
		if err := w.Start(); err == nil || !strings.Contains(err.Error(), filepath.Base(path)) {
			t.Errorf("Start with %s: error %v, want one naming the file", filepath.Base(path), err)
		}
	}
}
