// Command inject benchmarks the sidecar injector's admission handler in-process: latency
// percentiles and allocations per request for a realistic Deployment pod, injected and
// skipped, through Handle alone and through the webhook's HTTP handler (AdmissionReview
// decoding and response encoding included). The baseline, measured in the same run, is
// what any webhook pays to look at a pod: decoding its JSON and encoding it again.
//
// Run it with `make bench-inject`.
package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	braidv1alpha1 "github.com/braidmesh/braid/api/v1alpha1"
	"github.com/braidmesh/braid/internal/inject"
	"github.com/braidmesh/braid/webhooks"
)

const budget = 5 * time.Millisecond

func main() {
	n := flag.Int("n", 20000, "measured requests per scenario")
	warmup := flag.Int("warmup", 2000, "requests before measuring")
	flag.Parse()
	if err := run(*n, *warmup); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// result is one measured scenario.
type result struct {
	name           string
	lat            []time.Duration
	allocs, kbytes float64
	// cpu is the process's CPU time per request (GC included): unlike latency, other
	// processes on the machine do not inflate it.
	cpu time.Duration
}

func run(n, warmup int) error {
	reader := cacheReader{
		"/shop":  &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{inject.LabelInject: inject.Enabled}}},
		"/plain": &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "plain"}},
		"/braid": &braidv1alpha1.MeshConfig{ObjectMeta: metav1.ObjectMeta{Name: braidv1alpha1.MeshConfigName}, Spec: braidv1alpha1.MeshConfigSpec{
			Proxy: braidv1alpha1.Proxy{Image: "registry.example/braid/proxy:v0.4.0", LogLevel: 1},
		}},
	}
	recorder := events.NewFakeRecorder(1024)
	go func() {
		for range recorder.Events {
		}
	}()
	injector := webhooks.NewInjector(reader, nil, recorder, webhooks.InjectorOptions{OperatorNamespace: "braid-system", DefaultProxyImage: "braid-proxy:dev"}, true)
	injected, skipped := request("shop"), request("plain")
	if err := check(injector, injected, skipped); err != nil {
		return err
	}
	srv := &webhook.Admission{Handler: injector}

	var results []result
	results = append(results, measure("baseline: decode + encode the pod JSON", n, warmup, func() error {
		var pod corev1.Pod
		if err := json.Unmarshal(injected.Object.Raw, &pod); err != nil {
			return err
		}
		_, err := json.Marshal(&pod)
		return err
	}))
	for _, sc := range []struct {
		name string
		req  admission.Request
	}{{"Handle: injected (Deployment pod, 2 probes)", injected}, {"Handle: skipped (namespace not enabled)", skipped}} {
		results = append(results, measure(sc.name, n, warmup, func() error {
			if resp := injector.Handle(context.Background(), sc.req); !resp.Allowed {
				return errors.New(resp.Result.Message)
			}
			return nil
		}))
	}
	review, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request:  &injected.AdmissionRequest,
	})
	if err != nil {
		return err
	}
	results = append(results, measure("HTTP: AdmissionReview in, patch out (injected)", n, warmup, func() error {
		rec := httptest.NewRecorder()
		req := httptest.NewRequestWithContext(context.Background(), http.MethodPost, webhooks.PathInject, bytes.NewReader(review))
		req.Header.Set("Content-Type", "application/json")
		srv.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"patchType":"JSONPatch"`) {
			return fmt.Errorf("HTTP %d: %s", rec.Code, rec.Body)
		}
		return nil
	}))
	report(results, len(injected.Object.Raw))
	return nil
}

// check asserts the two requests get what their scenario names.
func check(injector *webhooks.Injector, injected, skipped admission.Request) error {
	if resp := injector.Handle(context.Background(), injected); !resp.Allowed || len(resp.Patches) == 0 {
		return fmt.Errorf("the injected scenario was not injected: %+v", resp.Result)
	}
	if resp := injector.Handle(context.Background(), skipped); !resp.Allowed || len(resp.Patches) != 0 {
		return fmt.Errorf("the skipped scenario was injected: %+v", resp.Result)
	}
	return nil
}

// measure runs f warmup times, then n times, timing each call and counting allocations.
func measure(name string, n, warmup int, f func() error) result {
	for range warmup {
		if err := f(); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", name, err)
			os.Exit(1)
		}
	}
	lat := make([]time.Duration, n)
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	cpuBefore := cpuTime()
	for i := range n {
		start := time.Now()
		if err := f(); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", name, err)
			os.Exit(1)
		}
		lat[i] = time.Since(start)
	}
	cpu := cpuTime() - cpuBefore
	runtime.ReadMemStats(&after)
	slices.SortFunc(lat, cmp.Compare)
	return result{
		name:   name,
		lat:    lat,
		allocs: float64(after.Mallocs-before.Mallocs) / float64(n),
		kbytes: float64(after.TotalAlloc-before.TotalAlloc) / float64(n) / 1024,
		cpu:    cpu / time.Duration(n),
	}
}

// cpuTime is the CPU time (user and system) the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	return sorted[min(len(sorted)-1, int(p*float64(len(sorted))))]
}

func report(results []result, podBytes int) {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d.Nanoseconds())/1e6) }
	load := "unknown"
	if raw, err := os.ReadFile("/proc/loadavg"); err == nil {
		load = strings.Join(strings.Fields(string(raw))[:3], " ")
	}
	fmt.Printf("\nBraid sidecar injection webhook (%d requests per row after warm-up, GOMAXPROCS %d, load average %s, pod JSON %d bytes)\n\n",
		len(results[0].lat), runtime.GOMAXPROCS(0), load, podBytes)
	fmt.Printf("| %-48s | %9s | %9s | %9s | %10s | %9s | %11s | %9s | %9s |\n", "scenario", "p50", "p90", "p99", "max", "CPU/req", "allocs/req", "KB/req", "p99/base")
	fmt.Printf("|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n", strings.Repeat("-", 50), strings.Repeat("-", 11), strings.Repeat("-", 11), strings.Repeat("-", 11),
		strings.Repeat("-", 12), strings.Repeat("-", 11), strings.Repeat("-", 13), strings.Repeat("-", 11), strings.Repeat("-", 11))
	base := percentile(results[0].lat, 0.99)
	worst := time.Duration(0)
	for i, r := range results {
		p99 := percentile(r.lat, 0.99)
		if i > 0 {
			worst = max(worst, p99)
		}
		fmt.Printf("| %-48s | %9s | %9s | %9s | %10s | %9s | %11.0f | %9.1f | %9.1f |\n", r.name,
			ms(percentile(r.lat, 0.5)), ms(percentile(r.lat, 0.9)), ms(p99), ms(r.lat[len(r.lat)-1]), ms(r.cpu), r.allocs, r.kbytes, float64(p99)/float64(base))
	}
	verdict := "within"
	if worst > budget {
		verdict = "OVER"
	}
	fmt.Printf("\nBudget: p99 <= %s per request. Worst p99 of the webhook rows: %s (%s budget).\n", ms(budget), ms(worst), verdict)
	fmt.Printf("Namespaces and the MeshConfig come from an in-memory reader that deep-copies like the\n" +
		"informer cache; Events go to a discarding recorder. Max includes GC pauses. Latency\n" +
		"tails grow with the machine's load; CPU/req (process CPU time, GC included) does not.\n")
}

// request is the AdmissionRequest the API server sends for a pod a ReplicaSet creates in
// namespace: defaulted, with the ServiceAccount token volume the admission plugin adds.
func request(namespace string) admission.Request {
	pod := corev1.Pod{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: "reviews-v1-7d9f8b6c5d-", Namespace: namespace,
			Labels: map[string]string{"app": "reviews", "version": "v1", "pod-template-hash": "7d9f8b6c5d"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "reviews-v1-7d9f8b6c5d",
				UID: "4b7e1c9a-0d2f-4c35-9a41-1f6e2d0c7b11", Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}},
		},
		Spec: corev1.PodSpec{
			ServiceAccountName: "reviews", DeprecatedServiceAccount: "reviews",
			RestartPolicy: corev1.RestartPolicyAlways, DNSPolicy: corev1.DNSClusterFirst, SchedulerName: "default-scheduler",
			TerminationGracePeriodSeconds: ptr.To[int64](30), EnableServiceLinks: ptr.To(true),
			PreemptionPolicy: ptr.To(corev1.PreemptLowerPriority), Priority: ptr.To[int32](0),
			SecurityContext: &corev1.PodSecurityContext{},
			Containers: []corev1.Container{{
				Name: "reviews", Image: "registry.example/shop/reviews:1.4", ImagePullPolicy: corev1.PullIfNotPresent,
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 9080, Protocol: corev1.ProtocolTCP}},
				Env: []corev1.EnvVar{{Name: "LOG_DIR", Value: "/tmp/logs"}, {Name: "ENABLE_RATINGS", Value: "true"},
					{Name: "STAR_COLOR", Value: "black"}},
				Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
					Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("512Mi")},
				},
				ReadinessProbe: httpProbe("/health", 5), LivenessProbe: httpProbe("/health", 10),
				VolumeMounts: []corev1.VolumeMount{{Name: "tmp", MountPath: "/tmp"},
					{Name: "kube-api-access-x7k2p", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true}},
				TerminationMessagePath: "/dev/termination-log", TerminationMessagePolicy: corev1.TerminationMessageReadFile,
				SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: ptr.To(false), RunAsNonRoot: ptr.To(true)},
			}},
			Volumes: []corev1.Volume{
				{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
				{Name: "kube-api-access-x7k2p", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
					DefaultMode: ptr.To[int32](420),
					Sources: []corev1.VolumeProjection{
						{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{ExpirationSeconds: ptr.To[int64](3607), Path: "token"}},
						{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"},
							Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
						{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{Path: "namespace",
							FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"}}}}},
					},
				}}},
			},
			Tolerations: []corev1.Toleration{
				{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To[int64](300)},
				{Key: "node.kubernetes.io/unreachable", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To[int64](300)},
			},
		},
	}
	raw, err := json.Marshal(&pod)
	if err != nil {
		panic(err)
	}
	return admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		UID:       types.UID("705ab4f5-6393-11e8-b7cc-42010a800002"),
		Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
		Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
		Namespace: namespace, Operation: admissionv1.Create,
		Object: kruntime.RawExtension{Raw: raw},
	}}
}

func httpProbe(path string, period int32) *corev1.Probe {
	return &corev1.Probe{
		ProbeHandler:   corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromString("http"), Scheme: corev1.URISchemeHTTP}},
		TimeoutSeconds: 1, PeriodSeconds: period, SuccessThreshold: 1, FailureThreshold: 3,
	}
}

// cacheReader serves objects by namespace/name as the informer cache does: a lookup and a
// deep copy.
type cacheReader map[string]client.Object

func (c cacheReader) Get(_ context.Context, key client.ObjectKey, out client.Object, _ ...client.GetOption) error {
	obj, ok := c[key.Namespace+"/"+key.Name]
	if !ok || reflect.TypeOf(obj) != reflect.TypeOf(out) {
		return apierrors.NewNotFound(schema.GroupResource{}, key.Name)
	}
	reflect.ValueOf(out).Elem().Set(reflect.ValueOf(obj.DeepCopyObject()).Elem())
	return nil
}

func (c cacheReader) List(context.Context, client.ObjectList, ...client.ListOption) error {
	return errors.New("not supported")
}
