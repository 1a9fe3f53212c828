package smi

import (
	accessv1alpha3 "github.com/servicemeshinterface/smi-sdk-go/pkg/apis/access/v1alpha3"
	specsv1alpha4 "github.com/servicemeshinterface/smi-sdk-go/pkg/apis/specs/v1alpha4"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// AccessGroupVersion is the version Braid reads TrafficTargets through: the latest, which
// its CRD stores. v1alpha2 objects share its shape (their destination.port is refused at
// admission, since v1alpha3 has no such field) and v1alpha1 objects are refused.
var AccessGroupVersion = schema.GroupVersion{Group: "access.smi-spec.io", Version: "v1alpha3"}

// Rule kinds a TrafficTarget may reference.
const (
	KindHTTPRouteGroup = "HTTPRouteGroup"
	KindTCPRoute       = "TCPRoute"
	KindUDPRoute       = "UDPRoute"
	KindServiceAccount = "ServiceAccount"
)

// TrafficTarget is an SMI TrafficTarget (access.smi-spec.io/v1alpha3) with Braid's status.
//
// +kubebuilder:object:root=true
type TrafficTarget struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   accessv1alpha3.TrafficTargetSpec `json:"spec,omitempty"`
	Status Status                           `json:"status,omitempty"`
}

// TrafficTargetList is a list of TrafficTarget.
//
// +kubebuilder:object:root=true
type TrafficTargetList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []TrafficTarget `json:"items"`
}

// TCPRoute is an SMI TCPRoute (specs.smi-spec.io/v1alpha4) with Braid's status.
//
// +kubebuilder:object:root=true
type TCPRoute struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   specsv1alpha4.TCPRouteSpec `json:"spec,omitempty"`
	Status Status                     `json:"status,omitempty"`
}

// TCPRouteList is a list of TCPRoute.
//
// +kubebuilder:object:root=true
type TCPRouteList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []TCPRoute `json:"items"`
}

// UDPRoute is an SMI UDPRoute (specs.smi-spec.io/v1alpha4) with Braid's status.
//
// +kubebuilder:object:root=true
type UDPRoute struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   specsv1alpha4.UDPRouteSpec `json:"spec,omitempty"`
	Status Status                     `json:"status,omitempty"`
}

// UDPRouteList is a list of UDPRoute.
//
// +kubebuilder:object:root=true
type UDPRouteList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []UDPRoute `json:"items"`
}
