package controllers

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	braidv1alpha1 "github.com/braidmesh/braid/api/v1alpha1"
	"github.com/braidmesh/braid/internal/smi"
)

// NewScheme returns a scheme of every type the operator reads or writes.
func NewScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, braidv1alpha1.AddToScheme, smi.AddToScheme} {
		if err := add(s); err != nil {
			return nil, fmt.Errorf("building the scheme: %w", err)
		}
	}
	return s, nil
}

// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch;create;update;patch;delete,namespace=braid-system
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch

// Setup registers every reconciler and index with the manager; compiled configuration
// goes to sink.
func Setup(ctx context.Context, mgr manager.Manager, sink ConfigSink) error {
	if err := SetupIndexes(ctx, mgr); err != nil {
		return err
	}
	if err := (&ServiceReconciler{Client: mgr.GetClient(), Sink: sink}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the service reconciler: %w", err)
	}
	if err := (&TrafficSplitReconciler{Client: mgr.GetClient()}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the traffic split reconciler: %w", err)
	}
	return nil
}
