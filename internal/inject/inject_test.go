package inject

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	jsonpatchapply "github.com/evanphx/json-patch/v5"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	braidv1alpha1 "github.com/braidmesh/braid/api/v1alpha1"
	"github.com/braidmesh/braid/internal/golden"
	"github.com/braidmesh/braid/proxy/admin"
)

var update = flag.Bool("update", false, "rewrite golden files")

const (
	testdata          = "testdata"
	operatorNamespace = "braid-system"
	defaultImage      = "registry.example/braid/proxy:v0.4.0"
)

// TestInject injects the pod of each testdata/<input>.input.yaml and compares the result
// with testdata/<case>.golden.json: the skip reason, the message and the JSON patch the
// API server applies. Run with -update to rewrite the golden files, then read them: a
// golden file states what the injector must produce.
//
// An input file is multi-document YAML: the pod's Namespace, the Pod, and optionally the
// MeshConfig. Every case runs against an API server with native sidecars unless oldServer.
func TestInject(t *testing.T) {
	cases := []struct {
		name, input string // input defaults to name
		oldServer   bool
		want        Reason // "" when injected
	}{
		{name: "deployment"},
		{name: "job"},
		{name: "job-old-server", input: "job", oldServer: true, want: ReasonRunsToCompletion},
		{name: "probes-every-kind"},
		{name: "exclusion-annotations"},
		{name: "already-injected", want: ReasonAlreadyInjected},
		{name: "host-network", want: ReasonHostNetwork},
		{name: "opted-out", want: ReasonDisabled},
		{name: "opted-in-pod"},
		{name: "namespace-not-enabled", want: ReasonNamespaceNotEnabled},
		{name: "kube-system", want: ReasonExcludedNamespace},
		{name: "operator-namespace", want: ReasonExcludedNamespace},
		{name: "own-init-containers"},
		{name: "old-server", input: "own-init-containers", oldServer: true},
		{name: "run-as-user"},
		{name: "resource-annotations"},
		{name: "invalid-annotation", want: ReasonInvalidAnnotation},
		{name: "invalid-resource-annotation", want: ReasonInvalidAnnotation},
		{name: "request-above-limit", want: ReasonInvalidAnnotation},
		{name: "invalid-inject-value", want: ReasonInvalidAnnotation},
		{name: "prometheus-annotations"},
		{name: "name-conflict", want: ReasonNameConflict},
	}
	used := map[string]bool{}
	for _, tc := range cases {
		input := tc.name
		if tc.input != "" {
			input = tc.input
		}
		used[input] = true
		t.Run(tc.name, func(t *testing.T) {
			pod, in := loadInput(t, input)
			in.NativeSidecars = !tc.oldServer
			before := pod.DeepCopy()
			res, err := Inject(pod, in)
			if err != nil {
				t.Fatal(err)
			}
			if !equality.Semantic.DeepEqual(pod, before) {
				t.Error("Inject changed the pod it was given")
			}
			if res.Skip != tc.want {
				t.Errorf("Skip = %q (%s), want %q", res.Skip, res.Message, tc.want)
			}
			if res.Injected() {
				checkInjected(t, pod, in, res)
			} else if len(res.Patch) != 0 || res.Pod != nil {
				t.Errorf("a skipped pod got a patch (%d operations) or a pod", len(res.Patch))
			}
			compareGolden(t, filepath.Join(testdata, tc.name+".golden.json"), goldenJSON(t, res))
		})
	}
	inputs, err := filepath.Glob(filepath.Join(testdata, "*.input.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range inputs {
		if name := strings.TrimSuffix(filepath.Base(path), ".input.yaml"); !used[name] {
			t.Errorf("%s is not in the TestInject table", path)
		}
	}
}

// checkInjected asserts what holds for every injected pod: the patch turns the pod into
// res.Pod, injecting the result again is AlreadyInjected, the proxy sits where the mode
// says, and the application probes in the annotation and the environment agree.
func checkInjected(t *testing.T, pod *corev1.Pod, in Input, res Result) {
	t.Helper()
	patched := applyPatch(t, pod, res)
	if !equality.Semantic.DeepEqual(patched, res.Pod) {
		t.Errorf("the patch does not produce Result.Pod:\n--- patched\n%s--- Result.Pod\n%s", toYAML(t, patched), toYAML(t, res.Pod))
	}
	again, err := Inject(patched, in)
	if err != nil || again.Skip != ReasonAlreadyInjected {
		t.Errorf("injecting the injected pod: %q, %v; want AlreadyInjected", again.Skip, err)
	}
	checkPlacement(t, patched, in.NativeSidecars)
	checkProbesAgree(t, patched)
}

func checkPlacement(t *testing.T, patched *corev1.Pod, native bool) {
	t.Helper()
	init := patched.Spec.InitContainers
	if native {
		if len(init) < 2 || init[0].Name != InitContainer || init[1].Name != ProxyContainer || init[1].RestartPolicy == nil {
			t.Errorf("native sidecars: want %s then %s (restartPolicy Always) first among init containers, got %v", InitContainer, ProxyContainer, names(init))
		}
		return
	}
	if init[len(init)-1].Name != InitContainer || patched.Spec.Containers[0].Name != ProxyContainer {
		t.Errorf("fallback: want %s last among init containers and %s first among containers, got %v and %v",
			InitContainer, ProxyContainer, names(init), names(patched.Spec.Containers))
	}
}

func checkProbesAgree(t *testing.T, patched *corev1.Pod) {
	t.Helper()
	var env string
	for _, c := range append(patched.Spec.InitContainers, patched.Spec.Containers...) {
		for _, e := range c.Env {
			if c.Name == ProxyContainer && e.Name == "BRAID_APP_PROBES" {
				env = e.Value
			}
		}
	}
	if ann := patched.Annotations[AnnotationOriginalProbes]; ann != env {
		t.Errorf("annotation %s = %q but BRAID_APP_PROBES = %q", AnnotationOriginalProbes, ann, env)
	}
	if env == "" {
		return
	}
	var probes admin.AppProbes
	if err := json.Unmarshal([]byte(env), &probes); err != nil || len(probes) == 0 {
		t.Errorf("BRAID_APP_PROBES does not decode as admin.AppProbes: %v", err)
	}
}

// applyPatch applies res.Patch to pod's JSON as the API server does.
func applyPatch(t *testing.T, pod *corev1.Pod, res Result) *corev1.Pod {
	t.Helper()
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	var patched corev1.Pod
	if err := json.Unmarshal(applyRaw(t, raw, res), &patched); err != nil {
		t.Fatal(err)
	}
	return &patched
}

func applyRaw(t *testing.T, raw []byte, res Result) []byte {
	t.Helper()
	ops, err := json.Marshal(res.Patch)
	if err != nil {
		t.Fatal(err)
	}
	patch, err := jsonpatchapply.DecodePatch(ops)
	if err != nil {
		t.Fatalf("decoding the patch: %v", err)
	}
	out, err := patch.Apply(raw)
	if err != nil {
		t.Fatalf("applying the patch: %v", err)
	}
	return out
}

var podLists = []string{"initContainers", "containers", "volumes"}

// TestPatchKeepsUnknownFields applies a patch to a pod whose JSON has fields this
// package's API types do not know (a newer API server's): they stay where they were.
func TestPatchKeepsUnknownFields(t *testing.T) {
	pod, in := loadInput(t, "own-init-containers")
	in.NativeSidecars = true
	res, err := Inject(pod, in)
	if err != nil || !res.Injected() {
		t.Fatalf("Inject: %v, %v", res.Skip, err)
	}
	// Every container and volume of the pod gets futureField: its own name.
	doc := jsonDoc(t, pod)
	spec := doc["spec"].(map[string]any)
	spec["futurePodField"] = "kept"
	for _, list := range podLists {
		for _, item := range spec[list].([]any) {
			item.(map[string]any)["futureField"] = item.(map[string]any)["name"]
		}
	}
	raw, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	var patched struct {
		Spec map[string]any `json:"spec"`
	}
	if err := json.Unmarshal(applyRaw(t, raw, res), &patched); err != nil {
		t.Fatal(err)
	}
	if patched.Spec["futurePodField"] != "kept" {
		t.Error("the pod's unknown field was lost")
	}
	ours := map[any]bool{InitContainer: true, ProxyContainer: true, TokenVolume: true, TrustVolume: true}
	for _, list := range podLists {
		for _, item := range patched.Spec[list].([]any) {
			m := item.(map[string]any)
			want := m["name"]
			if ours[want] {
				want = nil
			}
			if m["futureField"] != want {
				t.Errorf("%s %s: futureField = %v, want %v", list, m["name"], m["futureField"], want)
			}
		}
	}
}

func jsonDoc(t *testing.T, pod *corev1.Pod) map[string]any {
	t.Helper()
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	return doc
}

func TestNativeSidecars(t *testing.T) {
	for v, want := range map[string]bool{
		"v1.28.15": false, "v1.29.0": true, "v1.29.1-gke.1589000": true, "v1.36.3": true, "v1.27.3+k3s1": false, "v2.0.0": true,
	} {
		if got, err := NativeSidecars(v); err != nil || got != want {
			t.Errorf("NativeSidecars(%q) = %t, %v; want %t", v, got, err, want)
		}
	}
	if _, err := NativeSidecars("garbage"); err == nil {
		t.Error("NativeSidecars(garbage) did not fail")
	}
}

func TestImageVersion(t *testing.T) {
	for image, want := range map[string]string{
		"braid-proxy:dev":                         "dev",
		"registry.example:5000/braid/proxy":       "latest",
		"registry.example:5000/braid/proxy:v1.2":  "v1.2",
		"registry.example/braid/proxy@sha256:abc": "sha256:abc",
	} {
		if got := imageVersion(image); got != want {
			t.Errorf("imageVersion(%q) = %q, want %q", image, got, want)
		}
	}
}

func TestNoImage(t *testing.T) {
	pod, in := loadInput(t, "deployment")
	in.DefaultProxyImage = ""
	if _, err := Inject(pod, in); err == nil {
		t.Error("Inject without any proxy image did not fail")
	}
}

// loadInput reads testdata/<name>.input.yaml.
func loadInput(t *testing.T, name string) (*corev1.Pod, Input) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(testdata, name+".input.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	in := Input{OperatorNamespace: operatorNamespace, DefaultProxyImage: defaultImage}
	var pod *corev1.Pod
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(raw)))
	for {
		doc, err := reader.Read()
		if err != nil {
			break
		}
		var meta struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatal(err)
		}
		switch meta.Kind {
		case "Namespace":
			in.Namespace = &corev1.Namespace{}
			err = yaml.UnmarshalStrict(doc, in.Namespace)
		case "Pod":
			pod = &corev1.Pod{}
			err = yaml.UnmarshalStrict(doc, pod)
		case "MeshConfig":
			var mc braidv1alpha1.MeshConfig
			err = yaml.UnmarshalStrict(doc, &mc)
			in.Mesh = &mc.Spec
		case "":
			continue
		default:
			t.Fatalf("%s: unexpected kind %q", name, meta.Kind)
		}
		if err != nil {
			t.Fatalf("%s: %s: %v", name, meta.Kind, err)
		}
	}
	if pod == nil {
		t.Fatalf("%s has no Pod", name)
	}
	return pod, in
}

func goldenJSON(t *testing.T, res Result) []byte {
	t.Helper()
	raw, err := json.Marshal(struct {
		Skip    Reason `json:"skip"`
		Message string `json:"message"`
		Patch   any    `json:"patch"`
	}{res.Skip, res.Message, res.Patch})
	if err != nil {
		t.Fatal(err)
	}
	return normalizeJSON(t, raw)
}

func normalizeJSON(t *testing.T, raw []byte) []byte {
	t.Helper()
	return golden.JSON(t, raw)
}

func compareGolden(t *testing.T, path string, got []byte) {
	t.Helper()
	golden.Compare(t, path, got, *update, "Inject output", "./internal/inject/")
}

func toYAML(t *testing.T, v any) string {
	t.Helper()
	out, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func names(cs []corev1.Container) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.Name
	}
	return out
}
