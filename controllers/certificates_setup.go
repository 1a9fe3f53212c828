package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	braidv1alpha1 "github.com/braidmesh/braid/api/v1alpha1"
	"github.com/braidmesh/braid/internal/ca"
)

// IdentityOptions configure SetupIdentity.
type IdentityOptions struct {
	// Namespace is the operator's (POD_NAMESPACE): the CA Secrets live there.
	Namespace string
	// Clock drives renewals; the real clock when nil.
	Clock clock.PassiveClock
	// Proxies are the proxies connected to this replica (the config server): a root
	// rotation waits for them. See CertificateReconciler.Proxies.
	Proxies MeshProxies
}

// SetupIdentity registers the certificate reconciler (on every replica) and the trust
// bundle reconciler (on the leader) and returns the Holder the CA is loaded into: the
// identity server signs with it and the config server sends its TrustBundle to proxies.
func SetupIdentity(mgr manager.Manager, o IdentityOptions) (*ca.Holder, error) {
	clk := o.Clock
	if clk == nil {
		clk = clock.RealClock{}
	}
	// Secrets and trust bundle ConfigMaps are watched through a cache of their own, so
	// the operator holds neither the cluster's Secrets nor all its ConfigMaps.
	c, err := cache.New(mgr.GetConfig(), cache.Options{
		Scheme: mgr.GetScheme(), Mapper: mgr.GetRESTMapper(),
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Secret{}:    {Namespaces: map[string]cache.Config{o.Namespace: {}}},
			&corev1.ConfigMap{}: {Field: fields.OneTermEqualSelector("metadata.name", TrustBundleConfigMapName)},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("creating the certificate cache: %w", err)
	}
	if err := mgr.Add(ownCache{c}); err != nil {
		return nil, fmt.Errorf("adding the certificate cache: %w", err)
	}
	holder := &ca.Holder{}
	certs := &CertificateReconciler{
		Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Namespace: o.Namespace,
		Holder: holder, Clock: clk, Events: mgr.GetEventRecorder("braid"), Proxies: o.Proxies,
		ConfigMaps: c,
	}
	toMeshConfig := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{meshConfigRequest}
	})
	err = ctrl.NewControllerManagedBy(mgr).
		Named("certificates").
		WithOptions(controller.Options{NeedLeaderElection: ptr.To(false)}).
		Watches(&braidv1alpha1.MeshConfig{}, toMeshConfig).
		WatchesRawSource(source.Kind[client.Object](c, &corev1.Secret{}, toMeshConfig)).
		WatchesRawSource(source.Func(func(_ context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
			q.Add(meshConfigRequest) // at start, with or without a MeshConfig or Secrets
			return nil
		})).
		Complete(certs)
	if err != nil {
		return nil, fmt.Errorf("setting up the certificate reconciler: %w", err)
	}
	bundles := &TrustBundleReconciler{Client: mgr.GetClient(), ConfigMaps: c, Holder: holder}
	err = ctrl.NewControllerManagedBy(mgr).
		Named("trustbundle").
		For(&corev1.Namespace{}, builder.WithPredicates(predicate.NewPredicateFuncs(wantsTrustBundle))).
		WatchesRawSource(source.Kind[client.Object](c, &corev1.ConfigMap{}, handler.EnqueueRequestsFromMapFunc(
			func(_ context.Context, o client.Object) []reconcile.Request {
				return []reconcile.Request{{NamespacedName: client.ObjectKey{Name: o.GetNamespace()}}}
			}))).
		WatchesRawSource(source.Func(bundles.enqueueOnBundleChange)).
		Complete(bundles)
	if err != nil {
		return nil, fmt.Errorf("setting up the trust bundle reconciler: %w", err)
	}
	return holder, nil
}

// ownCache runs a cache with the manager's caches, on every replica, before the controllers.
type ownCache struct{ cache.Cache }

func (c ownCache) GetCache() cache.Cache { return c.Cache }
