package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	braidv1alpha1 "github.com/braidmesh/braid/api/v1alpha1"
	"github.com/braidmesh/braid/internal/mesh"
)

// InjectedAnnotation marks a pod the injector gave a proxy.
const InjectedAnnotation = "braid.dev/injected"

// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch
// +kubebuilder:rbac:groups=braid.dev,resources=meshconfigs,verbs=get;list;watch

// workloads fills in the pods behind the endpoints the compile reads, so that endpoints
// of meshed pods are reached through their proxies under their identity. A pod the cache
// does not hold yet, or holds without its IP, is treated as not meshed until it arrives:
// the Pod watch then compiles the Service again.
func (r *ServiceReconciler) workloads(ctx context.Context, in *mesh.ServiceInput) error {
	names := map[string]bool{}
	collect := func(slices []*discoveryv1.EndpointSlice) {
		for _, s := range slices {
			for _, e := range s.Endpoints {
				if ref := e.TargetRef; ref != nil && ref.Kind == "Pod" && ref.Name != "" {
					names[ref.Name] = true
				}
			}
		}
	}
	collect(in.Slices)
	for _, b := range in.Backends {
		collect(b.Slices)
	}
	if len(names) == 0 || in.Service == nil {
		return nil
	}
	in.Workloads = make(map[string]mesh.Workload, len(names))
	for name := range names {
		var pod corev1.Pod
		err := r.Client.Get(ctx, types.NamespacedName{Namespace: in.Service.Namespace, Name: name}, &pod)
		switch {
		case apierrors.IsNotFound(err):
			continue
		case err != nil:
			return fmt.Errorf("reading pod %s/%s: %w", in.Service.Namespace, name, err)
		}
		w := mesh.Workload{ServiceAccount: pod.Spec.ServiceAccountName, Meshed: pod.Annotations[InjectedAnnotation] == "true"}
		if w.ServiceAccount == "" {
			w.ServiceAccount = "default"
		}
		for _, ip := range pod.Status.PodIPs {
			in.Workloads[ip.IP] = w
		}
	}
	td, err := r.trustDomain(ctx)
	in.TrustDomain = td
	return err
}

// trustDomain reads the trust domain in force from the MeshConfig.
func (r *ServiceReconciler) trustDomain(ctx context.Context) (string, error) {
	var mc braidv1alpha1.MeshConfig
	err := r.Client.Get(ctx, types.NamespacedName{Name: braidv1alpha1.MeshConfigName}, &mc)
	switch {
	case apierrors.IsNotFound(err):
		return braidv1alpha1.DefaultTrustDomain, nil
	case err != nil:
		return "", fmt.Errorf("reading the MeshConfig: %w", err)
	}
	return mc.Spec.EffectiveTrustDomain(), nil
}

// CacheOptions are the manager's cache options: pods are cached slimmed to what the mesh
// reads of them (name, labels, annotations, owners, service account, IPs, phase), since a
// cluster has many and the operator needs little of each.
func CacheOptions() cache.Options {
	return cache.Options{ByObject: map[client.Object]cache.ByObject{
		&corev1.Pod{}: {Transform: slimPod},
	}}
}

func slimPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	slim := &corev1.Pod{
		TypeMeta:   pod.TypeMeta,
		ObjectMeta: pod.ObjectMeta,
		Spec:       corev1.PodSpec{ServiceAccountName: pod.Spec.ServiceAccountName, NodeName: pod.Spec.NodeName},
		Status:     corev1.PodStatus{Phase: pod.Status.Phase, PodIP: pod.Status.PodIP, PodIPs: pod.Status.PodIPs},
	}
	slim.ManagedFields = nil
	return slim, nil
}
