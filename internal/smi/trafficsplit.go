package smi

import (
	splitv1alpha1 "github.com/servicemeshinterface/smi-sdk-go/pkg/apis/split/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// SplitGroupVersion is the version Braid reads TrafficSplits through.
	SplitGroupVersion = schema.GroupVersion{Group: "split.smi-spec.io", Version: "v1alpha1"}

	schemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the wrapped SMI types to a scheme.
	AddToScheme = schemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(SplitGroupVersion, &TrafficSplit{}, &TrafficSplitList{})
	metav1.AddToGroupVersion(s, SplitGroupVersion)
	s.AddKnownTypes(SpecsGroupVersion, &HTTPRouteGroup{}, &HTTPRouteGroupList{},
		&TCPRoute{}, &TCPRouteList{}, &UDPRoute{}, &UDPRouteList{})
	metav1.AddToGroupVersion(s, SpecsGroupVersion)
	s.AddKnownTypes(AccessGroupVersion, &TrafficTarget{}, &TrafficTargetList{})
	metav1.AddToGroupVersion(s, AccessGroupVersion)
	return nil
}

// Status is the status Braid writes on SMI objects.
type Status struct {
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// TrafficSplit is an SMI TrafficSplit: the SDK's spec and Braid's status.
//
// +kubebuilder:object:root=true
type TrafficSplit struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   TrafficSplitSpec   `json:"spec,omitempty"`
	Status TrafficSplitStatus `json:"status,omitempty"`
}

// TrafficSplitSpec is the SDK's v1alpha1 spec plus the matches of v1alpha3 and later,
// which every version of Braid's TrafficSplit CRD carries.
type TrafficSplitSpec struct {
	splitv1alpha1.TrafficSplitSpec `json:",inline"`

	// Matches name HTTPRouteGroups in the split's namespace: only requests they match are
	// split; the others go to the root Service itself.
	Matches []corev1.TypedLocalObjectReference `json:"matches,omitempty"`
}

// TrafficSplitList is a list of TrafficSplit.
//
// +kubebuilder:object:root=true
type TrafficSplitList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []TrafficSplit `json:"items"`
}

// TrafficSplitStatus is Braid's status of a TrafficSplit: the conditions, and the last form
// of the split Braid accepted. Proxies keep running that form while a later generation is
// not accepted; keeping it in the status keeps it across operator restarts.
type TrafficSplitStatus struct {
	Status `json:",inline"`
	// LastAccepted is the last generation of the split Braid accepted, as it compiled it.
	// +optional
	LastAccepted *AcceptedSplit `json:"lastAccepted,omitempty"`
}

// AcceptedSplit is an accepted generation of a split: its backends with their weights in
// thousandths, and the HTTPRouteGroups it matches on.
type AcceptedSplit struct {
	Generation int64             `json:"generation"`
	Backends   []AcceptedBackend `json:"backends,omitempty"`
	Matches    []string          `json:"matches,omitempty"`
}

// AcceptedBackend is a backend of an accepted split.
type AcceptedBackend struct {
	Service     string `json:"service"`
	MilliWeight int64  `json:"milliWeight"`
}
