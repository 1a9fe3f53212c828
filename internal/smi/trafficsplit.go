package smi

import (
	splitv1alpha1 "github.com/servicemeshinterface/smi-sdk-go/pkg/apis/split/v1alpha1"
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

	Spec   splitv1alpha1.TrafficSplitSpec `json:"spec,omitempty"`
	Status Status                         `json:"status,omitempty"`
}

// TrafficSplitList is a list of TrafficSplit.
//
// +kubebuilder:object:root=true
type TrafficSplitList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []TrafficSplit `json:"items"`
}
