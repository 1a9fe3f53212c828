// Package smi holds the SMI objects as Braid reads and writes them through
// controller-runtime: the smi-sdk-go spec types, wrapped with the status subresource that
// Braid's CRDs add (the SDK's types have no status).
//
// TrafficSplit is read through split.smi-spec.io/v1alpha1. Every served version of Braid's
// TrafficSplit CRD stores the same shape (the CRD's conversion strategy is None), and the
// v1alpha1 spec's weight is a resource.Quantity, which decodes both the integer weights of
// v1alpha2+ and the string weights Flagger writes ("100", "500m"). Reading through an
// integer-weighted version would fail on the first string weight and stall the informer
// for every split in the cluster.
//
// +kubebuilder:object:generate=true
// +groupName=split.smi-spec.io
package smi
