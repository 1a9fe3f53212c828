package harness

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/braidmesh/braid/internal/smi"
	"github.com/braidmesh/braid/proxy/api"
)

// Namespace is a namespace object.
func Namespace(name string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
}

// Service is a ClusterIP Service with one TCP port named http that targets the named
// container port http, as most applications declare it.
func Service(namespace, name string, port int32) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{
			Name: "http", Port: port, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromString("http"),
		}}},
	}
}

// EndpointSlices are the slices the EndpointSlice controller would write for service
// with the given ready endpoints: one slice per target port, as for pods whose named port
// resolves to different numbers.
func EndpointSlices(namespace, service string, eps ...netip.AddrPort) []*discoveryv1.EndpointSlice {
	byPort := map[uint16][]netip.Addr{}
	for _, ep := range eps {
		byPort[ep.Port()] = append(byPort[ep.Port()], ep.Addr())
	}
	var out []*discoveryv1.EndpointSlice
	for _, port := range slices.Sorted(maps.Keys(byPort)) {
		s := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{
				Namespace: namespace,
				Name:      fmt.Sprintf("%s-%d", service, port),
				Labels:    map[string]string{discoveryv1.LabelServiceName: service},
			},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(port)), Protocol: ptr.To(corev1.ProtocolTCP)}},
		}
		for _, ip := range byPort[port] {
			s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
				Addresses: []string{ip.String()}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
			})
		}
		out = append(out, s)
	}
	return out
}

// Weighted is a backend and its weight as a client writes it: an int for v1alpha2+,
// a string or an int for v1alpha1.
type Weighted struct {
	Service string
	Weight  any
}

// TrafficSplit is a TrafficSplit in the given apiVersion (for example
// split.smi-spec.io/v1alpha2), written the way a client of that version writes it.
func TrafficSplit(apiVersion, namespace, name, root string, backends ...Weighted) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": apiVersion,
		"kind":       "TrafficSplit",
		"metadata":   map[string]any{"namespace": namespace, "name": name},
		"spec":       map[string]any{"service": root, "backends": backendList(backends)},
	}}
	return u
}

func backendList(backends []Weighted) []any {
	out := make([]any, 0, len(backends))
	for _, b := range backends {
		out = append(out, map[string]any{"service": b.Service, "weight": b.Weight})
	}
	return out
}

// SetWeights merge-patches a split's backends, as Argo Rollouts does.
func SetWeights(ctx context.Context, c client.Client, split *unstructured.Unstructured, backends ...Weighted) error {
	patch, err := json.Marshal(map[string]any{"spec": map[string]any{"backends": backendList(backends)}})
	if err != nil {
		return err
	}
	if err := c.Patch(ctx, split, client.RawPatch(types.MergePatchType, patch)); err != nil {
		return fmt.Errorf("patching the weights of %s: %w", split.GetName(), err)
	}
	return nil
}

// WaitForAccepted waits until the split's Accepted condition reflects its current
// generation, and returns that condition.
func WaitForAccepted(ctx context.Context, c client.Client, key types.NamespacedName) (metav1.Condition, error) {
	for {
		var ts smi.TrafficSplit
		err := c.Get(ctx, key, &ts)
		if err == nil {
			if cond := meta.FindStatusCondition(ts.Status.Conditions, "Accepted"); cond != nil && cond.ObservedGeneration == ts.Generation {
				return *cond, nil
			}
		}
		select {
		case <-ctx.Done():
			return metav1.Condition{}, waitFailed(fmt.Sprintf("waiting for the Accepted condition of %s", key), err, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Weights returns the backend weights a snapshot gives a Service port, by backend name.
func Weights(snap *api.Snapshot, namespace, service string, port uint32) map[string]uint32 {
	p := FindPort(snap, namespace, service, port)
	if p == nil {
		return nil
	}
	out := map[string]uint32{}
	for _, b := range Backends(p) {
		out[b.GetService()] = b.GetWeight()
	}
	return out
}

// Backends returns the backends of a port's first route: for a port without split
// matches, where all its traffic goes.
func Backends(p *api.ServicePort) []*api.Backend {
	if len(p.GetRoutes()) == 0 {
		return nil
	}
	return p.GetRoutes()[0].GetBackends()
}

// FindPort finds a Service port in a snapshot.
func FindPort(snap *api.Snapshot, namespace, service string, port uint32) *api.ServicePort {
	for _, s := range snap.GetServices() {
		if s.GetNamespace() != namespace || s.GetName() != service {
			continue
		}
		for _, p := range s.GetPorts() {
			if p.GetPort() == port {
				return p
			}
		}
	}
	return nil
}

// Share is the fraction of counts that went to name.
func Share(counts map[string]int, name string) float64 {
	total := 0
	for _, n := range counts {
		total += n
	}
	if total == 0 {
		return 0
	}
	return float64(counts[name]) / float64(total)
}

// FormatCounts prints counts in a stable order, largest first.
func FormatCounts(counts map[string]int) string {
	keys := slices.SortedFunc(maps.Keys(counts), func(a, b string) int {
		return cmp.Or(cmp.Compare(counts[b], counts[a]), cmp.Compare(a, b))
	})
	s := ""
	for i, k := range keys {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%s=%d", k, counts[k])
	}
	return s
}

// waitFailed reports a wait that ran out, with the last error seen while polling if any.
func waitFailed(what string, last, cause error) error {
	if last != nil {
		return fmt.Errorf("%s: %w (last error: %w)", what, cause, last)
	}
	return fmt.Errorf("%s: %w", what, cause)
}

// SameShares reports whether a snapshot's weights for a port give each backend the same
// share as want (weights are relative: 90/10 and 9/1 are the same split).
func SameShares(got map[string]uint32, want map[string]int64) bool {
	if len(got) != len(want) {
		return false
	}
	var gotSum uint64
	var wantSum int64
	for k, w := range want {
		if _, ok := got[k]; !ok {
			return false
		}
		gotSum += uint64(got[k])
		wantSum += w
	}
	if gotSum == 0 || wantSum == 0 {
		return gotSum == 0 && wantSum == 0
	}
	for k, w := range want {
		if uint64(got[k])*uint64(wantSum) != uint64(w)*gotSum {
			return false
		}
	}
	return true
}
