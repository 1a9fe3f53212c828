package controllers

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/braidmesh/braid/internal/ca"
)

// The webhook configurations whose caBundle the operator keeps, as config/webhook names them.
const (
	DefaultValidatingWebhookConfiguration = "braid-smi-validation"
	DefaultMutatingWebhookConfiguration   = "braid-injector"
	// DefaultMetricsAPIService is the APIService of the SMI TrafficMetrics API
	// (config/default/apiservice.yaml), which the operator serves with the same certificate.
	DefaultMetricsAPIService = "v1alpha1.metrics.smi-spec.io"
)

// Marks of a webhook configuration whose caBundle another tool injects: cert-manager's
// cainjector (annotations) or OLM, which creates the configurations of the webhooks a
// ClusterServiceVersion declares and labels them with their owner.
var (
	caInjectorAnnotations = []string{"cert-manager.io/inject-ca-from", "cert-manager.io/inject-ca-from-secret", "cert-manager.io/inject-apiserver-ca"}
	olmOwnerLabel         = "olm.owner"
)

// CABundleOptions configure SetupCABundles.
type CABundleOptions struct {
	// ValidatingWebhookConfiguration and MutatingWebhookConfiguration name the
	// configurations kept; "" keeps none of that kind.
	ValidatingWebhookConfiguration, MutatingWebhookConfiguration string
	// APIService names the APIService whose spec.caBundle is kept; "" keeps none.
	APIService string
}

// CABundleReconciler keeps clientConfig.caBundle of every webhook of one webhook
// configuration equal to the mesh trust bundle: the roots the operator's serving
// certificate chains to (both roots during a root rotation). It patches that field only,
// so the rest of the configuration stays whoever applied it. It leaves alone a
// configuration another tool injects the CA into (cert-manager, OLM), and says why.
type CABundleReconciler struct {
	// Client patches the configuration.
	Client client.Client
	// Reader reads it (a cache holding only the configurations kept).
	Reader client.Reader
	Holder *ca.Holder
	// NewObject returns an empty ValidatingWebhookConfiguration or MutatingWebhookConfiguration.
	NewObject func() client.Object
}

// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=validatingwebhookconfigurations,verbs=list;watch
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=mutatingwebhookconfigurations,verbs=list;watch
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=validatingwebhookconfigurations,verbs=get;patch,resourceNames=braid-smi-validation
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=mutatingwebhookconfigurations,verbs=get;patch,resourceNames=braid-injector
// +kubebuilder:rbac:groups=apiregistration.k8s.io,resources=apiservices,verbs=list;watch
// +kubebuilder:rbac:groups=apiregistration.k8s.io,resources=apiservices,verbs=get;patch,resourceNames=v1alpha1.metrics.smi-spec.io

// Reconcile patches the caBundle of the webhooks whose caBundle is not the trust bundle.
func (r *CABundleReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	bundle := r.Holder.TrustBundle()
	if len(bundle) == 0 {
		return reconcile.Result{}, nil // the CA is not loaded yet: its loading enqueues the configuration
	}
	obj := r.NewObject()
	if err := r.Reader.Get(ctx, req.NamespacedName, obj); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if key, mark := injectedElsewhere(obj); key != "" {
		log.FromContext(ctx).Info("Webhook configuration caBundle left alone: another tool injects it", "mark", key, "value", mark)
		return reconcile.Result{}, nil
	}
	ops := caBundlePatch(webhookCABundles(obj), bundle)
	if u, ok := obj.(*unstructured.Unstructured); ok {
		ops = apiServiceCABundlePatch(u, bundle)
	}
	if len(ops) == 0 {
		return reconcile.Result{}, nil
	}
	data, err := json.Marshal(ops)
	if err != nil {
		return reconcile.Result{}, fmt.Errorf("encoding the caBundle patch: %w", err)
	}
	// A webhook list changed meanwhile fails the patch's tests; the change requeues it.
	if err := r.Client.Patch(ctx, obj, client.RawPatch(types.JSONPatchType, data)); err != nil {
		return reconcile.Result{}, fmt.Errorf("patching the caBundle: %w", err)
	}
	log.FromContext(ctx).Info("Webhook configuration caBundle set to the mesh trust bundle", "webhooks", len(ops)/2)
	return reconcile.Result{}, nil
}

// injectedElsewhere returns the annotation or label that says another tool injects the
// CA into obj, and its value; "" when none does.
func injectedElsewhere(obj client.Object) (key, value string) {
	for _, a := range caInjectorAnnotations {
		if v, ok := obj.GetAnnotations()[a]; ok {
			return a, v
		}
	}
	if v, ok := obj.GetLabels()[olmOwnerLabel]; ok {
		return olmOwnerLabel, v
	}
	return "", ""
}

// webhookCABundle is one webhook's name and caBundle.
type webhookCABundle struct {
	name   string
	bundle []byte
}

func webhookCABundles(obj client.Object) []webhookCABundle {
	var out []webhookCABundle
	switch o := obj.(type) {
	case *admissionregistrationv1.ValidatingWebhookConfiguration:
		for _, w := range o.Webhooks {
			out = append(out, webhookCABundle{name: w.Name, bundle: w.ClientConfig.CABundle})
		}
	case *admissionregistrationv1.MutatingWebhookConfiguration:
		for _, w := range o.Webhooks {
			out = append(out, webhookCABundle{name: w.Name, bundle: w.ClientConfig.CABundle})
		}
	}
	return out
}

// apiServiceCABundlePatch sets an APIService's spec.caBundle (base64 in JSON) to bundle
// when it differs.
func apiServiceCABundlePatch(u *unstructured.Unstructured, bundle []byte) []jsonPatchOp {
	current, _, _ := unstructured.NestedString(u.Object, "spec", "caBundle")
	if decoded, err := base64.StdEncoding.DecodeString(current); err == nil && bytes.Equal(decoded, bundle) {
		return nil
	}
	return []jsonPatchOp{{Op: "add", Path: "/spec/caBundle", Value: bundle}}
}

// newAPIService returns an empty APIService (apiregistration.k8s.io/v1, read unstructured:
// the aggregator's Go types are not a dependency).
func newAPIService() client.Object {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(schema.GroupVersionKind{Group: "apiregistration.k8s.io", Version: "v1", Kind: "APIService"})
	return u
}

// jsonPatchOp is an RFC 6902 operation.
type jsonPatchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}

// caBundlePatch sets the caBundle of each webhook whose caBundle differs from bundle,
// after testing the webhook at that index is still the one read.
func caBundlePatch(hooks []webhookCABundle, bundle []byte) []jsonPatchOp {
	var ops []jsonPatchOp
	for i, w := range hooks {
		if bytes.Equal(w.bundle, bundle) {
			continue
		}
		at := "/webhooks/" + strconv.Itoa(i)
		ops = append(ops,
			jsonPatchOp{Op: "test", Path: at + "/name", Value: w.name},
			jsonPatchOp{Op: "add", Path: at + "/clientConfig/caBundle", Value: bundle}) // []byte: base64, as the API wants
	}
	return ops
}

// SetupCABundles registers, on the leader, one caBundle reconciler per configuration
// named in o. The configurations are watched through a cache of their own holding only
// them, so tampering with a caBundle is undone at once; every change of the trust bundle
// enqueues them too.
func SetupCABundles(mgr manager.Manager, holder *ca.Holder, o CABundleOptions) error {
	kinds := []struct {
		name, controller string
		newObject        func() client.Object
	}{
		{o.ValidatingWebhookConfiguration, "cabundle-validating", func() client.Object { return &admissionregistrationv1.ValidatingWebhookConfiguration{} }},
		{o.MutatingWebhookConfiguration, "cabundle-mutating", func() client.Object { return &admissionregistrationv1.MutatingWebhookConfiguration{} }},
		{o.APIService, "cabundle-apiservice", newAPIService},
	}
	byObject := map[client.Object]cache.ByObject{}
	for _, k := range kinds {
		if k.name != "" {
			byObject[k.newObject()] = cache.ByObject{Field: fields.OneTermEqualSelector("metadata.name", k.name)}
		}
	}
	if len(byObject) == 0 {
		return nil
	}
	c, err := cache.New(mgr.GetConfig(), cache.Options{Scheme: mgr.GetScheme(), Mapper: mgr.GetRESTMapper(), ByObject: byObject})
	if err != nil {
		return fmt.Errorf("creating the webhook configuration cache: %w", err)
	}
	if err := mgr.Add(ownCache{c}); err != nil {
		return fmt.Errorf("adding the webhook configuration cache: %w", err)
	}
	for _, k := range kinds {
		if k.name == "" {
			continue
		}
		r := &CABundleReconciler{Client: mgr.GetClient(), Reader: c, Holder: holder, NewObject: k.newObject}
		err := ctrl.NewControllerManagedBy(mgr).
			Named(k.controller).
			WatchesRawSource(source.Kind(c, k.newObject(), &handler.EnqueueRequestForObject{})).
			WatchesRawSource(enqueueOnHolderChange(holder, k.name)).
			Complete(r)
		if err != nil {
			return fmt.Errorf("setting up the %s reconciler: %w", k.controller, err)
		}
	}
	return nil
}

// enqueueOnHolderChange enqueues name at start and after every change of the CA.
func enqueueOnHolderChange(holder *ca.Holder, name string) source.Source {
	req := reconcile.Request{NamespacedName: types.NamespacedName{Name: name}}
	return source.Func(func(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
		changed := holder.Subscribe()
		q.Add(req)
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-changed:
					q.Add(req)
				}
			}
		}()
		return nil
	})
}
