// Package inject decides whether a pod gets Braid's sidecar and, if it does, what changes:
// a pure function from a pod, its Namespace and the MeshConfig to a JSON patch or a stable
// reason for skipping it. It holds no client; webhooks/ serves it as an admission webhook.
// docs/injection.md documents the rules.
package inject

import (
	"errors"
	"fmt"

	"gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"

	braidv1alpha1 "github.com/braidmesh/braid/api/v1alpha1"
)

// Labels and annotations users set.
const (
	// LabelInject on a Namespace, value enabled, injects its pods.
	LabelInject = "braid.dev/inject"
	// AnnotationInject on a pod, enabled or disabled, overrides its namespace's label.
	AnnotationInject = "braid.dev/inject"
	// AnnotationSkipInboundPorts lists inbound ports (comma-separated) not redirected to
	// the proxy.
	AnnotationSkipInboundPorts = "braid.dev/skip-inbound-ports"
	// AnnotationSkipOutboundPorts lists outbound destination ports not redirected.
	AnnotationSkipOutboundPorts = "braid.dev/skip-outbound-ports"
	// AnnotationSkipOutboundCIDRs lists outbound destination networks (or addresses) not
	// redirected.
	AnnotationSkipOutboundCIDRs = "braid.dev/skip-outbound-cidrs"
	// The proxy's resources, overriding MeshConfig's spec.proxy.resources.
	AnnotationProxyCPURequest    = "braid.dev/proxy-cpu-request"
	AnnotationProxyCPULimit      = "braid.dev/proxy-cpu-limit"
	AnnotationProxyMemoryRequest = "braid.dev/proxy-memory-request"
	AnnotationProxyMemoryLimit   = "braid.dev/proxy-memory-limit"
)

// Annotations the injector writes.
const (
	// AnnotationInjected is "true" on an injected pod.
	AnnotationInjected = "braid.dev/injected"
	// AnnotationProxyVersion is the injected proxy image's tag (or digest).
	AnnotationProxyVersion = "braid.dev/proxy-version"
	// AnnotationOriginalProbes holds the application probes the injector rewrote, as the
	// JSON of admin.AppProbes.
	AnnotationOriginalProbes = "braid.dev/original-probes"
)

// Values of LabelInject and AnnotationInject.
const (
	Enabled  = "enabled"
	Disabled = "disabled"
)

// Names of what the injector adds.
const (
	ProxyContainer = "braid-proxy"
	InitContainer  = "braid-init"
	TokenVolume    = "braid-token"
	TrustVolume    = "braid-trust"
	// TrustBundleConfigMap is the ConfigMap, in every meshed namespace, that holds the
	// mesh's trust bundle under TrustBundleKey.
	TrustBundleConfigMap = "braid-trust-bundle"
	TrustBundleKey       = "ca.crt"
	// TokenAudience is the audience of the projected ServiceAccount token the proxy
	// proves its identity with.
	TokenAudience = "braid"
)

// Ports and the user of the proxy.
const (
	AdminPort    = 15000
	OutboundPort = 15001
	InboundPort  = 15006
	ProxyUID     = 2102
)

// Reason says why a pod was not injected. The values are stable: they appear in Events,
// admission responses and docs/injection.md.
type Reason string

// Reasons for skipping a pod, in the order they are checked.
const (
	// ReasonAlreadyInjected: the pod has the braid.dev/injected annotation or a
	// braid-proxy container.
	ReasonAlreadyInjected Reason = "AlreadyInjected"
	// ReasonExcludedNamespace: the pod is in kube-system or the operator's namespace.
	ReasonExcludedNamespace Reason = "ExcludedNamespace"
	// ReasonDisabled: the pod is annotated braid.dev/inject: disabled.
	ReasonDisabled Reason = "Disabled"
	// ReasonNamespaceNotEnabled: neither the namespace's label nor the pod's annotation
	// enables injection.
	ReasonNamespaceNotEnabled Reason = "NamespaceNotEnabled"
	// ReasonHostNetwork: the pod uses the node's network, which the proxy must not
	// redirect.
	ReasonHostNetwork Reason = "HostNetwork"
	// ReasonRunsToCompletion: the pod runs to completion (restartPolicy Never or
	// OnFailure) on a server without native sidecars, where a proxy container would keep
	// it running forever.
	ReasonRunsToCompletion Reason = "RunsToCompletion"
	// ReasonNameConflict: the pod already has a container or volume with a name the
	// injector adds.
	ReasonNameConflict Reason = "NameConflict"
	// ReasonInvalidAnnotation: a braid.dev/ annotation of the pod has a value that does
	// not parse; the message names it.
	ReasonInvalidAnnotation Reason = "InvalidAnnotation"
)

// KubeSystem is never injected.
const KubeSystem = "kube-system"

// Input is what Inject needs besides the pod.
type Input struct {
	// Mesh is the MeshConfig's spec; nil when there is no MeshConfig.
	Mesh *braidv1alpha1.MeshConfigSpec
	// Namespace is the pod's Namespace (its labels select injection); nil reads as a
	// namespace without labels.
	Namespace *corev1.Namespace
	// OperatorNamespace is where the operator runs; its pods are never injected.
	OperatorNamespace string
	// DefaultProxyImage is the proxy image when the MeshConfig names none.
	DefaultProxyImage string
	// NativeSidecars says the API server runs native sidecars (Kubernetes 1.29 and later):
	// the proxy is then an init container with restartPolicy Always.
	NativeSidecars bool
	// ControlPlaneAddress and IdentityAddress are the operator's config and identity
	// servers (host:port); OperatorAddresses gives the in-cluster ones.
	ControlPlaneAddress, IdentityAddress string
}

// OperatorAddresses returns the in-cluster addresses of the operator's config server and
// identity server when it runs in namespace.
func OperatorAddresses(namespace string) (controlPlane, identity string) {
	return fmt.Sprintf("braid-operator.%s.svc:15010", namespace), fmt.Sprintf("braid-operator.%s.svc:15011", namespace)
}

// Result is Inject's answer: a patch, or the reason the pod is left alone.
type Result struct {
	// Skip is empty when the pod is injected.
	Skip Reason
	// Message says, for people, what happened and why.
	Message string
	// Patch turns the pod into Pod (JSON patch, RFC 6902); empty when skipped.
	Patch []jsonpatch.Operation
	// Pod is the injected pod; nil when skipped.
	Pod *corev1.Pod
}

// Injected reports whether the pod gets the sidecar.
func (r Result) Injected() bool { return r.Skip == "" }

func skip(reason Reason, format string, args ...any) Result {
	return Result{Skip: reason, Message: fmt.Sprintf(format, args...)}
}

// Inject decides whether pod gets the sidecar and returns the patch that adds it. It
// never changes pod. An error means the input itself is unusable (no proxy image).
func Inject(pod *corev1.Pod, in Input) (Result, error) {
	if r, skipped := selected(pod, &in); skipped {
		return r, nil
	}
	if r, skipped := injectable(pod, &in); skipped {
		return r, nil
	}
	image := in.DefaultProxyImage
	if in.Mesh != nil && in.Mesh.Proxy.Image != "" {
		image = in.Mesh.Proxy.Image
	}
	if image == "" {
		return Result{}, errors.New("no proxy image: the MeshConfig's spec.proxy.image and the operator's default are both empty")
	}
	ann, problem := parseAnnotations(pod.Annotations, in.Mesh)
	if problem != "" {
		return skip(ReasonInvalidAnnotation, "%s; fix the annotation and recreate the pod", problem), nil
	}
	out, ops, err := mutate(pod, &in, image, ann)
	if err != nil {
		return Result{}, err
	}
	mode := "a native sidecar (init container with restartPolicy Always)"
	if !in.NativeSidecars {
		mode = "the first container (this API server has no native sidecars)"
	}
	return Result{Message: fmt.Sprintf("injected %s %s as %s", ProxyContainer, image, mode), Patch: ops, Pod: out}, nil
}

// selected applies the selection rules: the pod's annotation over its namespace's label,
// and never the system namespaces.
func selected(pod *corev1.Pod, in *Input) (Result, bool) {
	if pod.Annotations[AnnotationInjected] == "true" || hasContainer(pod, ProxyContainer) {
		return skip(ReasonAlreadyInjected, "the pod already has %s", ProxyContainer), true
	}
	ns := podNamespace(pod, in)
	if ns == KubeSystem || ns == in.OperatorNamespace {
		return skip(ReasonExcludedNamespace, "pods in %s are never injected", ns), true
	}
	switch v, set := pod.Annotations[AnnotationInject]; {
	case v == Disabled:
		return skip(ReasonDisabled, "the pod is annotated %s: %s", AnnotationInject, Disabled), true
	case set && v != Enabled:
		return skip(ReasonInvalidAnnotation, "%s: %q is neither %s nor %s", AnnotationInject, v, Enabled, Disabled), true
	case v == Enabled:
		return Result{}, false
	}
	if in.Namespace == nil || in.Namespace.Labels[LabelInject] != Enabled {
		return skip(ReasonNamespaceNotEnabled, "namespace %s is not labelled %s=%s and the pod is not annotated %s: %s",
			ns, LabelInject, Enabled, AnnotationInject, Enabled), true
	}
	return Result{}, false
}

// injectable refuses selected pods the sidecar cannot work in.
func injectable(pod *corev1.Pod, in *Input) (Result, bool) {
	if pod.Spec.HostNetwork {
		return skip(ReasonHostNetwork, "the pod uses the node's network (hostNetwork), which the mesh does not redirect"), true
	}
	if !in.NativeSidecars && pod.Spec.RestartPolicy != "" && pod.Spec.RestartPolicy != corev1.RestartPolicyAlways {
		return skip(ReasonRunsToCompletion, "the pod runs to completion (restartPolicy %s) and this API server has no native sidecars (Kubernetes 1.29+): "+
			"a proxy container would keep it running forever", pod.Spec.RestartPolicy), true
	}
	if hasContainer(pod, InitContainer) {
		return skip(ReasonNameConflict, "the pod already has a container named %s", InitContainer), true
	}
	for _, v := range pod.Spec.Volumes {
		if v.Name == TokenVolume || v.Name == TrustVolume {
			return skip(ReasonNameConflict, "the pod already has a volume named %s", v.Name), true
		}
	}
	return Result{}, false
}

func podNamespace(pod *corev1.Pod, in *Input) string {
	if pod.Namespace == "" && in.Namespace != nil {
		return in.Namespace.Name
	}
	return pod.Namespace
}

func hasContainer(pod *corev1.Pod, name string) bool {
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range cs {
			if cs[i].Name == name {
				return true
			}
		}
	}
	return false
}
