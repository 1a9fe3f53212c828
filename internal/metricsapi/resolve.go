package metricsapi

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/braidmesh/braid/internal/identity"
	"github.com/braidmesh/braid/internal/smi"
)

// kindInfo is a resource kind the API serves TrafficMetrics for.
type kindInfo struct {
	resource   string // the plural in paths: deployments
	kind       string // the Kind of the resource: Deployment
	apiVersion string // of the resource
	namespaced bool
	list       bool // serves list (TrafficSplit: get only)
}

// Kinds served, as discovery lists them.
var kinds = []kindInfo{
	{resource: "pods", kind: "Pod", apiVersion: "v1", namespaced: true, list: true},
	{resource: "deployments", kind: "Deployment", apiVersion: "apps/v1", namespaced: true, list: true},
	{resource: "replicasets", kind: "ReplicaSet", apiVersion: "apps/v1", namespaced: true, list: true},
	{resource: "daemonsets", kind: "DaemonSet", apiVersion: "apps/v1", namespaced: true, list: true},
	{resource: "statefulsets", kind: "StatefulSet", apiVersion: "apps/v1", namespaced: true, list: true},
	{resource: "namespaces", kind: "Namespace", apiVersion: "v1", namespaced: false, list: true},
	{resource: "trafficsplits", kind: "TrafficSplit", apiVersion: smi.SplitGroupVersion.String(), namespaced: true},
}

func kindByResource(resource string) (kindInfo, bool) {
	for _, k := range kinds {
		if k.resource == resource {
			return k, true
		}
	}
	return kindInfo{}, false
}

// newObject returns an empty object of k, and an empty list of them.
func (k kindInfo) newObject() (client.Object, client.ObjectList) {
	switch k.resource {
	case "pods":
		return &corev1.Pod{}, &corev1.PodList{}
	case "deployments":
		return &appsv1.Deployment{}, &appsv1.DeploymentList{}
	case "replicasets":
		return &appsv1.ReplicaSet{}, &appsv1.ReplicaSetList{}
	case "daemonsets":
		return &appsv1.DaemonSet{}, &appsv1.DaemonSetList{}
	case "statefulsets":
		return &appsv1.StatefulSet{}, &appsv1.StatefulSetList{}
	case "namespaces":
		return &corev1.Namespace{}, &corev1.NamespaceList{}
	default:
		return &smi.TrafficSplit{}, &smi.TrafficSplitList{}
	}
}

func (k kindInfo) ref(namespace, name string) *corev1.ObjectReference {
	if !k.namespaced {
		namespace = ""
	}
	return &corev1.ObjectReference{Kind: k.kind, APIVersion: k.apiVersion, Namespace: namespace, Name: name}
}

// cluster is what one answer resolves against, read once from the reader (the
// manager's cache): every pod, and which Deployment owns each ReplicaSet.
type cluster struct {
	pods     []corev1.Pod
	byIP     map[string]*corev1.Pod
	bySA     map[types.NamespacedName][]*corev1.Pod
	rsOwners map[types.NamespacedName]string // ReplicaSet → its Deployment
}

func readCluster(ctx context.Context, r client.Reader) (*cluster, error) {
	var pods corev1.PodList
	if err := r.List(ctx, &pods); err != nil {
		return nil, fmt.Errorf("listing pods: %w", err)
	}
	var rss appsv1.ReplicaSetList
	if err := r.List(ctx, &rss); err != nil {
		return nil, fmt.Errorf("listing replica sets: %w", err)
	}
	return newCluster(pods.Items, rss.Items), nil
}

// newCluster indexes pods by address and ServiceAccount, and ReplicaSets by Deployment.
func newCluster(pods []corev1.Pod, rss []appsv1.ReplicaSet) *cluster {
	c := &cluster{pods: pods, byIP: map[string]*corev1.Pod{}, bySA: map[types.NamespacedName][]*corev1.Pod{}, rsOwners: map[types.NamespacedName]string{}}
	for i := range c.pods {
		p := &c.pods[i]
		for _, ip := range p.Status.PodIPs {
			c.byIP[ip.IP] = p
		}
		if p.Status.PodIP != "" {
			c.byIP[p.Status.PodIP] = p
		}
		sa := types.NamespacedName{Namespace: p.Namespace, Name: serviceAccount(p)}
		c.bySA[sa] = append(c.bySA[sa], p)
	}
	for i := range rss {
		rs := &rss[i]
		if o := controllerOf(rs.OwnerReferences, "Deployment"); o != "" {
			c.rsOwners[types.NamespacedName{Namespace: rs.Namespace, Name: rs.Name}] = o
		}
	}
	return c
}

func serviceAccount(p *corev1.Pod) string {
	if p.Spec.ServiceAccountName == "" {
		return "default"
	}
	return p.Spec.ServiceAccountName
}

func controllerOf(refs []metav1.OwnerReference, kind string) string {
	for _, o := range refs {
		if o.Controller != nil && *o.Controller && o.Kind == kind {
			return o.Name
		}
	}
	return ""
}

// ownerName returns the name of the object of kind k pod belongs to, or "".
func (c *cluster) ownerName(p *corev1.Pod, k kindInfo) string {
	switch k.resource {
	case "pods":
		return p.Name
	case "namespaces":
		return p.Namespace
	case "deployments":
		rs := controllerOf(p.OwnerReferences, "ReplicaSet")
		if rs == "" {
			return ""
		}
		return c.rsOwners[types.NamespacedName{Namespace: p.Namespace, Name: rs}]
	case "trafficsplits":
		return ""
	default:
		return controllerOf(p.OwnerReferences, k.kind)
	}
}

// workload returns the resource a peer pod is best named by when no kind is asked for
// (TrafficSplit edges): its Deployment, else its controller, else the pod itself.
func (c *cluster) workload(p *corev1.Pod) *corev1.ObjectReference {
	for _, k := range []string{"deployments", "daemonsets", "statefulsets", "replicasets"} {
		ki, _ := kindByResource(k)
		if name := c.ownerName(p, ki); name != "" {
			return ki.ref(p.Namespace, name)
		}
	}
	ki, _ := kindByResource("pods")
	return ki.ref(p.Namespace, p.Name)
}

// podsOf returns the pods of the object name of kind k (not TrafficSplit).
func (c *cluster) podsOf(k kindInfo, namespace, name string) []*corev1.Pod {
	var out []*corev1.Pod
	for i := range c.pods {
		p := &c.pods[i]
		if (k.namespaced && p.Namespace != namespace) || c.ownerName(p, k) != name {
			continue
		}
		out = append(out, p)
	}
	return out
}

// peerRef names the peer of a proxy edge as a resource of kind k (k.resource
// "trafficsplits": its workload). The peer's address finds its pod; the address is
// trusted only when the pod runs as the identity the proxy verified (addresses are reused
// as pods come and go, and peers behind a node's address share it). Otherwise the
// identity finds the pods of its ServiceAccount, and names their one owner of kind k, or
// the ServiceAccount itself. A plaintext peer whose address is no pod's is not named: nil.
func (c *cluster) peerRef(e proxyEdgeStat, k kindInfo) *corev1.ObjectReference {
	var id *identity.ID
	if e.PeerIdentity != "" {
		if parsed, err := identity.ParseID(e.PeerIdentity); err == nil {
			id = &parsed
		}
	}
	if p := c.byIP[e.PeerAddr]; p != nil && (id == nil || (id.Namespace == p.Namespace && id.ServiceAccount == serviceAccount(p))) {
		return c.podRef(p, k)
	}
	if id == nil {
		return nil
	}
	var found *corev1.ObjectReference
	for _, p := range c.bySA[types.NamespacedName{Namespace: id.Namespace, Name: id.ServiceAccount}] {
		ref := c.podRef(p, k)
		if found != nil && *found != *ref {
			found = nil
			break
		}
		found = ref
	}
	if found == nil {
		found = &corev1.ObjectReference{Kind: "ServiceAccount", APIVersion: "v1", Namespace: id.Namespace, Name: id.ServiceAccount}
	}
	return found
}

// podRef names p by its owner of kind k, or by itself when it has none.
func (c *cluster) podRef(p *corev1.Pod, k kindInfo) *corev1.ObjectReference {
	if k.resource == "trafficsplits" {
		return c.workload(p)
	}
	if name := c.ownerName(p, k); name != "" {
		return k.ref(p.Namespace, name)
	}
	pods, _ := kindByResource("pods")
	return pods.ref(p.Namespace, p.Name)
}

// servicePods returns the pods a Service's EndpointSlices point at.
func (c *cluster) servicePods(ctx context.Context, r client.Reader, namespace, service string) ([]*corev1.Pod, error) {
	var slices discoveryv1.EndpointSliceList
	sel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: service})
	if err := r.List(ctx, &slices, client.InNamespace(namespace), client.MatchingLabelsSelector{Selector: sel}); err != nil {
		return nil, fmt.Errorf("listing the endpoint slices of service %s/%s: %w", namespace, service, err)
	}
	names := map[string]bool{}
	for _, s := range slices.Items {
		for _, ep := range s.Endpoints {
			if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" {
				names[ep.TargetRef.Name] = true
			}
		}
	}
	var out []*corev1.Pod
	for i := range c.pods {
		if p := &c.pods[i]; p.Namespace == namespace && names[p.Name] {
			out = append(out, p)
		}
	}
	return out, nil
}
