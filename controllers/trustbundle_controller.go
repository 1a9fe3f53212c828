package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/braidmesh/braid/internal/ca"
)

const (
	// TrustBundleConfigMapName is the ConfigMap, in every namespace labelled
	// braid.dev/inject=enabled, that holds the mesh's trust bundle under TrustBundleKey.
	// Injected proxies mount it to verify the operator's servers.
	TrustBundleConfigMapName = "braid-trust-bundle"
	// TrustBundleKey is the key of the PEM roots in the ConfigMap.
	TrustBundleKey = "ca.crt"

	trustBundleNSLabel = "braid.dev/inject"
	trustBundleNSValue = "enabled"
)

// TrustBundleReconciler keeps the trust bundle ConfigMap of a meshed namespace equal to
// the Holder's bundle. It never deletes the ConfigMap: a namespace that leaves the mesh
// keeps it, harmlessly.
type TrustBundleReconciler struct {
	Client client.Client
	// ConfigMaps reads the trust bundle ConfigMaps (a cache holding only them).
	ConfigMaps client.Reader
	Holder     *ca.Holder
}

// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch;create;update

// Reconcile writes the bundle into the namespace's ConfigMap.
func (r *TrustBundleReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	bundle := r.Holder.TrustBundle()
	if bundle == nil {
		return reconcile.Result{}, nil // the CA is not loaded yet: its loading enqueues every namespace
	}
	ns := &corev1.Namespace{}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: req.Name}, ns); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if !wantsTrustBundle(ns) || ns.DeletionTimestamp != nil {
		return reconcile.Result{}, nil
	}
	cm := &corev1.ConfigMap{}
	err := r.ConfigMaps.Get(ctx, client.ObjectKey{Namespace: req.Name, Name: TrustBundleConfigMapName}, cm)
	switch {
	case apierrors.IsNotFound(err):
		cm = &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Namespace: req.Name, Name: TrustBundleConfigMapName, Labels: map[string]string{"app.kubernetes.io/part-of": "braid"}},
			Data:       map[string]string{TrustBundleKey: string(bundle)},
		}
		// Created meanwhile (AlreadyExists) is an error too: retried, it compares the one there.
		if err := r.Client.Create(ctx, cm); err != nil {
			return reconcile.Result{}, fmt.Errorf("creating the trust bundle ConfigMap: %w", err)
		}
		log.FromContext(ctx).Info("Trust bundle ConfigMap created", "configMap", client.ObjectKeyFromObject(cm))
		return reconcile.Result{}, nil
	case err != nil:
		return reconcile.Result{}, fmt.Errorf("reading the trust bundle ConfigMap: %w", err)
	}
	if cm.Data[TrustBundleKey] == string(bundle) {
		return reconcile.Result{}, nil
	}
	cm = cm.DeepCopy()
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[TrustBundleKey] = string(bundle)
	if err := r.Client.Update(ctx, cm); err != nil {
		return reconcile.Result{}, fmt.Errorf("updating the trust bundle ConfigMap: %w", err)
	}
	log.FromContext(ctx).Info("Trust bundle ConfigMap updated", "configMap", client.ObjectKeyFromObject(cm))
	return reconcile.Result{}, nil
}

func wantsTrustBundle(o client.Object) bool {
	return o.GetLabels()[trustBundleNSLabel] == trustBundleNSValue
}

// enqueueOnBundleChange enqueues every meshed namespace each time the Holder changes.
func (r *TrustBundleReconciler) enqueueOnBundleChange(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
	changed := r.Holder.Subscribe()
	go func() {
		// A CA loaded before the subscription (while the namespaces were first reconciled
		// without one) is caught up with at once.
		first := r.Holder.Load() != nil
		for {
			if !first {
				select {
				case <-ctx.Done():
					return
				case <-changed:
				}
			}
			first = false
			var list corev1.NamespaceList
			if err := r.Client.List(ctx, &list, client.MatchingLabels{trustBundleNSLabel: trustBundleNSValue}); err != nil {
				log.FromContext(ctx).Error(err, "Meshed namespaces were not listed: their trust bundles wait for their next change")
				continue
			}
			for _, ns := range list.Items {
				q.Add(reconcile.Request{NamespacedName: client.ObjectKey{Name: ns.Name}})
			}
		}
	}()
	return nil
}
