package operator

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/braidmesh/braid/controllers"
	"github.com/braidmesh/braid/internal/identity"
	"github.com/braidmesh/braid/test/harness"
)

// With --webhook-certs=self the binary serves its webhooks with the certificate it signs
// from the mesh CA for braid-operator.braid-system.svc, the one its identity server
// presents too, and writes the mesh root into the caBundle of Braid's webhook
// configurations (as config/webhook names them).
func TestOperatorBinarySelfSignedWebhooks(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	env, cfg := startAPIServer(t)
	c := newClient(t, cfg)
	for _, obj := range append([]client.Object{harness.Namespace("braid-system")}, installedWebhookConfigurations(t)...) {
		if err := c.Create(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}

	addrs := freeAddrs(t, 5)
	webhookAddr, identityAddr := addrs[3], addrs[4]
	_, port, _ := strings.Cut(webhookAddr, ":")
	op := startOperatorWith(t, buildOperator(ctx, t), writeKubeconfig(t, env, cfg), addrs[:3],
		"--identity-server-address", identityAddr, "--webhook-certs", "self", "--webhook-port", port)

	bundle := waitCABundles(ctx, t, c)
	roots, err := identity.ParseCertificates(bundle)
	if err != nil {
		t.Fatal(err)
	}
	var rootSecret corev1.Secret
	if err := c.Get(ctx, client.ObjectKey{Namespace: "braid-system", Name: controllers.RootSecretName}, &rootSecret); err != nil {
		t.Fatal(err)
	}
	if root, err := identity.ParseCertificates(rootSecret.Data[corev1.TLSCertKey]); err != nil || len(roots) != 1 || !roots[0].Equal(root[0]) {
		t.Fatalf("the caBundle is not the mesh root of Secret %s (%v)", controllers.RootSecretName, err)
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	tlsConfig := &tls.Config{ServerName: "braid-operator.braid-system.svc", RootCAs: pool, MinVersion: tls.VersionTLS12}
	webhookLeaf := dialLeaf(ctx, t, webhookAddr, tlsConfig)
	if identityLeaf := dialLeaf(ctx, t, identityAddr, tlsConfig); !identityLeaf.Equal(webhookLeaf) {
		t.Error("the identity server and the webhook server present different certificates")
	}
	if !strings.Contains(op.logs.String(), `"certificate":"self"`) {
		t.Error("the operator did not log that it serves the webhooks with its own certificate")
	}
	op.stop(t)
}

// startOperatorWith runs the binary with metrics, probe and config server on addrs and
// the extra arguments.
func startOperatorWith(t *testing.T, bin, kubeconfig string, addrs []string, args ...string) *operator {
	t.Helper()
	op := &operator{metricsAddr: addrs[0], probeAddr: addrs[1], configAddr: addrs[2], exited: make(chan error, 1), logs: &harness.LogBuffer{}}
	op.cmd = exec.Command(bin, append([]string{"--metrics-bind-address", op.metricsAddr, "--health-probe-bind-address", op.probeAddr,
		"--config-server-address", op.configAddr}, args...)...)
	op.cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	op.cmd.Stdout, op.cmd.Stderr = op.logs, op.logs
	op.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := op.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { op.exited <- op.cmd.Wait() }()
	t.Cleanup(func() {
		_ = op.cmd.Process.Kill()
		if t.Failed() {
			t.Logf("operator logs:\n%s", op.logs.String())
		}
	})
	return op
}

// waitCABundles waits until every webhook of braid-smi-validation and braid-injector has
// the same caBundle, and returns it.
func waitCABundles(ctx context.Context, t *testing.T, c client.Client) []byte {
	t.Helper()
	for {
		var v admissionregistrationv1.ValidatingWebhookConfiguration
		var m admissionregistrationv1.MutatingWebhookConfiguration
		if err := c.Get(ctx, client.ObjectKey{Name: controllers.DefaultValidatingWebhookConfiguration}, &v); err != nil {
			t.Fatal(err)
		}
		if err := c.Get(ctx, client.ObjectKey{Name: controllers.DefaultMutatingWebhookConfiguration}, &m); err != nil {
			t.Fatal(err)
		}
		bundle := v.Webhooks[0].ClientConfig.CABundle
		if len(bundle) > 0 && bytes.Equal(v.Webhooks[1].ClientConfig.CABundle, bundle) && bytes.Equal(m.Webhooks[0].ClientConfig.CABundle, bundle) {
			return bundle
		}
		select {
		case <-ctx.Done():
			t.Fatal("the operator did not write the caBundle of braid-smi-validation and braid-injector")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// installedWebhookConfigurations are config/webhook's configurations as kustomize
// installs them: named braid-smi-validation and braid-injector, calling the Service
// braid-operator in braid-system (which the API server cannot reach here).
func installedWebhookConfigurations(t *testing.T) []client.Object {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(harness.RepoRoot(), "config", "webhook", "manifests.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var (
		v admissionregistrationv1.ValidatingWebhookConfiguration
		m admissionregistrationv1.MutatingWebhookConfiguration
	)
	for doc := range strings.SplitSeq(string(data), "\n---") {
		var into any
		switch {
		case strings.Contains(doc, "kind: ValidatingWebhookConfiguration"):
			into = &v
		case strings.Contains(doc, "kind: MutatingWebhookConfiguration"):
			into = &m
		default:
			continue
		}
		if err := yaml.Unmarshal([]byte(doc), into); err != nil {
			t.Fatal(err)
		}
	}
	v.Name, m.Name = controllers.DefaultValidatingWebhookConfiguration, controllers.DefaultMutatingWebhookConfiguration
	for i := range v.Webhooks {
		v.Webhooks[i].ClientConfig.Service.Name, v.Webhooks[i].ClientConfig.Service.Namespace = "braid-operator", "braid-system"
	}
	for i := range m.Webhooks {
		m.Webhooks[i].ClientConfig.Service.Name, m.Webhooks[i].ClientConfig.Service.Namespace = "braid-operator", "braid-system"
		m.Webhooks[i].NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"braid.test/never": "true"}}
	}
	return []client.Object{&v, &m}
}

// dialLeaf waits until addr completes a TLS handshake verified by cfg and returns the
// server's certificate.
func dialLeaf(ctx context.Context, t *testing.T, addr string, cfg *tls.Config) *x509.Certificate {
	t.Helper()
	for {
		conn, err := tls.Dial("tcp", addr, cfg)
		if err == nil {
			leaf := conn.ConnectionState().PeerCertificates[0]
			_ = conn.Close()
			return leaf
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no verified TLS handshake with %s: %v", addr, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
