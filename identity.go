package main

import (
	"cmp"
	"context"
	"fmt"
	"os"

	"github.com/go-logr/logr"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/braidmesh/braid/controllers"
	"github.com/braidmesh/braid/internal/ca"
)

// operatorNamespace and operatorServiceAccount come from the downward API
// (POD_NAMESPACE, POD_SERVICE_ACCOUNT).
func operatorNamespace() string { return cmp.Or(os.Getenv("POD_NAMESPACE"), "braid-system") }
func operatorServiceAccount() string {
	return cmp.Or(os.Getenv("POD_SERVICE_ACCOUNT"), "braid-operator")
}

// newServingCert is the operator's one serving certificate, for the Service
// braid-operator.<ns>.svc: the identity server and the webhook server present it.
// setupIdentity gives it the CA and runs it.
func newServingCert(log logr.Logger) *ca.ServingCert {
	ns := operatorNamespace()
	return &ca.ServingCert{
		Namespace: ns, ServiceAccount: operatorServiceAccount(), DNSNames: ca.ServingDNSNames(ns),
		Clock: clock.RealClock{}, Log: log.WithName("serving-cert"),
	}
}

// setupIdentity runs the mesh CA and the serving certificate signed from it (on every
// replica) and, unless addr is "0", serves the identity service on addr over TLS with
// that certificate. The returned Holder gives the trust bundle.
func setupIdentity(mgr manager.Manager, addr string, bundles bundleSink, serving *ca.ServingCert) (*ca.Holder, error) {
	ns := operatorNamespace()
	holder, err := controllers.SetupIdentity(mgr, controllers.IdentityOptions{Namespace: ns, Proxies: bundles})
	if err != nil {
		return nil, err
	}
	serving.Holder = holder
	if err := mgr.Add(serving); err != nil {
		return nil, fmt.Errorf("adding the serving certificate: %w", err)
	}
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error { feedTrustBundle(ctx, holder, bundles); return nil })); err != nil {
		return nil, fmt.Errorf("adding the trust bundle feed: %w", err)
	}
	if addr == "0" {
		mgr.GetLogger().Info("The identity server is off (--identity-server-address 0): proxies get no certificates from this replica")
		return holder, nil
	}
	_, err = ca.AddServer(mgr, holder, ca.ServerOptions{
		Address: addr, Namespace: ns, ServiceAccount: serving.ServiceAccount,
		Registry: metrics.Registry, Serving: serving,
	})
	return holder, err
}

// bundleSink is where the trust bundle goes: the config server, which streams it to
// proxies and tells root rotation which of them run it.
type bundleSink interface {
	SetTrustBundle(bundle string) uint64
	controllers.MeshProxies
}

// feedTrustBundle hands every trust bundle the CA holds to sink until ctx ends. It runs on
// every replica: each serves proxies.
func feedTrustBundle(ctx context.Context, holder *ca.Holder, sink bundleSink) {
	changed := holder.Subscribe()
	for {
		if b := holder.TrustBundle(); len(b) > 0 {
			sink.SetTrustBundle(string(b))
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}
