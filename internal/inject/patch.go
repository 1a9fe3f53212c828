package inject

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"

	"github.com/braidmesh/braid/proxy/admin"
)

// prometheusPrefix marks the scrape annotations; the injector adds its own only to a pod
// that has none, and never changes a user's.
const prometheusPrefix = "prometheus.io/"

// mutate returns the injected copy of pod and the patch from pod to it. The patch only
// inserts, replaces the probes it rewrites and adds annotations: it never rewrites a
// container or volume of the pod's own, so fields this package's API types do not know
// survive it.
func mutate(pod *corev1.Pod, in *Input, image string, s settings) (*corev1.Pod, []jsonpatch.Operation, error) {
	out := pod.DeepCopy()
	// Probes first: their paths use the indices of the pod as it came.
	probes, ops := rewriteProbes(out)
	var probesJSON string
	if len(probes) > 0 {
		raw, err := json.Marshal(probes)
		if err != nil {
			return nil, nil, fmt.Errorf("encoding the application probes: %w", err)
		}
		probesJSON = string(raw)
	}
	proxy, init := proxyContainer(in, image, s, probesJSON), initContainer(image, s)
	if in.NativeSidecars {
		// braid-init redirects, then the proxy starts and turns ready, then the pod's own
		// init containers run, already meshed.
		ops = insert(ops, "/spec/initContainers", len(pod.Spec.InitContainers), 0, init, proxy)
		out.Spec.InitContainers = slices.Insert(out.Spec.InitContainers, 0, init, proxy)
	} else {
		// braid-init last: the pod's own init containers run before any redirection, since
		// no proxy runs during them.
		ops = insert(ops, "/spec/initContainers", len(pod.Spec.InitContainers), len(pod.Spec.InitContainers), init)
		out.Spec.InitContainers = append(out.Spec.InitContainers, init)
		ops = insert(ops, "/spec/containers", len(pod.Spec.Containers), 0, proxy)
		out.Spec.Containers = slices.Insert(out.Spec.Containers, 0, proxy)
	}
	if pod.Spec.ServiceAccountName == "" {
		// The projected token needs one. The ServiceAccount admission plugin sets it before
		// webhooks run; a server without that plugin would refuse the pod.
		ops = append(ops, jsonpatch.NewOperation("add", "/spec/serviceAccountName", "default"))
		out.Spec.ServiceAccountName = "default"
	}
	vols := volumes()
	ops = insert(ops, "/spec/volumes", len(pod.Spec.Volumes), len(pod.Spec.Volumes), vols...)
	out.Spec.Volumes = append(out.Spec.Volumes, vols...)

	add := map[string]string{AnnotationInjected: "true", AnnotationProxyVersion: imageVersion(image)}
	if probesJSON != "" {
		add[AnnotationOriginalProbes] = probesJSON
	}
	if !hasPrometheusAnnotation(pod.Annotations) {
		add[prometheusPrefix+"scrape"] = "true"
		add[prometheusPrefix+"port"] = fmt.Sprint(AdminPort)
		add[prometheusPrefix+"path"] = "/metrics"
	}
	if pod.Annotations == nil {
		ops = append(ops, jsonpatch.NewOperation("add", "/metadata/annotations", add))
		out.Annotations = map[string]string{}
	} else {
		for _, k := range slices.Sorted(maps.Keys(add)) {
			ops = append(ops, jsonpatch.NewOperation("add", "/metadata/annotations/"+escape(k), add[k]))
		}
	}
	maps.Copy(out.Annotations, add)
	return out, ops, nil
}

// rewriteProbes points the network probes of pod's containers at the proxy's admin port
// and returns the originals with the patch operations that replace them.
func rewriteProbes(pod *corev1.Pod) (admin.AppProbes, []jsonpatch.Operation) {
	probes := admin.AppProbes{}
	var ops []jsonpatch.Operation
	for _, group := range []struct {
		path       string
		containers []corev1.Container
		init       bool
	}{
		{"/spec/initContainers", pod.Spec.InitContainers, true},
		{"/spec/containers", pod.Spec.Containers, false},
	} {
		for i := range group.containers {
			c := &group.containers[i]
			if !probed(c, group.init) {
				continue
			}
			for _, slot := range probeSlots(c) {
				original, ok := AppProbe(c, *slot.probe)
				if !ok {
					continue
				}
				if probes[c.Name] == nil {
					probes[c.Name] = map[string]admin.AppProbe{}
				}
				probes[c.Name][slot.kind] = original
				*slot.probe = rewrittenProbe(c.Name, slot.kind, *slot.probe)
				ops = append(ops, jsonpatch.NewOperation("replace", fmt.Sprintf("%s/%d/%s", group.path, i, slot.field), *slot.probe))
			}
		}
	}
	return probes, ops
}

// insert appends the operations that insert items at index at of the array at path, which
// has n elements (and may be absent when n is 0).
func insert[T any](ops []jsonpatch.Operation, path string, n, at int, items ...T) []jsonpatch.Operation {
	if n == 0 {
		return append(ops, jsonpatch.NewOperation("add", path, items))
	}
	for i, item := range items {
		p := fmt.Sprintf("%s/%d", path, at+i)
		if at == n {
			p = path + "/-"
		}
		ops = append(ops, jsonpatch.NewOperation("add", p, item))
	}
	return ops
}

func hasPrometheusAnnotation(ann map[string]string) bool {
	for k := range ann {
		if strings.HasPrefix(k, prometheusPrefix) {
			return true
		}
	}
	return false
}

// escape encodes a JSON pointer token (RFC 6901).
func escape(token string) string {
	return strings.NewReplacer("~", "~0", "/", "~1").Replace(token)
}
