package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MeshConfigName is the name of the one MeshConfig a cluster has.
const MeshConfigName = "braid"

// MeshConfigSpec is the mesh-wide configuration. Its fields arrive with the features that
// read them (trust domain and certificate lifetimes with workload identity, permissive
// mode with access control, proxy image and resources with injection); until then the
// mesh runs on built-in defaults.
type MeshConfigSpec struct{}

// MeshConfigStatus is what the operator observed and did.
type MeshConfigStatus struct {
	// conditions report the state of the mesh: each condition's reason says why.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// MeshConfig is the cluster-wide configuration of the Braid mesh. There is one, named braid.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=mc,categories=braid
// +kubebuilder:subresource:status
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
