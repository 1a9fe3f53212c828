// Package servingcerts tests the operator's own serving certificate as the API server
// sees it: the webhook server presents the certificate the operator signs from the mesh
// CA, the caBundle reconcilers put the mesh trust bundle into the webhook configurations
// (and put it back when someone changes it), configurations another tool injects are
// left alone, and a renewed certificate is served at once.
package servingcerts

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/rest"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/braidmesh/braid/controllers"
	"github.com/braidmesh/braid/internal/ca"
	"github.com/braidmesh/braid/internal/identity"
	"github.com/braidmesh/braid/test/harness"
	"github.com/braidmesh/braid/webhooks"
)

var (
	cfg        *rest.Config
	cl         client.Client
	namespaces atomic.Int32
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	root := harness.RepoRoot()
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(root, "config", "crd", "bases"), filepath.Join(root, "config", "crd", "smi")},
		ErrorIfCRDPathMissing: true,
	}
	var err error
	if cfg, err = env.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "starting the API server (is KUBEBUILDER_ASSETS set?):", err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	scheme, err := controllers.NewScheme()
	if err == nil {
		cl, err = client.New(cfg, client.Options{Scheme: scheme})
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// operator is the part of the operator main.go runs in --webhook-certs=self mode: the
// mesh CA, the serving certificate, the webhook server presenting it, the caBundle
// reconcilers and the validating webhooks.
type operator struct {
	ns      string // the operator's namespace: the CA Secrets and the Service names
	port    int
	clock   *clocktesting.FakeClock
	holder  *ca.Holder
	serving *ca.ServingCert
	logs    *logLines
}

// startOperator runs the operator for the webhook configurations named in names. Its
// clock starts 20 hours in the past, so the certificates it signs after a step of
// (part of) a day are valid in the API server's real time.
func startOperator(ctx context.Context, t *testing.T, names controllers.CABundleOptions) *operator {
	t.Helper()
	op := &operator{ns: testNamespace(ctx, t), port: freePort(t), clock: clocktesting.NewFakeClock(time.Now().Add(-20 * time.Hour)), logs: &logLines{}}
	log := funcr.New(op.logs.add, funcr.Options{Verbosity: 1})
	op.serving = &ca.ServingCert{
		Namespace: op.ns, ServiceAccount: "braid-operator", Clock: op.clock, Log: log.WithName("serving-cert"),
		// The API server calls the webhook at https://localhost:<port>; in a cluster it
		// calls braid-operator.<ns>.svc, which the test checks by handshakes of its own.
		DNSNames: append(ca.ServingDNSNames(op.ns), "localhost"),
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme: cl.Scheme(), Logger: log, Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
		Controller:    config.Controller{SkipNameValidation: ptr.To(true)}, // a manager per test
		WebhookServer: webhook.NewServer(webhook.Options{Host: "127.0.0.1", Port: op.port, TLSOpts: []func(*tls.Config){op.serving.ConfigureTLS}}),
	})
	if err != nil {
		t.Fatal(err)
	}
	if op.holder, err = controllers.SetupIdentity(mgr, controllers.IdentityOptions{Namespace: op.ns, Clock: op.clock}); err != nil {
		t.Fatal(err)
	}
	op.serving.Holder = op.holder
	if err := mgr.Add(op.serving); err != nil {
		t.Fatal(err)
	}
	if err := controllers.SetupCABundles(mgr, op.holder, names); err != nil {
		t.Fatal(err)
	}
	webhooks.Setup(mgr.GetWebhookServer())
	mctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- mgr.Start(mctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("the manager: %v", err)
		}
		if t.Failed() {
			t.Logf("operator logs:\n%s", op.logs)
		}
	})
	return op
}

// The API server calls the validating webhook over TLS, trusting the caBundle the
// operator wrote: an invalid TrafficSplit is refused with the webhook's message (the
// webhook fails open, so an untrusted certificate would let it through). A caBundle
// changed by someone else is put back; the injector's configuration gets the bundle too.
func TestAPIServerTrustsTheOperatorsWebhookCertificate(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	names := controllers.CABundleOptions{ValidatingWebhookConfiguration: "trust-validation", MutatingWebhookConfiguration: "trust-injector"}
	op := startOperator(ctx, t, names)
	vwc, mwc := webhookConfigurations(t, names, op.port)
	create(ctx, t, vwc, mwc)

	waitRefused(ctx, t, op.ns)
	bundle := op.holder.TrustBundle()
	if got := validatingBundles(ctx, t, vwc.Name); len(got) != 2 || !bytes.Equal(got[0], bundle) || !bytes.Equal(got[1], bundle) {
		t.Fatalf("the validating webhooks' caBundles are not the mesh trust bundle")
	}
	waitMutatingBundle(ctx, t, mwc.Name, bundle)
	if err := cl.Create(ctx, splitIn(op.ns, "web-v1", "web-v2"), client.DryRunAll); err != nil {
		t.Fatalf("a valid TrafficSplit was refused: %v", err)
	}
	// In a cluster the API server calls braid-operator.<ns>.svc: the certificate is for it.
	leaf := handshake(t, op.port, "braid-operator."+op.ns+".svc", bundle)
	if leaf.URIs[0].String() != "spiffe://cluster.local/ns/"+op.ns+"/sa/braid-operator" {
		t.Errorf("the webhook certificate's SPIFFE ID is %v", leaf.URIs)
	}

	// Someone puts another CA into the first webhook: the operator puts the bundle back
	// and keeps the webhook's other fields.
	other := otherRoot(t)
	patch := fmt.Sprintf(`[{"op":"replace","path":"/webhooks/0/clientConfig/caBundle","value":%q},{"op":"replace","path":"/webhooks/0/timeoutSeconds","value":7}]`,
		encode(other))
	if err := cl.Patch(ctx, &admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: vwc.Name}},
		client.RawPatch(types.JSONPatchType, []byte(patch))); err != nil {
		t.Fatal(err)
	}
	for {
		var got admissionregistrationv1.ValidatingWebhookConfiguration
		if err := cl.Get(ctx, client.ObjectKey{Name: vwc.Name}, &got); err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(got.Webhooks[0].ClientConfig.CABundle, bundle) {
			if *got.Webhooks[0].TimeoutSeconds != 7 {
				t.Errorf("the operator changed timeoutSeconds back to %d: it may patch the caBundle only", *got.Webhooks[0].TimeoutSeconds)
			}
			break
		}
		wait(ctx, t, "the tampered caBundle to be restored")
	}
	waitRefused(ctx, t, op.ns)
}

// The serving certificate is renewed at two thirds of its lifetime on the operator's
// clock (a fake one: no waiting), and the webhook server presents the new one at the next
// handshake, still trusted through the caBundle the API server holds.
func TestWebhookCertificateRenewal(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	names := controllers.CABundleOptions{ValidatingWebhookConfiguration: "renew-validation"}
	op := startOperator(ctx, t, names)
	vwc, _ := webhookConfigurations(t, names, op.port)
	create(ctx, t, vwc)
	waitRefused(ctx, t, op.ns)

	bundle := validatingBundles(ctx, t, vwc.Name)[0]
	first := handshake(t, op.port, "braid-operator."+op.ns+".svc", bundle)
	for !op.clock.HasWaiters() { // the serving certificate's renewal timer
		wait(ctx, t, "the serving certificate to wait for its renewal")
	}
	life := first.NotAfter.Sub(first.NotBefore)
	op.clock.Step(life*2/3 + time.Minute)
	for {
		second := handshake(t, op.port, "braid-operator."+op.ns+".svc", bundle)
		if !second.Equal(first) {
			if !second.NotBefore.After(first.NotBefore) {
				t.Fatalf("the renewed certificate starts %v, not after the first (%v)", second.NotBefore, first.NotBefore)
			}
			break
		}
		wait(ctx, t, "the webhook server to present the renewed certificate")
	}
	waitRefused(ctx, t, op.ns)
}

// When the mesh's root changes (here: the operator's root Secret deleted, so a new root
// is made), the caBundle follows, and the serving certificate chains to the new root.
func TestCABundleFollowsTheTrustBundle(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	names := controllers.CABundleOptions{ValidatingWebhookConfiguration: "follow-validation"}
	op := startOperator(ctx, t, names)
	vwc, _ := webhookConfigurations(t, names, op.port)
	create(ctx, t, vwc)
	waitRefused(ctx, t, op.ns)
	before := op.holder.TrustBundle()

	for _, name := range []string{controllers.RootSecretName, controllers.IssuerSecretName} {
		if err := cl.Delete(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: op.ns, Name: name}}); err != nil {
			t.Fatal(err)
		}
	}
	for bytes.Equal(op.holder.TrustBundle(), before) {
		wait(ctx, t, "a new root")
	}
	after := op.holder.TrustBundle()
	for !bytes.Equal(validatingBundles(ctx, t, vwc.Name)[0], after) {
		wait(ctx, t, "the caBundle to follow the new root")
	}
	for {
		if _, err := tryHandshake(op.port, "braid-operator."+op.ns+".svc", after); err == nil {
			break
		}
		wait(ctx, t, "the serving certificate to chain to the new root")
	}
	waitRefused(ctx, t, op.ns)
}

// A configuration another tool injects its CA into (cert-manager's annotations, OLM's
// owner label) keeps its caBundle, and the operator says why; once the mark is gone the
// operator keeps it.
func TestCABundleLeavesInjectedConfigurationsAlone(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	names := controllers.CABundleOptions{ValidatingWebhookConfiguration: "olm-validation", MutatingWebhookConfiguration: "certmanager-injector"}
	foreign := otherRoot(t)
	vwc, mwc := webhookConfigurations(t, names, freePort(t))
	vwc.Labels = map[string]string{"olm.owner": "braid.v0.1.0", "olm.owner.kind": "ClusterServiceVersion"}
	for i := range vwc.Webhooks {
		vwc.Webhooks[i].ClientConfig.CABundle = foreign
	}
	mwc.Annotations = map[string]string{"cert-manager.io/inject-ca-from": "braid-system/braid-webhook"}
	mwc.Webhooks[0].ClientConfig.CABundle = foreign
	create(ctx, t, vwc, mwc)

	op := startOperator(ctx, t, names)
	for !op.logs.contains("caBundle left alone", `"name"="olm-validation"`, `"mark"="olm.owner"`) ||
		!op.logs.contains("caBundle left alone", `"name"="certmanager-injector"`, `"mark"="cert-manager.io/inject-ca-from"`) {
		wait(ctx, t, "the operator to decide on both configurations")
	}
	if got := validatingBundles(ctx, t, vwc.Name); !bytes.Equal(got[0], foreign) || !bytes.Equal(got[1], foreign) {
		t.Error("the OLM-owned validating configuration's caBundle was changed")
	}
	var m admissionregistrationv1.MutatingWebhookConfiguration
	if err := cl.Get(ctx, client.ObjectKey{Name: mwc.Name}, &m); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m.Webhooks[0].ClientConfig.CABundle, foreign) {
		t.Error("the cert-manager-injected mutating configuration's caBundle was changed")
	}

	patch := []byte(`{"metadata":{"annotations":{"cert-manager.io/inject-ca-from":null}}}`)
	if err := cl.Patch(ctx, &m, client.RawPatch(types.MergePatchType, patch)); err != nil {
		t.Fatal(err)
	}
	waitMutatingBundle(ctx, t, mwc.Name, op.holder.TrustBundle())
}

// Each mark alone holds the reconciler back (Reconcile called directly).
func TestCABundleMarks(t *testing.T) {
	ctx := t.Context()
	holder := &ca.Holder{}
	holder.Store(state(t))
	foreign := otherRoot(t)
	for name, mark := range map[string]func(*admissionregistrationv1.MutatingWebhookConfiguration){
		"inject-ca-from": func(c *admissionregistrationv1.MutatingWebhookConfiguration) {
			c.Annotations = map[string]string{"cert-manager.io/inject-ca-from": "ns/cert"}
		},
		"inject-ca-from-secret": func(c *admissionregistrationv1.MutatingWebhookConfiguration) {
			c.Annotations = map[string]string{"cert-manager.io/inject-ca-from-secret": "ns/secret"}
		},
		"inject-apiserver-ca": func(c *admissionregistrationv1.MutatingWebhookConfiguration) {
			c.Annotations = map[string]string{"cert-manager.io/inject-apiserver-ca": "true"}
		},
		"olm-owner": func(c *admissionregistrationv1.MutatingWebhookConfiguration) {
			c.Labels = map[string]string{"olm.owner": "braid.v0.1.0"}
		},
		"none": func(*admissionregistrationv1.MutatingWebhookConfiguration) {},
	} {
		t.Run(name, func(t *testing.T) {
			_, mwc := webhookConfigurations(t, controllers.CABundleOptions{MutatingWebhookConfiguration: "marks-" + name}, 1)
			mark(mwc)
			mwc.Webhooks[0].ClientConfig.CABundle = foreign
			create(ctx, t, mwc)
			r := &controllers.CABundleReconciler{Client: cl, Reader: cl, Holder: holder,
				NewObject: func() client.Object { return &admissionregistrationv1.MutatingWebhookConfiguration{} }}
			if _, err := r.Reconcile(ctx, reconcile.Request{NamespacedName: types.NamespacedName{Name: mwc.Name}}); err != nil {
				t.Fatal(err)
			}
			var got admissionregistrationv1.MutatingWebhookConfiguration
			if err := cl.Get(ctx, client.ObjectKey{Name: mwc.Name}, &got); err != nil {
				t.Fatal(err)
			}
			want := foreign
			if name == "none" {
				want = holder.TrustBundle()
			}
			if !bytes.Equal(got.Webhooks[0].ClientConfig.CABundle, want) {
				t.Errorf("caBundle %.60q, want %.60q", got.Webhooks[0].ClientConfig.CABundle, want)
			}
		})
	}
}

// webhookConfigurations are Braid's generated webhook configurations (config/webhook),
// named as names says and pointing at https://localhost:<port> instead of the Service.
func webhookConfigurations(t *testing.T, names controllers.CABundleOptions, port int) (*admissionregistrationv1.ValidatingWebhookConfiguration, *admissionregistrationv1.MutatingWebhookConfiguration) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(harness.RepoRoot(), "config", "webhook", "manifests.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var (
		vwc admissionregistrationv1.ValidatingWebhookConfiguration
		mwc admissionregistrationv1.MutatingWebhookConfiguration
	)
	url := func(cc *admissionregistrationv1.WebhookClientConfig) {
		u := "https://localhost:" + strconv.Itoa(port) + *cc.Service.Path
		cc.Service, cc.URL = nil, &u
	}
	for doc := range strings.SplitSeq(string(data), "\n---") {
		var into any
		switch {
		case strings.Contains(doc, "kind: ValidatingWebhookConfiguration"):
			into = &vwc
		case strings.Contains(doc, "kind: MutatingWebhookConfiguration"):
			into = &mwc
		default:
			continue
		}
		if err := yaml.Unmarshal([]byte(doc), into); err != nil {
			t.Fatal(err)
		}
	}
	vwc.Name, mwc.Name = names.ValidatingWebhookConfiguration, names.MutatingWebhookConfiguration
	for i := range vwc.Webhooks {
		url(&vwc.Webhooks[i].ClientConfig)
	}
	for i := range mwc.Webhooks {
		url(&mwc.Webhooks[i].ClientConfig)
		// No pod is created here; still, never let this injector see one.
		mwc.Webhooks[i].NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"braid.test/never": "true"}}
	}
	if len(vwc.Webhooks) != 2 || len(mwc.Webhooks) != 1 {
		t.Fatalf("config/webhook/manifests.yaml has %d validating and %d mutating webhooks, want 2 and 1", len(vwc.Webhooks), len(mwc.Webhooks))
	}
	return &vwc, &mwc
}

func create(ctx context.Context, t *testing.T, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := cl.Create(ctx, o); err != nil {
			t.Fatalf("creating %T %s: %v", o, o.GetName(), err)
		}
		t.Cleanup(func() { _ = cl.Delete(context.WithoutCancel(ctx), o) })
	}
}

func testNamespace(ctx context.Context, t *testing.T) string {
	t.Helper()
	name := strings.ToLower(t.Name())
	if len(name) > 50 {
		name = name[:50]
	}
	name += "-" + strconv.Itoa(int(namespaces.Add(1))) // -count=N runs again; envtest never removes a namespace
	if err := cl.Create(ctx, harness.Namespace(name)); err != nil {
		t.Fatal(err)
	}
	return name
}

// splitIn is a TrafficSplit of web in ns over backends.
func splitIn(ns string, backends ...string) client.Object {
	ws := make([]harness.Weighted, 0, len(backends))
	for _, b := range backends {
		ws = append(ws, harness.Weighted{Service: b, Weight: 1})
	}
	return harness.TrafficSplit("split.smi-spec.io/v1alpha4", ns, "web", "web", ws...)
}

// waitRefused waits until the API server refuses, through the webhook, a TrafficSplit
// listing a backend twice.
func waitRefused(ctx context.Context, t *testing.T, ns string) {
	t.Helper()
	for {
		err := cl.Create(ctx, splitIn(ns, "web-v1", "web-v1"), client.DryRunAll)
		if err != nil && strings.Contains(err.Error(), "vtrafficsplit.braid.dev") && strings.Contains(err.Error(), "list each backend once") {
			return
		}
		if err != nil && !strings.Contains(err.Error(), "vtrafficsplit.braid.dev") {
			t.Fatalf("creating the TrafficSplit: %v", err)
		}
		wait(ctx, t, "the webhook to refuse a TrafficSplit with a backend twice")
	}
}

func validatingBundles(ctx context.Context, t *testing.T, name string) [][]byte {
	t.Helper()
	var c admissionregistrationv1.ValidatingWebhookConfiguration
	if err := cl.Get(ctx, client.ObjectKey{Name: name}, &c); err != nil {
		t.Fatal(err)
	}
	out := make([][]byte, 0, len(c.Webhooks))
	for _, w := range c.Webhooks {
		out = append(out, w.ClientConfig.CABundle)
	}
	return out
}

func waitMutatingBundle(ctx context.Context, t *testing.T, name string, want []byte) {
	t.Helper()
	for {
		var c admissionregistrationv1.MutatingWebhookConfiguration
		if err := cl.Get(ctx, client.ObjectKey{Name: name}, &c); err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(c.Webhooks[0].ClientConfig.CABundle, want) {
			return
		}
		wait(ctx, t, "the mutating configuration's caBundle to be the trust bundle")
	}
}

// handshake connects to the webhook server as serverName, verifying against bundle.
func handshake(t *testing.T, port int, serverName string, bundle []byte) *x509.Certificate {
	t.Helper()
	leaf, err := tryHandshake(port, serverName, bundle)
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

func tryHandshake(port int, serverName string, bundle []byte) (*x509.Certificate, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(bundle) {
		return nil, fmt.Errorf("no certificate in the bundle")
	}
	conn, err := tls.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), &tls.Config{ServerName: serverName, RootCAs: pool, MinVersion: tls.VersionTLS12})
	if err != nil {
		return nil, err
	}
	defer func() { _ = conn.Close() }()
	return conn.ConnectionState().PeerCertificates[0], nil
}

func state(t *testing.T) *ca.State {
	t.Helper()
	now := time.Now()
	root, err := identity.NewRoot("cluster.local", now, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := identity.NewIssuer(root, nil, []*x509.Certificate{root.Cert}, "cluster.local", now)
	if err != nil {
		t.Fatal(err)
	}
	return &ca.State{Issuer: iss, Roots: []*x509.Certificate{root.Cert}, Bundle: root.CertPEM, WorkloadLifetime: time.Hour}
}

// otherRoot is the PEM of a root that is not the mesh's.
func otherRoot(t *testing.T) []byte {
	t.Helper()
	root, err := identity.NewRoot("other.example", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return root.CertPEM
}

// encode is b as the API's JSON carries a []byte.
func encode(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func freePort(t *testing.T) int {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lis.Close() }()
	return lis.Addr().(*net.TCPAddr).Port
}

func wait(ctx context.Context, t *testing.T, what string) {
	t.Helper()
	select {
	case <-ctx.Done():
		t.Fatalf("timed out waiting for %s", what)
	case <-time.After(20 * time.Millisecond):
	}
}

// logLines records the operator's log lines.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) add(prefix, args string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, prefix+" "+args)
}

// contains reports whether one line holds every part.
func (l *logLines) contains(parts ...string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return true
		}
	}
	return false
}

func (l *logLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}
