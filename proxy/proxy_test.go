package proxy_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/braidmesh/braid/internal/configserver"
	"github.com/braidmesh/braid/proxy"
	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/proxy/sockio"
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
	opts := runWithControlPlane(t, srv)

	waitMetrics(t, opts.AdminAddr, "braid_proxy_config_version 1", "braid_proxy_config_rejections_total 0")
	// A Service that does not build is rejected alone: the version applies, and the
	// Service keeps its last good form.
	srv.SetService("shop", "web", service("not-an-ip"))
	waitMetrics(t, opts.AdminAddr, "braid_proxy_config_version 2", "braid_proxy_config_rejections_total 1")
	if code, body := get(t, "http://"+opts.AdminAddr+"/config"); code != http.StatusOK || !strings.Contains(body, "10.0.0.1") || strings.Contains(body, "not-an-ip") {
		t.Errorf("/config after the rejected Service: %d %s; want shop/web's last good endpoint 10.0.0.1", code, body)
	}
	// The operator learns which Service the proxy could not build, and only that one
	// counts as rejected there.
	srv.SetService("shop", "api", named(service("10.0.0.9"), "api"))
	waitMetrics(t, opts.AdminAddr, "braid_proxy_config_version 3")
	st := waitProxyAcked(t, srv, 3, "PARTIAL") // the proxy applies a version before the server hears its ACK
	if why := st.RejectedServices["shop/web"]; !strings.Contains(why, "not-an-ip") || len(st.RejectedServices) != 1 {
		t.Errorf("the proxy reported rejected Services %v, want shop/web's bad endpoint only", st.RejectedServices)
	}
	if acked, rejected, _, why := srv.AckStatusForService(3, "shop/web"); acked != 0 || rejected != 1 || !strings.Contains(why, "web-1") {
		t.Errorf("AckStatusForService(shop/web) = %d acked, %d rejected (%q); want the proxy's rejection", acked, rejected, why)
	}
	if acked, rejected, _, _ := srv.AckStatusForService(3, "shop/api"); acked != 1 || rejected != 0 {
		t.Errorf("AckStatusForService(shop/api) = %d acked, %d rejected; want it running", acked, rejected)
	}
	srv.SetService("shop", "web", service("10.0.0.2"))
	waitMetrics(t, opts.AdminAddr, "braid_proxy_config_version 4", "braid_proxy_config_rejections_total 2") // versions 2 and 3 each left shop/web out
	waitProxyState(t, srv, "SYNCED")
	checkPprof(t, opts.AdminAddr)
}

// checkPprof checks the admin server serves pprof for a running proxy.
func checkPprof(t *testing.T, admin string) {
	t.Helper()
	if code, body := get(t, "http://"+admin+"/debug/pprof/"); code != http.StatusOK || !strings.Contains(body, "goroutine") {
		t.Errorf("/debug/pprof/: %d %q, want the profile index", code, body)
	}
	if code, body := get(t, "http://"+admin+"/debug/pprof/goroutine?debug=1"); code != http.StatusOK || !strings.Contains(body, "proxy.Run") {
		t.Errorf("/debug/pprof/goroutine: %d, want a profile mentioning proxy.Run:\n%s", code, body)
	}
}

// runWithControlPlane serves srv on loopback and runs a proxy of shop/web against it
// until the test ends; it returns the proxy's options.
func runWithControlPlane(t *testing.T, srv *configserver.Server) proxy.Options {
	t.Helper()
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
	return opts
}

func named(svc *api.Service, name string) *api.Service {
	svc.Name = name
	return svc
}

// waitProxyState waits until the config server sees its one proxy in state.
func waitProxyState(t *testing.T, srv *configserver.Server, state string) configserver.ProxyStatus {
	t.Helper()
	return waitProxyAcked(t, srv, 0, state)
}

// waitProxyAcked waits until the one proxy has acknowledged version (or a later one) and
// is in state.
func waitProxyAcked(t *testing.T, srv *configserver.Server, version uint64, state string) configserver.ProxyStatus {
	t.Helper()
	deadline := time.Now().Add(eventually)
	for {
		if ps := srv.Proxies(); len(ps) == 1 && ps[0].State() == state && ps[0].Acked >= version {
			return ps[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("the proxy never reached state %s having acknowledged version %d: %+v", state, version, srv.Proxies())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// /ready answers 503 until the proxy has applied a configuration, and /config then shows
// the configuration it runs.
func TestReadyWaitsForAConfiguration(t *testing.T) {
	srv := configserver.New(testr.New(t), configserver.Options{})
	srv.SetService("shop", "web", service("10.0.0.1"))
	opts := runWithControlPlane(t, srv) // the server holds the stream until MarkReady
	deadline := time.Now().Add(eventually)
	for {
		code, body := get(t, "http://"+opts.AdminAddr+"/ready")
		if code == http.StatusServiceUnavailable && strings.Contains(body, "no configuration yet") {
			break
		}
		if code == http.StatusOK || time.Now().After(deadline) {
			t.Fatalf("/ready before any configuration = %d %q, want 503 saying there is none", code, body)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if code, body := get(t, "http://"+opts.AdminAddr+"/config"); code != http.StatusOK || strings.Contains(body, "10.0.0.1") {
		t.Errorf("/config before any configuration = %d %q, want an empty one", code, body)
	}
	srv.MarkReady()
	waitMetrics(t, opts.AdminAddr, "braid_proxy_config_version 1")
	if code, body := get(t, "http://"+opts.AdminAddr+"/ready"); code != http.StatusOK {
		t.Errorf("/ready with a configuration = %d %q, want 200", code, body)
	}
	code, body := get(t, "http://"+opts.AdminAddr+"/config")
	var shown api.Snapshot
	if err := protojson.Unmarshal([]byte(body), &shown); code != http.StatusOK || err != nil {
		t.Fatalf("/config = %d %s (%v); want the configuration as JSON", code, body, err)
	}
	if shown.GetVersion() != 1 || !slices.Equal(endpointsOf(&shown), []string{"web=10.0.0.1"}) {
		t.Errorf("/config = %s; want version 1 with shop/web's endpoint 10.0.0.1 alone", body)
	}
}

// endpointsOf lists the endpoints of snap as <service name>=<ip>.
func endpointsOf(snap *api.Snapshot) []string {
	var out []string
	for _, svc := range snap.GetServices() {
		for _, p := range svc.GetPorts() {
			for _, r := range p.GetRoutes() {
				for _, b := range r.GetBackends() {
					for _, e := range b.GetEndpoints() {
						out = append(out, svc.GetName()+"="+e.GetIp())
					}
				}
			}
		}
	}
	return out
}

// The inbound listener's connections come from peer proxies: each carries
// sockio.PeerUserTimeout, so that a peer lost without a FIN or RST fails them.
func TestInboundConnectionsCarryThePeerUserTimeout(t *testing.T) {
	config := filepath.Join(t.TempDir(), "braid.yaml")
	if err := os.WriteFile(config, []byte("version: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	opts := proxy.Options{
		ConfigFile: config, ConfigPoll: time.Second, InboundAddr: freeAddr(t), OutboundAddr: freeAddr(t), AdminAddr: freeAddr(t),
		Namespace: "shop", ClusterDomain: "cluster.local", DrainTimeout: time.Second,
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- proxy.Run(ctx, testr.New(t), opts) }()
	t.Cleanup(func() {
		cancel()
		if err := <-ran; err != nil {
			t.Error(err)
		}
	})
	var c net.Conn
	deadline := time.Now().Add(eventually)
	for {
		var err error
		if c, err = net.Dial("tcp", opts.InboundAddr); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the inbound listener never accepted: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	defer func() { _ = c.Close() }()
	for {
		fd, ok := acceptedSocket(t, c.(*net.TCPConn))
		if ok {
			ms, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
			if err != nil || time.Duration(ms)*time.Millisecond != sockio.PeerUserTimeout {
				t.Fatalf("the accepted connection's TCP_USER_TIMEOUT is %d ms (%v), want %s", ms, err, sockio.PeerUserTimeout)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("found no accepted socket for the connection in the process")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// acceptedSocket finds, among the process's file descriptors, the server end of the
// loopback connection c: the proxy runs in the test's process.
func acceptedSocket(t *testing.T, c *net.TCPConn) (int, bool) {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	local, remote := c.LocalAddr().(*net.TCPAddr), c.RemoteAddr().(*net.TCPAddr)
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		name, err1 := unix.Getsockname(fd)
		peer, err2 := unix.Getpeername(fd)
		if err1 != nil || err2 != nil {
			continue
		}
		if sameAddr(name, remote) && sameAddr(peer, local) {
			return fd, true
		}
	}
	return 0, false
}

func sameAddr(sa unix.Sockaddr, addr *net.TCPAddr) bool {
	in, ok := sa.(*unix.SockaddrInet4)
	return ok && in.Port == addr.Port && net.IP(in.Addr[:]).Equal(addr.IP)
}
