package configserver_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/go-logr/logr/testr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/braidmesh/braid/internal/configserver"
	"github.com/braidmesh/braid/proxy/api"
)

// quiet is how long a test waits to be sure that a message does NOT arrive. It bounds a
// behavioural check (no resend, no push), not how fast the server is.
const quiet = 300 * time.Millisecond

// eventually bounds how long a test waits for something that must happen.
const eventually = 10 * time.Second

// clock is the fixed time the server stamps connections with.
var clock = time.Date(2030, time.January, 2, 3, 4, 5, 0, time.UTC)

// startServer serves a new Server on a loopback port until the test ends, and checks that
// Serve returns nil when its context is canceled. Changes are pushed at once.
func startServer(t *testing.T) (*configserver.Server, string) {
	t.Helper()
	return startServerWith(t, configserver.Options{Clock: clocktesting.NewFakeClock(clock)})
}

func startServerWith(t *testing.T, opts configserver.Options) (*configserver.Server, string) {
	t.Helper()
	srv := configserver.New(testr.New(t), opts)
	srv.MarkReady()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listening: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve returned %v after its context was canceled, want nil", err)
			}
		case <-time.After(eventually):
			t.Errorf("Serve did not return within %v after its context was canceled", eventually)
		}
	})
	return srv, lis.Addr().String()
}

// proxy is a test's side of one config stream. A single goroutine receives from the
// stream: snapshots go to snaps, and the error that ends the stream to done.
type proxy struct {
	t      *testing.T
	stream grpc.BidiStreamingClient[api.StreamRequest, api.Snapshot]
	cancel context.CancelFunc
	snaps  chan *api.Snapshot
	done   chan error
	// have is what the proxy holds after folding every snapshot, as braid-proxy does.
	have map[string]*api.Service
}

// dial opens a stream to addr on its own connection and sends first (when not nil).
func dial(t *testing.T, addr string, first *api.StreamRequest) *proxy {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("creating a client for %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := api.NewConfigServiceClient(conn).Stream(ctx)
	if err != nil {
		t.Fatalf("opening a stream: %v", err)
	}
	p := &proxy{t: t, stream: stream, cancel: cancel, snaps: make(chan *api.Snapshot, 16), done: make(chan error, 1)}
	go func() {
		for {
			snap, err := stream.Recv()
			if err != nil {
				p.done <- err
				return
			}
			p.snaps <- snap
		}
	}()
	if first != nil {
		if err := stream.Send(first); err != nil {
			t.Fatalf("sending the first message: %v", err)
		}
	}
	return p
}

func helloMsg(id, namespace, serviceAccount string) *api.StreamRequest {
	return &api.StreamRequest{Kind: &api.StreamRequest_Hello{Hello: &api.Hello{ProxyId: id, Namespace: namespace, ServiceAccount: serviceAccount}}}
}

func ackMsg(version uint64, errText string) *api.StreamRequest {
	return &api.StreamRequest{Kind: &api.StreamRequest_Ack{Ack: &api.Ack{Version: version, Error: errText}}}
}

// connect opens a stream and says Hello as proxy id in namespace shop.
func connect(t *testing.T, addr, id string) *proxy {
	t.Helper()
	return dial(t, addr, helloMsg(id, "shop", "web"))
}

// next folds the next snapshot the proxy receives into what it holds and returns that,
// as a full snapshot of the received version.
func (p *proxy) next() *api.Snapshot {
	p.t.Helper()
	snap := p.nextRaw()
	if snap.GetFull() || p.have == nil {
		if !snap.GetFull() {
			p.t.Fatalf("the first snapshot on a stream must be full, got %v", snap)
		}
		p.have = map[string]*api.Service{}
	}
	for _, k := range snap.GetRemoved() {
		delete(p.have, k)
	}
	for _, svc := range snap.GetServices() {
		p.have[svc.GetNamespace()+"/"+svc.GetName()] = svc
	}
	out := &api.Snapshot{Version: snap.GetVersion(), Full: true}
	for _, svc := range p.have {
		out.Services = append(out.Services, svc)
	}
	slices.SortFunc(out.Services, func(a, b *api.Service) int {
		return strings.Compare(a.GetNamespace()+"\x00"+a.GetName(), b.GetNamespace()+"\x00"+b.GetName())
	})
	return out
}

// nextRaw returns the next snapshot exactly as the server sent it.
func (p *proxy) nextRaw() *api.Snapshot {
	p.t.Helper()
	select {
	case snap := <-p.snaps:
		return snap
	case err := <-p.done:
		p.t.Fatalf("the stream ended (%v) while a snapshot was expected", err)
	case <-time.After(eventually):
		p.t.Fatalf("no snapshot within %v", eventually)
	}
	return nil
}

// nothingMore checks that no further snapshot arrives and the stream stays open.
func (p *proxy) nothingMore() {
	p.t.Helper()
	select {
	case snap := <-p.snaps:
		p.t.Fatalf("unexpected snapshot: %v", snap)
	case err := <-p.done:
		p.t.Fatalf("the stream ended unexpectedly: %v", err)
	case <-time.After(quiet):
	}
}

// ended waits for the stream to end and returns the error it ended with.
func (p *proxy) ended() error {
	p.t.Helper()
	select {
	case err := <-p.done:
		return err
	case snap := <-p.snaps:
		p.t.Fatalf("received snapshot %v on a stream that should have ended", snap)
	case <-time.After(eventually):
		p.t.Fatalf("the stream did not end within %v", eventually)
	}
	return nil
}

func (p *proxy) ack(version uint64, errText string) {
	p.t.Helper()
	if err := p.stream.Send(ackMsg(version, errText)); err != nil {
		p.t.Fatalf("sending ack for version %d: %v", version, err)
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(eventually)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting until %s", eventually, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// proxyStatus returns the status of the one proxy with id, failing when there is not exactly one.
func proxyStatus(t *testing.T, srv *configserver.Server, id string) configserver.ProxyStatus {
	t.Helper()
	var found []configserver.ProxyStatus
	for _, st := range srv.Proxies() {
		if st.ID == id {
			found = append(found, st)
		}
	}
	if len(found) != 1 {
		t.Fatalf("Proxies() has %d entries for %q, want 1: %+v", len(found), id, srv.Proxies())
	}
	return found[0]
}

// waitStatus polls the proxy's status until cond holds, and returns it.
func waitStatus(t *testing.T, srv *configserver.Server, id, what string, cond func(configserver.ProxyStatus) bool) configserver.ProxyStatus {
	t.Helper()
	deadline := time.Now().Add(eventually)
	for {
		for _, st := range srv.Proxies() {
			if st.ID == id && cond(st) {
				return st
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting until proxy %s %s; Proxies() = %+v", eventually, id, what, srv.Proxies())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func service(namespace, name string, port uint32, backends ...*api.Backend) *api.Service {
	return &api.Service{Namespace: namespace, Name: name, Ports: []*api.ServicePort{{Name: "http", Port: port, Routes: []*api.Route{{Backends: backends}}}}}
}

// backend is a backend with weight 1 and an endpoint on port 8080 at each of ips.
func backend(svc string, ips ...string) *api.Backend {
	b := &api.Backend{Service: svc, Weight: 1}
	for _, ip := range ips {
		b.Endpoints = append(b.Endpoints, &api.Endpoint{Ip: ip, Port: 8080})
	}
	return b
}

// checkSnapshot compares a snapshot with the version and services it must carry, in order.
func checkSnapshot(t *testing.T, got *api.Snapshot, version uint64, services ...*api.Service) {
	t.Helper()
	want := &api.Snapshot{Version: version, Services: services, Full: true}
	if !proto.Equal(got, want) {
		t.Fatalf("snapshot:\n got %v\nwant %v", got, want)
	}
}

func TestHelloReceivesCurrentSnapshotOnce(t *testing.T) {
	t.Run("empty server, version 0", func(t *testing.T) {
		srv, addr := startServer(t)
		p := dial(t, addr, helloMsg("web-1", "shop", "web-sa"))
		checkSnapshot(t, p.next(), 0)
		p.nothingMore()

		st := proxyStatus(t, srv, "web-1")
		want := configserver.ProxyStatus{ID: "web-1", Namespace: "shop", ServiceAccount: "web-sa", Connected: clock, Sent: 0, Acked: 0}
		st.Synced = false // checked by TestSyncedNeedsAnAck
		if !reflect.DeepEqual(st, want) {
			t.Errorf("status:\n got %+v\nwant %+v", st, want)
		}

		// An Ack is not a reason to send again.
		p.ack(0, "")
		p.nothingMore()
	})

	t.Run("configured server", func(t *testing.T) {
		srv, addr := startServer(t)
		a := service("shop", "a", 80, backend("a", "10.0.0.1"))
		b := service("shop", "b", 80, backend("b", "10.0.0.2"))
		srv.SetService("shop", "a", a)
		srv.SetService("shop", "b", b)
		p := connect(t, addr, "web-2")
		checkSnapshot(t, p.next(), 2, a, b)
		p.nothingMore()
		if st := proxyStatus(t, srv, "web-2"); st.Sent != 2 || st.Acked != 0 || st.Synced {
			t.Errorf("before its ack the proxy has Sent=%d Acked=%d Synced=%v, want 2, 0, false", st.Sent, st.Acked, st.Synced)
		}
	})
}

func TestSetServicePushesToEveryProxy(t *testing.T) {
	srv, addr := startServer(t)
	p1, p2 := connect(t, addr, "web-1"), connect(t, addr, "web-2")
	checkSnapshot(t, p1.next(), 0)
	checkSnapshot(t, p2.next(), 0)

	a := service("shop", "a", 80, backend("a", "10.0.0.1"))
	srv.SetService("shop", "a", a)
	if v := srv.Version(); v != 1 {
		t.Fatalf("Version() = %d after the first SetService, want 1", v)
	}
	checkSnapshot(t, p1.next(), 1, a)
	checkSnapshot(t, p2.next(), 1, a)

	b := service("other", "b", 9090, backend("b", "10.0.1.1"))
	srv.SetService("other", "b", b)
	checkSnapshot(t, p1.next(), 2, b, a)
	checkSnapshot(t, p2.next(), 2, b, a)

	p1.nothingMore()
	p2.nothingMore()
	waitStatus(t, srv, "web-2", "has been sent version 2", func(st configserver.ProxyStatus) bool { return st.Sent == 2 })
}

func TestSetServiceEqualValueChangesNothing(t *testing.T) {
	srv, addr := startServer(t)
	a := service("shop", "a", 80, backend("a", "10.0.0.1", "10.0.0.2"))
	srv.SetService("shop", "a", a)
	p := connect(t, addr, "web-1")
	checkSnapshot(t, p.next(), 1, a)

	// A different message with an equal value.
	srv.SetService("shop", "a", proto.Clone(a).(*api.Service))
	if v := srv.Version(); v != 1 {
		t.Errorf("Version() = %d after setting an equal value, want 1", v)
	}
	p.nothingMore()

	// A changed value is a new version.
	changed := service("shop", "a", 80, backend("a", "10.0.0.1"))
	srv.SetService("shop", "a", changed)
	if v := srv.Version(); v != 2 {
		t.Errorf("Version() = %d after changing the value, want 2", v)
	}
	checkSnapshot(t, p.next(), 2, changed)
	p.nothingMore()
}

func TestSetServiceNilRemoves(t *testing.T) {
	srv, addr := startServer(t)
	a := service("shop", "a", 80, backend("a", "10.0.0.1"))
	b := service("shop", "b", 80, backend("b", "10.0.0.2"))
	srv.SetService("shop", "a", a)
	srv.SetService("shop", "b", b)
	p := connect(t, addr, "web-1")
	checkSnapshot(t, p.next(), 2, a, b)

	srv.SetService("shop", "a", nil)
	if v := srv.Version(); v != 3 {
		t.Errorf("Version() = %d after removing a service, want 3", v)
	}
	checkSnapshot(t, p.next(), 3, b)

	// Removing what is absent (again, or never there) is a no-op.
	srv.SetService("shop", "a", nil)
	srv.SetService("nowhere", "ghost", nil)
	if v := srv.Version(); v != 3 {
		t.Errorf("Version() = %d after removing absent services, want 3", v)
	}
	p.nothingMore()

	srv.SetService("shop", "b", nil)
	checkSnapshot(t, p.next(), 4)
	p.nothingMore()
}

func TestAckTracking(t *testing.T) {
	srv, addr := startServer(t)
	srv.SetService("shop", "a", service("shop", "a", 80, backend("a", "10.0.0.1")))
	p := connect(t, addr, "web-1")
	if v := p.next().GetVersion(); v != 1 {
		t.Fatalf("first snapshot has version %d, want 1", v)
	}

	p.ack(1, "")
	st := waitStatus(t, srv, "web-1", "acks version 1", func(st configserver.ProxyStatus) bool { return st.Acked == 1 })
	if !st.Synced || st.Nack != "" || st.Sent != 1 {
		t.Errorf("after acking the current version: %+v, want Sent=1 Synced=true and no Nack", st)
	}

	// A new version: the proxy is behind until it acks it.
	srv.SetService("shop", "b", service("shop", "b", 80, backend("b", "10.0.0.2")))
	if v := p.next().GetVersion(); v != 2 {
		t.Fatalf("pushed snapshot has version %d, want 2", v)
	}
	if st := proxyStatus(t, srv, "web-1"); st.Synced || st.Acked != 1 || st.Sent != 2 {
		t.Errorf("before acking version 2: %+v, want Sent=2 Acked=1 Synced=false", st)
	}

	// A NACK: the proxy keeps version 1.
	p.ack(2, "service shop/b: port 80 appears twice")
	st = waitStatus(t, srv, "web-1", "NACKs version 2", func(st configserver.ProxyStatus) bool { return st.Nack != "" })
	if st.Nack != "service shop/b: port 80 appears twice" || st.Synced || st.Acked != 1 {
		t.Errorf("after a NACK: %+v, want the NACK's error, Acked=1 and Synced=false", st)
	}

	// A later version that applies clears the NACK.
	srv.SetService("shop", "b", nil)
	if v := p.next().GetVersion(); v != 3 {
		t.Fatalf("pushed snapshot has version %d, want 3", v)
	}
	p.ack(3, "")
	st = waitStatus(t, srv, "web-1", "acks version 3", func(st configserver.ProxyStatus) bool { return st.Acked == 3 })
	if st.Nack != "" || !st.Synced {
		t.Errorf("after acking version 3: %+v, want no Nack and Synced=true", st)
	}
	p.nothingMore()
}

// A proxy that has not acknowledged anything does not run the server's version, even when
// that version is 0.
func TestSyncedNeedsAnAck(t *testing.T) {
	srv, addr := startServer(t)
	p := connect(t, addr, "web-1")
	checkSnapshot(t, p.next(), 0)
	if st := proxyStatus(t, srv, "web-1"); st.Synced {
		t.Errorf("a proxy that has not acked version 0 yet is reported Synced: %+v", st)
	}
	p.ack(0, "")
	waitStatus(t, srv, "web-1", "is synced after acking version 0", func(st configserver.ProxyStatus) bool { return st.Synced })
}

func TestStreamMustStartWithHello(t *testing.T) {
	for _, tc := range []struct {
		name  string
		first *api.StreamRequest
	}{
		{"an ack", ackMsg(0, "")},
		{"an empty message", &api.StreamRequest{}},
		{"a hello without proxy_id", helloMsg("", "shop", "web")},
		{"a hello without namespace", helloMsg("web-1", "", "web")},
		{"an empty hello", &api.StreamRequest{Kind: &api.StreamRequest_Hello{Hello: &api.Hello{}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, addr := startServer(t)
			p := dial(t, addr, tc.first)
			err := p.ended()
			if status.Code(err) != codes.InvalidArgument {
				t.Errorf("the stream ended with %v, want code InvalidArgument", err)
			}
			if got := srv.Proxies(); len(got) != 0 {
				t.Errorf("Proxies() = %+v, want none", got)
			}
		})
	}

	t.Run("a second hello", func(t *testing.T) {
		srv, addr := startServer(t)
		p := connect(t, addr, "web-1")
		p.next()
		if err := p.stream.Send(helloMsg("web-1", "shop", "web")); err != nil {
			t.Fatalf("sending: %v", err)
		}
		if err := p.ended(); status.Code(err) != codes.InvalidArgument {
			t.Errorf("the stream ended with %v, want code InvalidArgument", err)
		}
		waitFor(t, "the proxy is gone", func() bool { return len(srv.Proxies()) == 0 })
	})
}

func TestDisconnectedProxyDisappears(t *testing.T) {
	srv, addr := startServer(t)
	p1, p2, p3 := connect(t, addr, "web-2"), connect(t, addr, "web-1"), connect(t, addr, "web-3")
	p1.next()
	p2.next()
	p3.next()
	ids := func() []string {
		var out []string
		for _, st := range srv.Proxies() {
			out = append(out, st.ID)
		}
		return out
	}
	if got := fmt.Sprint(ids()); got != "[web-1 web-2 web-3]" {
		t.Fatalf("Proxies() IDs = %s, want [web-1 web-2 web-3] (sorted by ID)", got)
	}

	// Canceling the stream.
	p1.cancel()
	waitFor(t, "web-2 is gone", func() bool { return fmt.Sprint(ids()) == "[web-1 web-3]" })

	// Half-closing the stream (the proxy says it will send nothing more).
	if err := p3.stream.CloseSend(); err != nil {
		t.Fatalf("CloseSend: %v", err)
	}
	waitFor(t, "web-3 is gone", func() bool { return fmt.Sprint(ids()) == "[web-1]" })

	// The remaining proxy still gets updates.
	a := service("shop", "a", 80, backend("a", "10.0.0.1"))
	srv.SetService("shop", "a", a)
	checkSnapshot(t, p2.next(), 1, a)
}

func TestSnapshotSortsServices(t *testing.T) {
	srv, addr := startServer(t)
	var want []*api.Service
	for _, k := range [][2]string{{"a", "y"}, {"a", "z"}, {"b", "a"}, {"b", "x"}, {"c", "a"}} {
		want = append(want, service(k[0], k[1], 80, backend(k[1], "10.0.0.1")))
	}
	for _, i := range []int{3, 0, 4, 2, 1} {
		srv.SetService(want[i].GetNamespace(), want[i].GetName(), want[i])
	}
	p := connect(t, addr, "web-1")
	checkSnapshot(t, p.next(), 5, want...)
}

// Services are sorted by namespace, then name: namespace "team" comes before "team-a"
// even though "team-a/x" < "team/x" as strings ('-' < '/').
func TestSnapshotSortsByNamespaceThenName(t *testing.T) {
	srv, addr := startServer(t)
	team := service("team", "web", 80, backend("web", "10.0.0.1"))
	teamA := service("team-a", "api", 80, backend("api", "10.0.0.2"))
	srv.SetService("team-a", "api", teamA)
	srv.SetService("team", "web", team)
	p := connect(t, addr, "web-1")
	checkSnapshot(t, p.next(), 2, team, teamA)
}

// After the first full snapshot, a proxy gets only what changed: upserts and removals.
func TestDeltasCarryOnlyWhatChanged(t *testing.T) {
	srv, addr := startServer(t)
	a, b, c := svcNamed("a"), svcNamed("b"), svcNamed("c")
	srv.SetService("shop", "a", a)
	srv.SetService("shop", "b", b)
	p := connect(t, addr, "web-1")
	if first := p.nextRaw(); !first.GetFull() || len(first.GetServices()) != 2 {
		t.Fatalf("the first snapshot must be full with both services, got %v", first)
	}
	srv.SetService("shop", "c", c)
	if d := p.nextRaw(); d.GetFull() || len(d.GetServices()) != 1 || d.GetServices()[0].GetName() != "c" || len(d.GetRemoved()) != 0 {
		t.Fatalf("want a delta holding only shop/c, got %v", d)
	}
	srv.SetService("shop", "a", nil)
	if d := p.nextRaw(); d.GetFull() || len(d.GetServices()) != 0 || !slices.Equal(d.GetRemoved(), []string{"shop/a"}) {
		t.Fatalf("want a delta removing only shop/a, got %v", d)
	}
}

// With a debounce window, changes wait for it and travel together; the window is not
// extended by later changes.
func TestDebounceCoalescesChanges(t *testing.T) {
	fake := clocktesting.NewFakeClock(clock)
	srv, addr := startServerWith(t, configserver.Options{Clock: fake, Debounce: 50 * time.Millisecond})
	p := connect(t, addr, "web-1")
	checkSnapshot(t, p.next(), 0) // a new stream is served at once
	srv.SetService("shop", "a", svcNamed("a"))
	fake.Step(30 * time.Millisecond)
	srv.SetService("shop", "b", svcNamed("b"))
	p.nothingMore()
	fake.Step(20 * time.Millisecond) // 50 ms after the first change, not after the last
	d := p.nextRaw()
	if d.GetVersion() != 2 || len(d.GetServices()) != 2 {
		t.Fatalf("want one delta at version 2 with both services, got %v", d)
	}
	p.nothingMore()
}

// A proxy that falls behind the change log gets a full snapshot, not a wrong delta.
func TestFullSnapshotAfterTheChangeLogMovedOn(t *testing.T) {
	fake := clocktesting.NewFakeClock(clock)
	srv, addr := startServerWith(t, configserver.Options{Clock: fake, Debounce: time.Second})
	srv.SetService("shop", "keep", svcNamed("keep"))
	p := connect(t, addr, "web-1")
	checkSnapshot(t, p.next(), 1, svcNamed("keep"))
	for i := range 3000 { // far past the log's bound for a handful of services
		name := fmt.Sprintf("churn-%d", i%4)
		srv.SetService("shop", name, svcNamed(name))
		srv.SetService("shop", name, nil)
	}
	srv.SetService("shop", "new", svcNamed("new"))
	fake.Step(time.Second)
	raw := p.nextRaw()
	if !raw.GetFull() {
		t.Fatalf("a proxy behind the change log must get a full snapshot, got a delta of %d services", len(raw.GetServices()))
	}
	if cur := srv.Snapshot(); raw.GetVersion() != cur.GetVersion() || len(raw.GetServices()) != 2 ||
		!proto.Equal(raw.GetServices()[0], cur.GetServices()[0]) || !proto.Equal(raw.GetServices()[1], cur.GetServices()[1]) {
		t.Fatalf("want the current full snapshot (keep, new), got %v", raw)
	}
}

func TestRejectionsAreVisible(t *testing.T) {
	srv, addr := startServer(t)
	reg := prometheus.NewRegistry()
	if err := srv.RegisterMetrics(reg); err != nil {
		t.Fatal(err)
	}
	srv.SetService("shop", "a", svcNamed("a"))
	p := connect(t, addr, "web-1")
	p.next()
	p.ack(1, "route 0: path regex \"(\": missing closing )")
	eventuallyTrue(t, func() bool { _, rejected, _, _ := srv.AckStatus(1); return rejected == 1 })
	acked, rejected, connected, why := srv.AckStatus(1)
	if acked != 0 || rejected != 1 || connected != 1 || !strings.Contains(why, "web-1") || !strings.Contains(why, "missing closing") {
		t.Fatalf("AckStatus(1) = %d, %d, %d, %q", acked, rejected, connected, why)
	}
	rec := httptest.NewRecorder()
	srv.DebugHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/debug/proxies", nil))
	if body := rec.Body.String(); !strings.Contains(body, "web-1") || !strings.Contains(body, "REJECTED") || !strings.Contains(body, "missing closing") {
		t.Fatalf("/debug/proxies does not show the rejection:\n%s", body)
	}
	if got := metricValue(t, reg, "braid_config_rejections_total", ""); got != 1 {
		t.Errorf("braid_config_rejections_total = %v, want 1", got)
	}
	if got := metricValue(t, reg, "braid_config_proxies", "REJECTED"); got != 1 {
		t.Errorf(`braid_config_proxies{state="REJECTED"} = %v, want 1`, got)
	}
	p.ack(1, "")
	eventuallyTrue(t, func() bool { acked, _, _, _ := srv.AckStatus(1); return acked == 1 })
	if got := metricValue(t, reg, "braid_config_proxies", "SYNCED"); got != 1 {
		t.Errorf(`after an ACK braid_config_proxies{state="SYNCED"} = %v, want 1`, got)
	}
}

func svcNamed(name string) *api.Service {
	return &api.Service{Namespace: "shop", Name: name, Ports: []*api.ServicePort{{Port: 80}}}
}

func eventuallyTrue(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(eventually)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition never held")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func metricValue(t *testing.T, reg *prometheus.Registry, name, state string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if state != "" && !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool { return l.GetName() == "state" && l.GetValue() == state }) {
				continue
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s (state %q) not found", name, state)
	return 0
}

// Before MarkReady a stream gets nothing, so a proxy that reconnects to a restarting
// operator keeps its configuration instead of receiving an empty or partial mesh.
func TestStreamsWaitUntilReady(t *testing.T) {
	srv := configserver.New(testr.New(t), configserver.Options{Clock: clocktesting.NewFakeClock(clock)})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = srv.Serve(ctx, lis) }()
	p := connect(t, lis.Addr().String(), "web-1")
	srv.SetService("shop", "a", svcNamed("a")) // the operator is still compiling
	p.nothingMore()
	srv.SetService("shop", "b", svcNamed("b"))
	srv.MarkReady()
	checkSnapshot(t, p.next(), 2, svcNamed("a"), svcNamed("b"))
}

// A proxy cannot acknowledge a version it was never sent: it would make Programmed lie.
func TestAckForAVersionNeverSentEndsTheStream(t *testing.T) {
	_, addr := startServer(t)
	p := connect(t, addr, "web-1")
	p.next() // version 0
	p.ack(42, "")
	if err := p.ended(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("want InvalidArgument, got %v", err)
	}
}
