// Package injecttest runs the sidecar injector as a cluster does: the API server calls it
// through the MutatingWebhookConfiguration generated into config/webhook, served by a
// manager in this process. It has its own API server (the package webhooks' tests run one
// without the injector).
package injecttest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/yaml"

	braidv1alpha1 "github.com/braidmesh/braid/api/v1alpha1"
	"github.com/braidmesh/braid/internal/inject"
	"github.com/braidmesh/braid/webhooks"
)

const meshImage = "mirror.example/braid/proxy:from-meshconfig"

var k8s client.Client

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stop, err := start(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer stop()
	return m.Run()
}

// start runs an API server with Braid's CRDs and webhook configuration, creates the
// MeshConfig, and serves the webhooks from a manager until ctx ends.
func start(ctx context.Context) (stop func(), err error) {
	log := zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.ErrorLevel))
	ctrl.SetLogger(log)
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		WebhookInstallOptions: envtest.WebhookInstallOptions{Paths: []string{filepath.Join(root, "config", "webhook", "manifests.yaml")}},
	}
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("starting the API server (is KUBEBUILDER_ASSETS set? 'make envtest-assets' prints it): %w", err)
	}
	defer func() {
		if err != nil {
			_ = env.Stop()
		}
	}()
	scheme := kruntime.NewScheme()
	if err := errors.Join(clientgoscheme.AddToScheme(scheme), braidv1alpha1.AddToScheme(scheme)); err != nil {
		return nil, err
	}
	if k8s, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		return nil, err
	}
	mc := &braidv1alpha1.MeshConfig{ObjectMeta: metav1.ObjectMeta{Name: braidv1alpha1.MeshConfigName}}
	mc.Spec.Proxy.Image = meshImage
	if err := k8s.Create(ctx, mc); err != nil {
		return nil, err
	}
	wh := env.WebhookInstallOptions
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		WebhookServer:          webhook.NewServer(webhook.Options{Host: wh.LocalServingHost, Port: wh.LocalServingPort, CertDir: wh.LocalServingCertDir}),
	})
	if err != nil {
		return nil, err
	}
	webhooks.Setup(mgr.GetWebhookServer())
	mctx, cancel := context.WithCancel(ctx)
	if err := webhooks.SetupInjector(mctx, mgr, webhooks.InjectorOptions{OperatorNamespace: "braid-system", DefaultProxyImage: "braid-proxy:dev"}); err != nil {
		cancel()
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(mctx) }()
	stop = func() {
		cancel()
		if err := <-done; err != nil {
			fmt.Fprintln(os.Stderr, "the manager:", err)
		}
		_ = env.Stop()
	}
	// The API server fails pods closed until the webhook server answers.
	for deadline := time.Now().Add(30 * time.Second); mgr.GetWebhookServer().StartedChecker()(nil) != nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			stop()
			return nil, errors.New("the webhook server did not start")
		}
	}
	return stop, nil
}

func namespace(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if err := k8s.Create(t.Context(), ns); err != nil {
		t.Fatal(err)
	}
}

// replicaSet creates a ReplicaSet to own pods (no controller runs: it creates none).
func replicaSet(t *testing.T, ns, name string) *appsv1.ReplicaSet {
	t.Helper()
	labels := map[string]string{"app": name}
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: appsv1.ReplicaSetSpec{
			Replicas: ptr.To[int32](0),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.example/app:1"}}},
			},
		},
	}
	if err := k8s.Create(t.Context(), rs); err != nil {
		t.Fatal(err)
	}
	return rs
}

// pod is a pod as a ReplicaSet creates it (generateName, controller reference) with an
// HTTP readiness probe on a named port, or a named pod when owner is nil.
func pod(ns, name string, owner *appsv1.ReplicaSet, annotations map[string]string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: annotations},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "app", Image: "registry.example/app:1",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: "/healthz", Port: intstr.FromString("http"),
			}}},
		}}},
	}
	if owner != nil {
		p.Name, p.GenerateName = "", owner.Name+"-"
		p.OwnerReferences = []metav1.OwnerReference{*metav1.NewControllerRef(owner, appsv1.SchemeGroupVersion.WithKind("ReplicaSet"))}
	}
	return p
}

func create(t *testing.T, p *corev1.Pod) *corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := k8s.Create(ctx, p); err != nil {
		t.Fatalf("creating the pod: %v", err)
	}
	return p
}

func containerNames(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

// TestInjectedInEnabledNamespace: a pod created in a namespace labelled
// braid.dev/inject=enabled is stored with braid-init and the native sidecar braid-proxy
// (this API server is 1.36), its probe rewritten, the MeshConfig's image, and an Injected
// Event on its ReplicaSet.
func TestInjectedInEnabledNamespace(t *testing.T) {
	namespace(t, "meshed", map[string]string{inject.LabelInject: inject.Enabled})
	rs := replicaSet(t, "meshed", "web-7d9f8b6c5d")
	got := create(t, pod("meshed", "", rs, nil))

	if names := containerNames(got.Spec.InitContainers); !slices.Equal(names, []string{inject.InitContainer, inject.ProxyContainer}) {
		t.Fatalf("init containers = %v, want braid-init then braid-proxy", names)
	}
	proxy := got.Spec.InitContainers[1]
	if proxy.RestartPolicy == nil || *proxy.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("braid-proxy restartPolicy = %v, want Always (a native sidecar)", proxy.RestartPolicy)
	}
	if proxy.Image != meshImage {
		t.Errorf("braid-proxy image = %q, want the MeshConfig's %q", proxy.Image, meshImage)
	}
	if names := containerNames(got.Spec.Containers); !slices.Equal(names, []string{"app"}) {
		t.Errorf("containers = %v, want the app's only", names)
	}
	if p := got.Spec.Containers[0].ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/app-probe/app/readiness" || p.HTTPGet.Port.IntValue() != inject.AdminPort {
		t.Errorf("readiness probe = %+v, want GET :15000/app-probe/app/readiness", p)
	}
	if got.Annotations[inject.AnnotationInjected] != "true" || !strings.Contains(got.Annotations[inject.AnnotationOriginalProbes], `"path":"/healthz","port":8080`) {
		t.Errorf("annotations = %v, want injected and the original probe", got.Annotations)
	}
	waitForEvent(t, "meshed", rs.Name, webhooks.EventInjected, "injected braid-proxy")
}

// TestNotInjectedInKubeSystem: even with the annotation, and with the configuration
// calling the webhook for every namespace as envtest installs it, kube-system is left
// alone.
func TestNotInjectedInKubeSystem(t *testing.T) {
	got := create(t, pod(metav1.NamespaceSystem, "system-pod", nil, map[string]string{inject.AnnotationInject: inject.Enabled}))
	if len(got.Spec.InitContainers) != 0 || len(got.Spec.Containers) != 1 || got.Annotations[inject.AnnotationInjected] != "" {
		t.Errorf("a kube-system pod was changed: init %v, containers %v, annotations %v",
			containerNames(got.Spec.InitContainers), containerNames(got.Spec.Containers), got.Annotations)
	}
}

// TestNotInjectedWhenDisabled: the pod's annotation overrides the namespace's label, and
// the ReplicaSet gets an InjectionSkipped Event naming the reason.
func TestNotInjectedWhenDisabled(t *testing.T) {
	namespace(t, "meshed-optout", map[string]string{inject.LabelInject: inject.Enabled})
	rs := replicaSet(t, "meshed-optout", "batch-5c6d7e8f9a")
	got := create(t, pod("meshed-optout", "", rs, map[string]string{inject.AnnotationInject: inject.Disabled}))
	if len(got.Spec.InitContainers) != 0 || len(got.Spec.Containers) != 1 {
		t.Errorf("a pod annotated disabled was injected: init %v, containers %v",
			containerNames(got.Spec.InitContainers), containerNames(got.Spec.Containers))
	}
	waitForEvent(t, "meshed-optout", rs.Name, webhooks.EventInjectionSkipped, string(inject.ReasonDisabled))
}

// TestNotInjectedInPlainNamespace: a namespace without the label is not meshed.
func TestNotInjectedInPlainNamespace(t *testing.T) {
	namespace(t, "plain", nil)
	got := create(t, pod("plain", "plain-pod", nil, nil))
	if len(got.Spec.InitContainers) != 0 || len(got.Spec.Containers) != 1 {
		t.Errorf("a pod of a plain namespace was injected: init %v", containerNames(got.Spec.InitContainers))
	}
}

// waitForEvent waits for an events.k8s.io Event with reason about the ReplicaSet name
// whose note contains note.
func waitForEvent(t *testing.T, ns, name, reason, note string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var list eventsv1.EventList
		if err := k8s.List(t.Context(), &list, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		for _, e := range list.Items {
			if e.Regarding.Kind == "ReplicaSet" && e.Regarding.Name == name && e.Reason == reason && strings.Contains(e.Note, note) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s Event on ReplicaSet %s/%s mentioning %q; events: %+v", reason, ns, name, note, list.Items)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestInjectedPodsAreValid injects every pod of internal/inject's golden inputs, for a
// server with native sidecars and one without, and has this API server validate each
// injected pod (a dry-run create: the injector admits it unchanged, AlreadyInjected).
func TestInjectedPodsAreValid(t *testing.T) {
	inputs, err := filepath.Glob(filepath.Join("..", "..", "internal", "inject", "testdata", "*.input.yaml"))
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no inputs: %v", err)
	}
	created := map[string]bool{}
	for _, path := range inputs {
		for _, native := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/native=%t", strings.TrimSuffix(filepath.Base(path), ".input.yaml"), native), func(t *testing.T) {
				p, in := loadInput(t, path)
				in.NativeSidecars = native
				res, err := inject.Inject(p, in)
				if err != nil {
					t.Fatal(err)
				}
				if !res.Injected() {
					return // the golden files cover why
				}
				if ns := in.Namespace.Name; !created[ns] {
					if err := k8s.Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); client.IgnoreAlreadyExists(err) != nil {
						t.Fatal(err)
					}
					created[ns] = true
				}
				if err := k8s.Create(t.Context(), res.Pod, client.DryRunAll); err != nil {
					t.Errorf("the API server refuses the injected pod: %v", err)
				}
			})
		}
	}
}

// loadInput reads an input of internal/inject's golden tests: the Namespace, the Pod and
// optionally the MeshConfig.
func loadInput(t *testing.T, path string) (*corev1.Pod, inject.Input) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	in := inject.Input{OperatorNamespace: "braid-system", DefaultProxyImage: "braid-proxy:dev"}
	var p *corev1.Pod
	for doc := range strings.SplitSeq(string(raw), "\n---\n") {
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatal(err)
		}
		switch meta.Kind {
		case "Namespace":
			in.Namespace = &corev1.Namespace{}
			err = yaml.Unmarshal([]byte(doc), in.Namespace)
		case "Pod":
			p = &corev1.Pod{}
			err = yaml.Unmarshal([]byte(doc), p)
		case "MeshConfig":
			mc := &braidv1alpha1.MeshConfig{}
			err = yaml.Unmarshal([]byte(doc), mc)
			in.Mesh = &mc.Spec
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if p == nil || in.Namespace == nil {
		t.Fatalf("%s lacks a Pod or a Namespace", path)
	}
	return p, in
}
