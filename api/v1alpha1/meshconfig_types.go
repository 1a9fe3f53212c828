package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MeshConfigName is the name of the one MeshConfig a cluster has.
const MeshConfigName = "braid"

// Annotations and labels users set on their own objects.
const (
	// AccessControlAnnotation on a Namespace overrides spec.accessControl.mode for the
	// destinations in that namespace.
	AccessControlAnnotation = "braid.dev/access-control"
	// RotateAnnotation on the MeshConfig asks the certificate controller for a rotation
	// now: its value is the part to rotate (root or issuer); the controller removes it
	// once the rotation has started.
	RotateAnnotation = "braid.dev/rotate"
)

// AccessMode says how TrafficTargets govern the traffic a destination accepts.
//
// +kubebuilder:validation:Enum=Permissive;Targeted;Strict
type AccessMode string

const (
	// AccessPermissive lets every client, meshed or not, call every destination;
	// TrafficTargets are accepted but not enforced.
	AccessPermissive AccessMode = "Permissive"
	// AccessTargeted leaves a destination open until a TrafficTarget names it; from then
	// on only what its TrafficTargets allow gets in (deny by default per destination).
	AccessTargeted AccessMode = "Targeted"
	// AccessStrict denies everything TrafficTargets do not allow, including calls to
	// destinations no TrafficTarget names.
	AccessStrict AccessMode = "Strict"
)

// MeshConfigSpec is the mesh-wide configuration. Every field is optional: an empty spec
// (or no MeshConfig at all) runs the mesh on the defaults documented on each field.
type MeshConfigSpec struct {
	// trustDomain is the trust domain of workload identities:
	// spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>. Default cluster.local.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$`
	TrustDomain string `json:"trustDomain,omitempty"`

	// accessControl says how TrafficTargets are enforced.
	// +optional
	AccessControl AccessControl `json:"accessControl,omitempty"`

	// certificates sets the lifetimes of the mesh's certificates and where its issuer
	// comes from.
	// +optional
	Certificates Certificates `json:"certificates,omitempty"`

	// proxy sets how the sidecar proxy is injected and run.
	// +optional
	Proxy Proxy `json:"proxy,omitempty"`
}

// AccessControl configures access control.
type AccessControl struct {
	// mode applies to every destination whose namespace does not override it with the
	// braid.dev/access-control annotation. Default Targeted.
	// +optional
	Mode AccessMode `json:"mode,omitempty"`
}

// Certificates configures workload identity.
type Certificates struct {
	// workloadLifetime is how long a proxy's certificate is valid; proxies renew at about
	// 70% of it. Default 24h; at least 10m.
	// +optional
	WorkloadLifetime *metav1.Duration `json:"workloadLifetime,omitempty"`
	// issuerLifetime is how long the operator's own issuing intermediate is valid; it is
	// renewed at two thirds of it. Default 2160h (90 days). Ignored with issuerSecret.
	// +optional
	IssuerLifetime *metav1.Duration `json:"issuerLifetime,omitempty"`
	// rootLifetime is how long a root the operator creates is valid. Default 87600h
	// (10 years). Ignored with issuerSecret.
	// +optional
	RootLifetime *metav1.Duration `json:"rootLifetime,omitempty"`
	// issuerSecret names a Secret in the operator's namespace, in the cert-manager layout
	// (tls.crt, tls.key, ca.crt), that holds the issuer to sign workload certificates
	// with instead of the operator's own CA. The operator reloads it when it changes.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	IssuerSecret string `json:"issuerSecret,omitempty"`
}

// Proxy configures the injected sidecar.
type Proxy struct {
	// image is the braid-proxy image. Default: the image the operator was installed with
	// (its BRAID_PROXY_IMAGE environment variable).
	// +optional
	Image string `json:"image,omitempty"`
	// resources of the proxy container; the braid.dev/proxy-cpu-request,
	// …-cpu-limit, …-memory-request and …-memory-limit pod annotations override them.
	// Default: requests 10m CPU and 32Mi memory, memory limit 256Mi.
	// +optional
	Resources *corev1.ResourceRequirements `json:"resources,omitempty"`
	// logLevel is the proxy's log verbosity, 0 or 1.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1
	LogLevel int32 `json:"logLevel,omitempty"`
}

// MeshConfigStatus is what the operator observed and did.
type MeshConfigStatus struct {
	// conditions report the state of the mesh: each condition's reason says why.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// identity reports the certificate authority's state.
	// +optional
	Identity *IdentityStatus `json:"identity,omitempty"`
}

// IdentityStatus reports the mesh's certificate authority.
type IdentityStatus struct {
	// trustDomain is the trust domain in force.
	TrustDomain string `json:"trustDomain,omitempty"`
	// roots lists the SHA-256 fingerprints of the roots in the trust bundle, the one
	// issuing now first.
	// +optional
	Roots []string `json:"roots,omitempty"`
	// issuerNotAfter is when the issuing certificate expires.
	// +optional
	IssuerNotAfter *metav1.Time `json:"issuerNotAfter,omitempty"`
	// rotationPhase is the step a root rotation is at, empty when none is under way.
	// +optional
	RotationPhase string `json:"rotationPhase,omitempty"`
}

// MeshConfig is the cluster-wide configuration of the Braid mesh. There is one, named braid.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=mc,categories=braid
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Access",type=string,JSONPath=`.spec.accessControl.mode`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="self.metadata.name == 'braid'",message="a cluster has one MeshConfig and it is named braid"
type MeshConfig struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +optional
	Spec MeshConfigSpec `json:"spec,omitempty"`
	// +optional
	Status MeshConfigStatus `json:"status,omitempty"`
}

// MeshConfigList is a list of MeshConfig.
//
// +kubebuilder:object:root=true
type MeshConfigList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MeshConfig `json:"items"`
}
