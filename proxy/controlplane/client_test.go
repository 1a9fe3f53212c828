package controlplane_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"google.golang.org/protobuf/proto"

	"github.com/braidmesh/braid/internal/configserver"
	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/proxy/controlplane"
)

// eventually bounds how long a test waits for something that must happen.
const eventually = 10 * time.Second

// serveOn serves srv on lis until the returned stop is called (or the test ends).
func serveOn(t *testing.T, srv *configserver.Server, lis net.Listener) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, lis) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(eventually):
			t.Errorf("Serve did not return within %v", eventually)
		}
	}
	t.Cleanup(stop)
	return stop
}

func newServer(t *testing.T) *configserver.Server {
	t.Helper()
	srv := configserver.New(testr.New(t), configserver.Options{})
	srv.MarkReady()
	return srv
}

func listen(t *testing.T, addr string) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listening on %s: %v", addr, err)
	}
	return lis
}

// runClient runs a client for addr until the test ends; every snapshot it applies (or
// rejects) is reported on the returned channel. reject, when not nil, decides which
// snapshots Apply rejects.
func runClient(t *testing.T, addr string, reject func(*api.Snapshot) error) <-chan *api.Snapshot {
	t.Helper()
	applied := make(chan *api.Snapshot, 100)
	c := &controlplane.Client{
		Address: addr,
		Hello:   &api.Hello{ProxyId: "web-1", Namespace: "shop", ServiceAccount: "web"},
		Apply: func(s *api.Snapshot) error {
			applied <- s
			if reject != nil {
				return reject(s)
			}
			return nil
		},
		Log:        testr.New(t),
		MinBackoff: 10 * time.Millisecond,
		MaxBackoff: 100 * time.Millisecond,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v after its context was canceled, want nil", err)
			}
		case <-time.After(eventually):
			t.Errorf("Run did not return within %v after its context was canceled", eventually)
		}
	})
	return applied
}

func next(t *testing.T, applied <-chan *api.Snapshot) *api.Snapshot {
	t.Helper()
	select {
	case s := <-applied:
		return s
	case <-time.After(eventually):
		t.Fatalf("nothing applied within %v", eventually)
	}
	return nil
}

func waitStatus(t *testing.T, srv *configserver.Server, what string, cond func(configserver.ProxyStatus) bool) configserver.ProxyStatus {
	t.Helper()
	deadline := time.Now().Add(eventually)
	for {
		for _, st := range srv.Proxies() {
			if st.ID == "web-1" && cond(st) {
				return st
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until the proxy %s; Proxies() = %+v", what, srv.Proxies())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func service(name string, ip string) *api.Service {
	return &api.Service{Namespace: "shop", Name: name, Ports: []*api.ServicePort{{
		Port: 80, Routes: []*api.Route{{Backends: []*api.Backend{{Service: name, Weight: 1, Endpoints: []*api.Endpoint{{Ip: ip, Port: 8080}}}}}},
	}}}
}

// unknownNamespace is the inbound policy the config server gives a proxy of a namespace it
// has no policy for: these tests run the server without controllers.
var unknownNamespace = &api.Inbound{Mode: "Unknown"}

func TestClientAppliesAndAcks(t *testing.T) {
	srv := newServer(t)
	a := service("a", "10.0.0.1")
	srv.SetService("shop", "a", a)
	lis := listen(t, "127.0.0.1:0")
	serveOn(t, srv, lis)
	applied := runClient(t, lis.Addr().String(), nil)

	if s := next(t, applied); !proto.Equal(s, &api.Snapshot{Version: 1, Services: []*api.Service{a}, Full: true, Inbound: unknownNamespace}) {
		t.Fatalf("applied %v, want version 1 with shop/a", s)
	}
	st := waitStatus(t, srv, "acks version 1", func(st configserver.ProxyStatus) bool { return st.Acked == 1 })
	if !st.Synced || st.Namespace != "shop" || st.ServiceAccount != "web" {
		t.Errorf("status %+v, want Synced in namespace shop with service account web", st)
	}

	srv.SetService("shop", "b", service("b", "10.0.0.2"))
	if v := next(t, applied).GetVersion(); v != 2 {
		t.Fatalf("applied version %d, want 2", v)
	}
	waitStatus(t, srv, "acks version 2", func(st configserver.ProxyStatus) bool { return st.Acked == 2 && st.Synced })
}

func TestClientNacksWhatItCannotApply(t *testing.T) {
	srv := newServer(t)
	srv.SetService("shop", "a", service("a", "10.0.0.1"))
	lis := listen(t, "127.0.0.1:0")
	serveOn(t, srv, lis)
	applied := runClient(t, lis.Addr().String(), func(s *api.Snapshot) error {
		if s.GetVersion() == 2 {
			return errors.New("version 2: invalid endpoint")
		}
		return nil
	})
	next(t, applied)
	waitStatus(t, srv, "acks version 1", func(st configserver.ProxyStatus) bool { return st.Acked == 1 })

	srv.SetService("shop", "b", service("b", "10.0.0.2"))
	next(t, applied)
	st := waitStatus(t, srv, "NACKs version 2", func(st configserver.ProxyStatus) bool { return st.Nack != "" })
	if st.Nack != "version 2: invalid endpoint" || st.Acked != 1 || st.Synced {
		t.Errorf("after the NACK: %+v, want the NACK's error, Acked=1, Synced=false", st)
	}

	srv.SetService("shop", "b", nil)
	next(t, applied)
	waitStatus(t, srv, "acks version 3", func(st configserver.ProxyStatus) bool { return st.Acked == 3 && st.Nack == "" && st.Synced })
}

// The client reconnects when the server goes away, and gets the new server's configuration.
func TestClientReconnects(t *testing.T) {
	first := newServer(t)
	first.SetService("shop", "a", service("a", "10.0.0.1"))
	lis := listen(t, "127.0.0.1:0")
	addr := lis.Addr().String()
	stopFirst := serveOn(t, first, lis)
	applied := runClient(t, addr, nil)
	if v := next(t, applied).GetVersion(); v != 1 {
		t.Fatalf("applied version %d from the first server, want 1", v)
	}
	stopFirst()

	second := newServer(t)
	b := service("b", "10.0.0.2")
	second.SetService("shop", "b", b)
	second.SetService("shop", "c", service("c", "10.0.0.3"))
	second.SetService("shop", "c", nil)
	serveOn(t, second, listen(t, addr))
	want := &api.Snapshot{Version: 3, Services: []*api.Service{b}, Full: true, Inbound: unknownNamespace}
	if s := next(t, applied); !proto.Equal(s, want) {
		t.Fatalf("applied %v after reconnecting, want %v", s, want)
	}
	waitStatus(t, second, "acks version 3 on the second server", func(st configserver.ProxyStatus) bool { return st.Acked == 3 && st.Synced })
}

// With no control plane at all the client keeps trying, and still stops when asked.
func TestClientWithoutControlPlane(t *testing.T) {
	lis := listen(t, "127.0.0.1:0")
	addr := lis.Addr().String()
	if err := lis.Close(); err != nil {
		t.Fatal(err)
	}
	applied := runClient(t, addr, nil)
	select {
	case s := <-applied:
		t.Fatalf("applied %v without a control plane", s)
	case <-time.After(200 * time.Millisecond):
	}
	// Run must return nil once the test cancels it (checked in runClient's cleanup).
}

// While the control plane is unreachable the client keeps trying at its own backoff,
// never more than MaxBackoff apart: gRPC's default connection backoff grows to two
// minutes, and would keep proxies away from an operator that is already back.
func TestClientRetriesAtItsOwnBackoff(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	attempts := make(chan struct{}, 1000)
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			attempts <- struct{}{}
			_ = c.Close() // a control plane that is down: every handshake fails
		}
	}()
	defer func() { _ = lis.Close() }()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	c := &controlplane.Client{
		Address: lis.Addr().String(), Hello: &api.Hello{ProxyId: "web-1", Namespace: "shop"},
		Apply: func(*api.Snapshot) error { return nil }, Log: testr.New(t),
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
	}
	go func() { _ = c.Run(ctx); close(done) }()
	time.Sleep(3 * time.Second)
	cancel()
	<-done
	// gRPC's default backoff (1 s, growing 1.6 times) makes at most 4 attempts in 3 s;
	// a 100 ms cap makes dozens.
	if n := len(attempts); n < 10 {
		t.Errorf("%d connection attempts in 3 s with a 100 ms maximum backoff, want at least 10", n)
	}
}
