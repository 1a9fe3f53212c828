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

// ConfigServer is what the reconcilers need of the config server: somewhere to put
// compiled configuration, and news of what proxies acknowledged.
type ConfigServer interface {
	ConfigSink
	AckCounter
	OnAcks(func())
}

// Setup registers every reconciler and index with the manager, feeding srv.
func Setup(ctx context.Context, mgr manager.Manager, srv ConfigServer) error {
	if err := SetupIndexes(ctx, mgr); err != nil {
		return err
	}
	programs := NewPrograms()
	srv.OnAcks(programs.AcksChanged)
	if err := mgr.Add(manager.RunnableFunc(programs.Start)); err != nil {
		return fmt.Errorf("adding the program tracker: %w", err)
	}
	if err := (&ServiceReconciler{Client: mgr.GetClient(), Sink: srv, Programs: programs}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the service reconciler: %w", err)
	}
	split := &TrafficSplitReconciler{Client: mgr.GetClient(), Acks: srv, Programs: programs, Events: mgr.GetEventRecorder("braid")}
	if err := split.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the traffic split reconciler: %w", err)
	}
	if err := (&HTTPRouteGroupReconciler{Client: mgr.GetClient()}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the HTTPRouteGroup reconciler: %w", err)
	}
	return nil
}
