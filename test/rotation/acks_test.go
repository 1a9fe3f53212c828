package rotation

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

	"github.com/braidmesh/braid/internal/configserver"
	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/proxy/controlplane"
)

// What root rotation reads from the config server: which connected proxies run a trust
// bundle (they acknowledged the version that carries it), and which root each proxy's
// certificate chains to, as its Acks report it, again when it changes.
func TestConfigServerTracksBundleAcksAndCertificateRoots(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	srv := configserver.New(testr.New(t), configserver.Options{})
	srv.MarkReady()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ctx, lis) }()
	if v := srv.SetTrustBundle("bundle A"); srv.SetTrustBundle("bundle A") != v {
		t.Fatal("SetTrustBundle of the same bundle did not return the version that carries it")
	}

	var root atomic.Pointer[string]
	rootA, rootB := "AA:AA", "BB:BB"
	root.Store(&rootA)
	changed := make(chan struct{}, 1)
	var reject atomic.Bool
	cp := &controlplane.Client{
		Address: lis.Addr().String(), Hello: &api.Hello{ProxyId: "web-1", Namespace: "shop", ServiceAccount: "web"},
		Apply: func(s *api.Snapshot) error {
			if reject.Load() && s.GetTrustBundle() == "bundle B" {
				return errBundle
			}
			return nil
		},
		Log: testr.New(t), MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		CertificateRoot: func() string { return *root.Load() }, RootChanged: changed,
	}
	go func() { _ = cp.Run(ctx) }()

	waitFor(ctx, t, "the proxy to run bundle A", func() error { return bundleAcked(srv, "bundle A", 1) })
	waitFor(ctx, t, "the proxy to report root A", func() error { return onRoot(srv, rootA, 1) })
	if _, _, _, current := srv.TrustBundleStatus("bundle B"); current {
		t.Fatal("a bundle never set is reported as the current one")
	}

	// A new bundle: not acknowledged while the proxy rejects it.
	reject.Store(true)
	srv.SetTrustBundle("bundle B")
	waitFor(ctx, t, "the proxy to reject bundle B", func() error {
		if acked, rejected, connected, current := srv.TrustBundleStatus("bundle B"); !current || acked != 0 || rejected != 1 || connected != 1 {
			return errStatus(acked, rejected, connected, current)
		}
		return nil
	})
	reject.Store(false)
	srv.SetTrustBundle("bundle C")
	waitFor(ctx, t, "the proxy to run bundle C", func() error { return bundleAcked(srv, "bundle C", 1) })
	if _, _, _, current := srv.TrustBundleStatus("bundle B"); current {
		t.Error("a replaced bundle is reported as the current one")
	}

	// The certificate moves to root B: the proxy says so without a new version.
	version := srv.Version()
	root.Store(&rootB)
	changed <- struct{}{}
	waitFor(ctx, t, "the proxy to report root B", func() error { return onRoot(srv, rootB, 1) })
	if srv.Version() != version {
		t.Error("reporting the root made a new version")
	}
	if on, _, _ := srv.CertificateRootStatus(rootA); on != 0 {
		t.Errorf("%d proxies still on root A", on)
	}
	rec := httptest.NewRecorder()
	srv.DebugHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/debug/proxies", nil))
	if !strings.Contains(rec.Body.String(), "CERT ROOT") || !strings.Contains(rec.Body.String(), rootB) {
		t.Errorf("/debug/proxies does not show the certificate root:\n%s", rec.Body.String())
	}
}

var errBundle = errors.New("bundle B refused")

func errStatus(acked, rejected, connected int, current bool) error {
	return fmt.Errorf("acked by %d, rejected by %d, of %d connected; current %v", acked, rejected, connected, current)
}

func bundleAcked(srv *configserver.Server, bundle string, want int) error {
	if acked, rejected, connected, current := srv.TrustBundleStatus(bundle); !current || acked != want || connected != want {
		return errStatus(acked, rejected, connected, current)
	}
	return nil
}

func onRoot(srv *configserver.Server, root string, want int) error {
	if on, connected, other := srv.CertificateRootStatus(root); on != want || connected != want {
		return fmt.Errorf("%d of %d proxies on the root; %q is not", on, connected, other)
	}
	return nil
}
