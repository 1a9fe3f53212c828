package webhooks

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"

	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	braidv1alpha1 "github.com/braidmesh/braid/api/v1alpha1"
	"github.com/braidmesh/braid/internal/inject"
)

// PathInject is where the sidecar injector is served.
const PathInject = "/inject-v1-pod"

// Event reasons of the injector, on the pod's controlling owner.
const (
	EventInjected         = "Injected"
	EventInjectionSkipped = "InjectionSkipped"
)

// InjectorOptions configure the sidecar injector.
type InjectorOptions struct {
	// OperatorNamespace is where the operator runs: its config and identity servers are
	// braid-operator.<namespace>.svc, and its pods are never injected.
	OperatorNamespace string
	// DefaultProxyImage is the proxy image when the MeshConfig names none.
	DefaultProxyImage string
}

// Defaults of InjectorOptionsFromEnv.
const (
	DefaultOperatorNamespace = "braid-system"
	DefaultProxyImage        = "braid-proxy:dev"
)

// InjectorOptionsFromEnv reads the options from the operator's environment: POD_NAMESPACE
// (default braid-system) and BRAID_PROXY_IMAGE (default braid-proxy:dev).
func InjectorOptionsFromEnv() InjectorOptions {
	return InjectorOptions{
		OperatorNamespace: cmp.Or(os.Getenv("POD_NAMESPACE"), DefaultOperatorNamespace),
		DefaultProxyImage: cmp.Or(os.Getenv("BRAID_PROXY_IMAGE"), DefaultProxyImage),
	}
}

// The injector fails closed: a pod created while the operator is down would otherwise
// start outside the mesh and stay there. The webhook configuration's namespaceSelector
// leaves kube-system and braid-system out, so the operator itself can always start.
//
// +kubebuilder:webhook:path=/inject-v1-pod,mutating=true,failurePolicy=fail,sideEffects=None,groups="",resources=pods,verbs=create,versions=v1,name=inject.braid.dev,admissionReviewVersions=v1,reinvocationPolicy=Never,matchPolicy=Equivalent,timeoutSeconds=5
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups=braid.dev,resources=meshconfigs,verbs=get;list;watch

// SetupInjector registers the sidecar injector on mgr's webhook server. It asks the API
// server once, now, whether it runs native sidecars, and starts the Namespace and
// MeshConfig informers the injector reads.
func SetupInjector(ctx context.Context, mgr manager.Manager, opts InjectorOptions) error {
	dc, err := discovery.NewDiscoveryClientForConfig(mgr.GetConfig())
	if err != nil {
		return fmt.Errorf("sidecar injector: %w", err)
	}
	info, err := dc.ServerVersion()
	if err != nil {
		return fmt.Errorf("sidecar injector: reading the API server's version: %w", err)
	}
	native, err := inject.NativeSidecars(info.GitVersion)
	if err != nil {
		return fmt.Errorf("sidecar injector: %w", err)
	}
	for _, obj := range []client.Object{&corev1.Namespace{}, &braidv1alpha1.MeshConfig{}} {
		if _, err := mgr.GetCache().GetInformer(ctx, obj, cache.BlockUntilSynced(false)); err != nil {
			return fmt.Errorf("sidecar injector: watching %T: %w", obj, err)
		}
	}
	injector := NewInjector(mgr.GetClient(), mgr.GetAPIReader(), mgr.GetEventRecorder("braid-injector"), opts, native)
	injector.Log = mgr.GetLogger().WithName("injector")
	mgr.GetWebhookServer().Register(PathInject, &webhook.Admission{Handler: injector})
	injector.Log.Info("Sidecar injection enabled", "serverVersion", info.GitVersion, "nativeSidecars", native,
		"defaultProxyImage", opts.DefaultProxyImage, "operatorNamespace", opts.OperatorNamespace)
	return nil
}

// Injector is the admission handler that injects the sidecar into pods (internal/inject
// decides and builds the patch) and reports what it did as Events on the pod's owner.
type Injector struct {
	// Reader reads Namespaces and the MeshConfig, from the manager's cache.
	Reader client.Reader
	// APIReader reads a Namespace the cache does not hold yet (created just before its
	// first pod); nil reads the cache only.
	APIReader client.Reader
	// Events records Injected and InjectionSkipped; nil records none.
	Events events.EventRecorder
	// Log receives a line per injected pod at V(1).
	Log   logr.Logger
	input inject.Input
}

// NewInjector returns an injector for an API server that does or does not run native
// sidecars.
func NewInjector(reader, apiReader client.Reader, recorder events.EventRecorder, opts InjectorOptions, nativeSidecars bool) *Injector {
	cp, id := inject.OperatorAddresses(opts.OperatorNamespace)
	return &Injector{Reader: reader, APIReader: apiReader, Events: recorder, Log: logr.Discard(), input: inject.Input{
		OperatorNamespace: opts.OperatorNamespace, DefaultProxyImage: opts.DefaultProxyImage, NativeSidecars: nativeSidecars,
		ControlPlaneAddress: cp, IdentityAddress: id,
	}}
}

// Handle injects the sidecar into a pod being created, or admits it unchanged saying why.
func (i *Injector) Handle(ctx context.Context, req admission.Request) admission.Response {
	if req.Operation != admissionv1.Create || req.Kind.Kind != "Pod" {
		return admission.Allowed("only pods being created are injected")
	}
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("decoding the pod: %w", err))
	}
	if pod.Namespace == "" {
		pod.Namespace = req.Namespace
	}
	in := i.input
	var err error
	if in.Namespace, err = i.namespace(ctx, pod.Namespace); err != nil {
		return admission.Errored(http.StatusInternalServerError, err)
	}
	if in.Mesh, err = i.meshConfig(ctx); err != nil {
		return admission.Errored(http.StatusInternalServerError, err)
	}
	res, err := inject.Inject(&pod, in)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err)
	}
	if req.DryRun == nil || !*req.DryRun {
		i.record(&pod, res)
	}
	if !res.Injected() {
		resp := admission.Allowed(string(res.Skip) + ": " + res.Message)
		if res.Skip == inject.ReasonInvalidAnnotation {
			resp.Warnings = []string{"braid: sidecar not injected: " + res.Message}
		}
		return resp
	}
	i.Log.V(1).Info("Injected the sidecar", "namespace", pod.Namespace, "pod", podName(&pod))
	return admission.Patched(res.Message, res.Patch...)
}

// namespace reads the pod's Namespace from the cache, or from the API server when the
// cache does not hold it yet (or has not started: the webhook server starts first).
func (i *Injector) namespace(ctx context.Context, name string) (*corev1.Namespace, error) {
	ns := &corev1.Namespace{}
	err := i.Reader.Get(ctx, client.ObjectKey{Name: name}, ns)
	if (apierrors.IsNotFound(err) || cacheNotStarted(err)) && i.APIReader != nil {
		err = i.APIReader.Get(ctx, client.ObjectKey{Name: name}, ns)
	}
	if err != nil {
		return nil, fmt.Errorf("reading namespace %s: %w", name, err)
	}
	return ns, nil
}

// meshConfig returns the MeshConfig's spec, nil when there is none.
func (i *Injector) meshConfig(ctx context.Context) (*braidv1alpha1.MeshConfigSpec, error) {
	mc := &braidv1alpha1.MeshConfig{}
	key := client.ObjectKey{Name: braidv1alpha1.MeshConfigName}
	err := i.Reader.Get(ctx, key, mc)
	if cacheNotStarted(err) && i.APIReader != nil {
		err = i.APIReader.Get(ctx, key, mc)
	}
	switch {
	case apierrors.IsNotFound(err) || meta.IsNoMatchError(err):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("reading MeshConfig %s: %w", braidv1alpha1.MeshConfigName, err)
	}
	return &mc.Spec, nil
}

func cacheNotStarted(err error) bool {
	var notStarted *cache.ErrCacheNotStarted
	return errors.As(err, &notStarted)
}

// record puts an Event on the pod's controlling owner (the pod itself has no name yet when
// its owner generates one). Pods outside the mesh's scope (namespace not enabled, system
// namespaces) get none: they are most pods of most clusters.
func (i *Injector) record(pod *corev1.Pod, res inject.Result) {
	owner := metav1.GetControllerOf(pod)
	if i.Events == nil || owner == nil || res.Skip == inject.ReasonNamespaceNotEnabled || res.Skip == inject.ReasonExcludedNamespace {
		return
	}
	ref := &corev1.ObjectReference{APIVersion: owner.APIVersion, Kind: owner.Kind, Name: owner.Name, UID: owner.UID, Namespace: pod.Namespace}
	switch res.Skip {
	case "":
		i.Events.Eventf(ref, nil, corev1.EventTypeNormal, EventInjected, "Inject", "Pod %s: %s", podName(pod), res.Message)
	case inject.ReasonDisabled, inject.ReasonAlreadyInjected:
		i.Events.Eventf(ref, nil, corev1.EventTypeNormal, EventInjectionSkipped, "Inject", "Pod %s: %s: %s", podName(pod), res.Skip, res.Message)
	default:
		i.Events.Eventf(ref, nil, corev1.EventTypeWarning, EventInjectionSkipped, "Inject", "Pod %s: %s: %s", podName(pod), res.Skip, res.Message)
	}
}

// podName is the pod's name or, before the API server generates it, its prefix: the same
// for every pod of an owner, so their Events aggregate.
func podName(pod *corev1.Pod) string {
	if pod.Name != "" {
		return pod.Name
	}
	return pod.GenerateName + "*"
}
