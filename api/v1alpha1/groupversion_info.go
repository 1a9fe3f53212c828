// Package v1alpha1 holds Braid's own API: the cluster-wide MeshConfig.
//
// +kubebuilder:object:generate=true
// +groupName=braid.dev
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the group and version of Braid's API.
	GroupVersion = schema.GroupVersion{Group: "braid.dev", Version: "v1alpha1"}

	// SchemeBuilder registers Braid's types with a scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds Braid's types to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &MeshConfig{}, &MeshConfigList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
