package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/braidmesh/braid/test/harness"
)

// heldBackend answers "slow", but holds every request until release is called: requests
// in flight for as long as a test needs them to be.
type heldBackend struct {
	harness.Backend
	arrived chan struct{}
	release func()
}

func startHeldBackend(t *testing.T) *heldBackend {
	t.Helper()
	released := make(chan struct{})
	h := &heldBackend{arrived: make(chan struct{}, 100)}
	h.release = sync.OnceFunc(func() { close(released) })
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		h.arrived <- struct{}{}
		select {
		case <-released:
		case <-time.After(eventually): // never hold a test up for longer
		}
		_, _ = io.WriteString(w, "slow")
	}))
	t.Cleanup(func() { h.release(); srv.Close() })
	h.Name, h.Addr = "slow", netip.MustParseAddrPort(srv.Listener.Addr().String())
	return h
}

// inFlight starts n requests for web.shop through p, and waits until the backend holds
// all of them. The returned channel gets each one's outcome.
func inFlight(ctx context.Context, t *testing.T, p *harness.Proxy, b *heldBackend, n int) <-chan error {
	t.Helper()
	outcomes := make(chan error, n)
	for range n {
		go func() {
			res, err := p.Get(ctx, "web.shop")
			if err == nil && (res.Status != http.StatusOK || res.Body != "slow") {
				err = fmt.Errorf("HTTP %d %q", res.Status, res.Body)
			}
			outcomes <- err
		}()
	}
	for i := range n {
		select {
		case <-b.arrived:
		case <-time.After(eventually):
			t.Fatalf("only %d of %d requests reached the backend", i, n)
		}
	}
	return outcomes
}

// refused waits until a new connection to addr is refused.
func refused(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(eventually)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if errors.Is(err, syscall.ECONNREFUSED) {
			return
		}
		if err == nil {
			_ = conn.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("new connections to %s are still accepted (last: %v)", addr, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// On SIGTERM the proxy stops accepting connections at once, answers every request in
// flight, and exits 0.
func TestSIGTERMDrainsRequestsInFlight(t *testing.T) {
	ctx := t.Context()
	slow := startHeldBackend(t)
	p, _ := standalone(t, splitConfig(1, weighted{&slow.Backend, 1}), "--drain-timeout", "5s")
	const n = 8
	outcomes := inFlight(ctx, t, p, slow, n)

	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	refused(t, p.OutboundAddr)
	select {
	case <-p.Exited():
		t.Fatalf("the proxy exited (code %d) with %d requests in flight", p.ExitCode(), n)
	case <-time.After(100 * time.Millisecond): // still draining
	}

	slow.release()
	for range n {
		if err := <-outcomes; err != nil {
			t.Errorf("a request in flight at SIGTERM failed: %v", err)
		}
	}
	select {
	case <-p.Exited():
		if code := p.ExitCode(); code != 0 {
			t.Errorf("the proxy exited %d after draining, want 0", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the proxy did not exit within its 5s drain timeout once its requests were answered")
	}
}

// When requests in flight outlast the drain timeout, the proxy gives up on them when it
// runs out and exits 1, rather than hang.
func TestSIGTERMDrainTimeout(t *testing.T) {
	ctx := t.Context()
	slow := startHeldBackend(t)
	p, _ := standalone(t, splitConfig(1, weighted{&slow.Backend, 1}), "--drain-timeout", "300ms")
	outcomes := inFlight(ctx, t, p, slow, 1)

	start := time.Now()
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Exited():
	case <-time.After(5 * time.Second):
		t.Fatal("the proxy did not exit within 5s of SIGTERM with a 300ms drain timeout")
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Errorf("the proxy exited %v after SIGTERM, before its 300ms drain timeout", took)
	}
	if code := p.ExitCode(); code != 1 {
		t.Errorf("the proxy exited %d with a request still in flight, want 1", code)
	}
	if err := <-outcomes; err == nil {
		t.Error("the request the proxy gave up on succeeded")
	}
}
