// Package clusterkit is what the cluster e2e (hack/e2e-cluster) and the cluster demo
// (hack/cluster-demo) share: a client of the cluster `braid up` starts, server-side apply
// of YAML, waits, the demo's manifests, and measuring a split from real requests.
package clusterkit

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	neturl "net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
)

// StateDir is where braid up keeps the cluster (its --state-dir default).
const StateDir = "/var/lib/braid-cluster"

// Kit is a client of the local cluster.
type Kit struct {
	CS         kubernetes.Interface
	Dyn        dynamic.Interface
	mapper     meta.ResettableRESTMapper
	Kubeconfig string
	Kubectl    string
}

// New connects to the cluster of $KUBECONFIG, else the one braid up started. kubectl is
// $KUBECTL, else the one built beside the cluster's binaries, else the one on PATH.
func New() (*Kit, error) {
	kubeconfig := cmp.Or(os.Getenv("KUBECONFIG"), filepath.Join(StateDir, "admin.kubeconfig"))
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("reading %s (is the cluster up? make up): %w", kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, err
	}
	kubectl := os.Getenv("KUBECTL")
	if kubectl == "" {
		if b, err := os.ReadFile(filepath.Join(StateDir, "bin-dir")); err == nil {
			kubectl = filepath.Join(strings.TrimSpace(string(b)), "kubectl")
		} else {
			kubectl = "kubectl"
		}
	}
	return &Kit{CS: cs, Dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc)),
		Kubeconfig: kubeconfig, Kubectl: kubectl}, nil
}

// Apply server-side applies every object of the YAML documents in manifests.
func (k *Kit) Apply(ctx context.Context, manifests string) error {
	return k.each(manifests, func(u *unstructured.Unstructured, ri dynamic.ResourceInterface) error {
		b, err := json.Marshal(u)
		if err != nil {
			return err
		}
		force := true
		_, err = ri.Patch(ctx, u.GetName(), types.ApplyPatchType, b, metav1.PatchOptions{FieldManager: "braid-cluster-kit", Force: &force})
		return err
	})
}

// Delete deletes every object of the YAML documents in manifests; missing ones are fine.
func (k *Kit) Delete(ctx context.Context, manifests string) error {
	return k.each(manifests, func(u *unstructured.Unstructured, ri dynamic.ResourceInterface) error {
		if err := ri.Delete(ctx, u.GetName(), metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		return nil
	})
}

func (k *Kit) each(manifests string, fn func(*unstructured.Unstructured, dynamic.ResourceInterface) error) error {
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(manifests), 4096)
	for {
		var obj map[string]any
		if err := dec.Decode(&obj); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return err
		}
		if len(obj) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: obj}
		gvk := u.GroupVersionKind()
		m, err := k.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			k.mapper.Reset() // a CRD installed since the last discovery
			if m, err = k.mapper.RESTMapping(gvk.GroupKind(), gvk.Version); err != nil {
				return fmt.Errorf("%s %s: %w", gvk.Kind, u.GetName(), err)
			}
		}
		var ri dynamic.ResourceInterface = k.Dyn.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			ri = k.Dyn.Resource(m.Resource).Namespace(u.GetNamespace())
		}
		if err := fn(u, ri); err != nil {
			return fmt.Errorf("%s %s/%s: %w", gvk.Kind, u.GetNamespace(), u.GetName(), err)
		}
	}
}

// Run runs kubectl with the kit's kubeconfig and returns its combined output.
func (k *Kit) Run(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, k.Kubectl, append([]string{"--kubeconfig", k.Kubeconfig}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// Eventually calls fn every interval until it returns nil or timeout passes, and then
// returns fn's last error.
func Eventually(ctx context.Context, timeout, interval time.Duration, fn func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		err := fn()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("after %s: %w", timeout, err)
		case <-time.After(interval):
		}
	}
}

// ReadyPods waits until n pods match selector in ns, all Running and Ready, and returns them.
func (k *Kit) ReadyPods(ctx context.Context, ns, selector string, n int, timeout time.Duration) ([]corev1.Pod, error) {
	var pods []corev1.Pod
	err := Eventually(ctx, timeout, 250*time.Millisecond, func() error {
		list, err := k.CS.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return err
		}
		pods = pods[:0]
		for _, p := range list.Items {
			if p.DeletionTimestamp == nil {
				pods = append(pods, p)
			}
		}
		if len(pods) != n {
			return fmt.Errorf("%d pods match %s in %s, want %d", len(pods), selector, ns, n)
		}
		for _, p := range pods {
			if !PodReady(&p) {
				return fmt.Errorf("pod %s/%s is %s, not Ready: %s", ns, p.Name, p.Status.Phase, waiting(&p))
			}
		}
		return nil
	})
	return pods, err
}

// PodReady says whether the pod's Ready condition is True.
func PodReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func waiting(p *corev1.Pod) string {
	var why []string
	for _, s := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		switch {
		case s.State.Waiting != nil:
			why = append(why, fmt.Sprintf("%s waiting (%s: %s)", s.Name, s.State.Waiting.Reason, s.State.Waiting.Message))
		case s.State.Terminated != nil && s.State.Terminated.ExitCode != 0:
			why = append(why, fmt.Sprintf("%s exited %d (%s)", s.Name, s.State.Terminated.ExitCode, s.State.Terminated.Message))
		case !s.Ready:
			why = append(why, s.Name+" not ready")
		}
	}
	return strings.Join(why, "; ")
}

// Result is what the demo app's /call returns: how many answers came from each version.
type Result struct {
	URL    string         `json:"url"`
	Counts map[string]int `json:"counts"`
	Errors int            `json:"errors"`
	Error  string         `json:"error"`
	// Last is the last answer: who answered, and the caller's identity it was told.
	Last struct {
		Version string `json:"version"`
		Pod     string `json:"pod"`
		Client  string `json:"client"`
	} `json:"last"`
}

// Share is the fraction of answers from version.
func (r Result) Share(version string) float64 {
	total := 0
	for _, c := range r.Counts {
		total += c
	}
	if total == 0 {
		return 0
	}
	return float64(r.Counts[version]) / float64(total)
}

// Call asks the demo app at podIP to call url (its $UPSTREAM when empty) n times, through
// its sidecar, and returns the versions that answered. The host reaches pod IPs through
// the cluster's bridge.
func Call(ctx context.Context, podIP, url string, n int) (Result, error) {
	return CallWithHeaders(ctx, podIP, url, n)
}

// CallWithHeaders is Call with request headers, each "Name:Value", on every call.
func CallWithHeaders(ctx context.Context, podIP, url string, n int, headers ...string) (Result, error) {
	q := fmt.Sprintf("http://%s:8080/call?n=%d", podIP, n)
	if url != "" {
		q += "&url=" + neturl.QueryEscape(url)
	}
	for _, h := range headers {
		q += "&header=" + neturl.QueryEscape(h)
	}
	var r Result
	return r, getJSON(ctx, q, &r)
}

// TCPResult is what the demo app's /tcp returns.
type TCPResult struct {
	Addr   string `json:"addr"`
	OK     int    `json:"ok"`
	Errors int    `json:"errors"`
	Error  string `json:"error"`
	// Banner is the last banner the server sent first: "<service> <version> <pod>".
	Banner string `json:"banner"`
}

// TCPCall asks the demo app at podIP to open n TCP connections to addr (host:port),
// through its sidecar; on each the server must speak first and then echo a line.
func TCPCall(ctx context.Context, podIP, addr string, n int) (TCPResult, error) {
	var r TCPResult
	return r, getJSON(ctx, fmt.Sprintf("http://%s:8080/tcp?n=%d&addr=%s", podIP, n, neturl.QueryEscape(addr)), &r)
}

func getJSON(ctx context.Context, q string, into any) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, q, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", q, resp.Status, bytes.TrimSpace(b))
	}
	if err := json.Unmarshal(b, into); err != nil {
		return fmt.Errorf("GET %s: %w: %s", q, err, b)
	}
	return nil
}
