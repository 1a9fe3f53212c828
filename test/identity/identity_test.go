// Package identity tests workload identity end to end: the operator's certificate
// controller creates the mesh CA in a real API server, its identity service serves over
// TLS with real TokenReview, and the proxy's identity client gets, renews and keeps its
// certificate.
package identity

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	"go.uber.org/zap/zapcore"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/braidmesh/braid/controllers"
	"github.com/braidmesh/braid/internal/ca"
	internalidentity "github.com/braidmesh/braid/internal/identity"
	"github.com/braidmesh/braid/proxy/identity"
	"github.com/braidmesh/braid/proxy/tlsid"
	"github.com/braidmesh/braid/test/harness"
)

const (
	operatorNS = "braid-system"
	appNS      = "shop"
	appSA      = "web"
)

// operator runs the certificate controller and the identity server, as main.go does,
// against cp; it returns the Holder and the identity server's address.
func operator(ctx context.Context, t *testing.T, cp *harness.ControlPlane) (*ca.Holder, string) {
	t.Helper()
	scheme, err := controllers.NewScheme()
	if err != nil {
		t.Fatal(err)
	}
	mgr, err := ctrl.NewManager(cp.RestConfig, ctrl.Options{Scheme: scheme, Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0"})
	if err != nil {
		t.Fatal(err)
	}
	holder, err := controllers.SetupIdentity(mgr, controllers.IdentityOptions{Namespace: operatorNS})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.AddServer(mgr, holder, ca.ServerOptions{Namespace: operatorNS, ServiceAccount: "braid-operator", Listener: lis}); err != nil {
		t.Fatal(err)
	}
	mctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- mgr.Start(mctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("the operator's manager: %v", err)
		}
	})
	return holder, lis.Addr().String()
}

func TestWorkloadIdentityEndToEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cp, err := harness.StartControlPlane(ctx, zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.ErrorLevel)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Stop() })
	mesh := harness.Namespace(appNS)
	mesh.Labels = map[string]string{"braid.dev/inject": "enabled"}
	for _, o := range []client.Object{harness.Namespace(operatorNS), mesh, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: appNS, Name: appSA}}} {
		if err := cp.Client.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	_, addr := operator(ctx, t, cp)

	// What the kubelet mounts into the pod: the trust bundle ConfigMap and a projected token.
	dir := t.TempDir()
	bundleFile, tokenFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "token")
	writeFile(t, bundleFile, []byte(waitTrustBundle(ctx, t, cp.Client)))
	token := requestToken(ctx, t, cp.Client)
	writeFile(t, tokenFile, []byte(token))

	clk := clocktesting.NewFakeClock(time.Now())
	failures := make(chan string, 16)
	store := &tlsid.Store{}
	c := &identity.Client{
		Address: addr, ServerName: "braid-operator." + operatorNS + ".svc",
		TokenFile: tokenFile, TrustBundleFile: bundleFile,
		TrustDomain: "cluster.local", Namespace: appNS, ServiceAccount: appSA,
		Store: store, Log: failureLog(t, failures), Clock: clk,
		MinBackoff: time.Second, MaxBackoff: 4 * time.Second,
		Random: func() float64 { return 0.5 }, // no jitter: renewal at exactly 70%
	}
	runDone := make(chan error, 1)
	go func() { runDone <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-runDone; err != nil {
			t.Errorf("the identity client: %v", err)
		}
	})

	// The first certificate: exactly the ServiceAccount's SPIFFE ID, chaining to the root
	// in the operator's Secret.
	select {
	case <-c.Ready():
	case <-ctx.Done():
		t.Fatal("the proxy got no certificate")
	}
	const want = "spiffe://cluster.local/ns/shop/sa/web"
	if got := store.ID(); got != want {
		t.Fatalf("the store holds %q, want %q", got, want)
	}
	first := store.Certificate()
	checkChainsToRoot(ctx, t, cp.Client, first)
	lifetime := first.Leaf.NotAfter.Sub(clk.Now())

	// Renewal at 70% of the lifetime, not before.
	waitWaiters(ctx, t, clk, 1)
	clk.Step(lifetime * 69 / 100)
	if !clk.HasWaiters() {
		t.Fatal("the client renewed before 70% of the certificate's lifetime")
	}
	clk.Step(lifetime * 2 / 100)
	second := waitCertChange(ctx, t, store, first)
	checkChainsToRoot(ctx, t, cp.Client, second)
	if second.Leaf.PublicKey.(*ecdsa.PublicKey).Equal(first.Leaf.PublicKey) {
		t.Error("the renewed certificate reuses the old key: every renewal should make a fresh one")
	}

	// A failing request (the token no longer authenticates) keeps the certificate in use
	// and retries with backoff; once the token is good again, the retry succeeds.
	writeFile(t, tokenFile, []byte("not-a-token"))
	waitWaiters(ctx, t, clk, 1)
	clk.Step(second.Leaf.NotAfter.Sub(clk.Now()) * 71 / 100)
	select {
	case msg := <-failures:
		if !strings.Contains(msg, "Unauthenticated") {
			t.Errorf("the renewal failed for another reason than the token: %s", msg)
		}
	case <-ctx.Done():
		t.Fatal("the renewal with a bad token did not fail")
	}
	if store.Certificate() != second {
		t.Fatal("a failed renewal replaced the certificate")
	}
	writeFile(t, tokenFile, []byte(token))
	waitWaiters(ctx, t, clk, 1)
	clk.Step(time.Second) // the first backoff
	third := waitCertChange(ctx, t, store, second)
	if third.Leaf.NotAfter.Before(second.Leaf.NotAfter) {
		t.Error("the retried renewal returned an older certificate")
	}

	checkNoWorkloadKeyInAPI(ctx, t, cp.Client, first, second, third)
}

// checkChainsToRoot checks the certificate chains, through the chain it carries, to the
// root in the Secret braid-ca-root, for both client and server authentication.
func checkChainsToRoot(ctx context.Context, t *testing.T, c client.Client, cert *tls.Certificate) {
	t.Helper()
	var sec corev1.Secret
	if err := c.Get(ctx, client.ObjectKey{Namespace: operatorNS, Name: controllers.RootSecretName}, &sec); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(sec.Data["tls.crt"]) {
		t.Fatal("the root Secret holds no certificate")
	}
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		ic, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		inter.AddCert(ic)
	}
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Fatalf("the workload certificate does not chain to the root in %s: %v", controllers.RootSecretName, err)
	}
	if len(cert.Leaf.URIs) != 1 || len(cert.Leaf.DNSNames) != 0 || len(cert.Leaf.IPAddresses) != 0 {
		t.Fatalf("the workload certificate names %v %v %v, want the one SPIFFE ID", cert.Leaf.URIs, cert.Leaf.DNSNames, cert.Leaf.IPAddresses)
	}
}

// checkNoWorkloadKeyInAPI: the only Secrets with keys are the CA's, and no object
// holds a workload key.
func checkNoWorkloadKeyInAPI(ctx context.Context, t *testing.T, c client.Client, certs ...*tls.Certificate) {
	t.Helper()
	var keys [][]byte
	for _, cert := range certs {
		der, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, der, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	}
	var secrets corev1.SecretList
	if err := c.List(ctx, &secrets); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range secrets.Items {
		names = append(names, s.Namespace+"/"+s.Name)
		for _, v := range s.Data {
			for _, k := range keys {
				if bytes.Contains(v, k) {
					t.Errorf("Secret %s/%s holds a workload private key", s.Namespace, s.Name)
				}
			}
		}
	}
	slices.Sort(names)
	if want := []string{operatorNS + "/" + controllers.IssuerSecretName, operatorNS + "/" + controllers.RootSecretName}; !slices.Equal(names, want) {
		t.Errorf("Secrets in the API: %v, want only the CA's %v", names, want)
	}
	var cms corev1.ConfigMapList
	if err := c.List(ctx, &cms); err != nil {
		t.Fatal(err)
	}
	for _, cm := range cms.Items {
		for _, v := range cm.Data {
			if strings.Contains(v, "PRIVATE KEY") {
				t.Errorf("ConfigMap %s/%s holds a private key", cm.Namespace, cm.Name)
			}
		}
	}
}

func waitTrustBundle(ctx context.Context, t *testing.T, c client.Client) string {
	t.Helper()
	for {
		var cm corev1.ConfigMap
		err := c.Get(ctx, client.ObjectKey{Namespace: appNS, Name: controllers.TrustBundleConfigMapName}, &cm)
		if err == nil && cm.Data[controllers.TrustBundleKey] != "" {
			return cm.Data[controllers.TrustBundleKey]
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no trust bundle ConfigMap in %s: %v", appNS, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// requestToken is the projected token the kubelet mounts: audience braid.
func requestToken(ctx context.Context, t *testing.T, c client.Client) string {
	t.Helper()
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: []string{"braid"}}}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: appNS, Name: appSA}}
	if err := c.SubResource("token").Create(ctx, sa, tr); err != nil {
		t.Fatalf("requesting a token: %v", err)
	}
	return tr.Status.Token
}

func waitWaiters(ctx context.Context, t *testing.T, clk *clocktesting.FakeClock, n int) {
	t.Helper()
	for clk.Waiters() < n {
		select {
		case <-ctx.Done():
			t.Fatal("the identity client never waited on its clock")
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func waitCertChange(ctx context.Context, t *testing.T, store *tlsid.Store, old *tls.Certificate) *tls.Certificate {
	t.Helper()
	for {
		if c := store.Certificate(); c != old {
			return c
		}
		select {
		case <-ctx.Done():
			t.Fatal("the certificate was not renewed")
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// failureLog logs to t and sends the error of each failed renewal to failures.
func failureLog(t *testing.T, failures chan<- string) logr.Logger {
	var stopped atomic.Bool
	t.Cleanup(func() { stopped.Store(true) })
	return funcr.New(func(prefix, args string) {
		if stopped.Load() {
			return
		}
		t.Log(prefix, args)
		if strings.Contains(args, "was not renewed") {
			select {
			case failures <- args:
			default:
			}
		}
	}, funcr.Options{})
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// The proxy's CSR is what the operator's CSR checks accept.
func TestProxyCSRPassesTheOperatorsChecks(t *testing.T) {
	id := internalidentity.ID{TrustDomain: "cluster.local", Namespace: appNS, ServiceAccount: appSA}
	c := &identity.Client{TrustDomain: id.TrustDomain, Namespace: id.Namespace, ServiceAccount: id.ServiceAccount}
	der, _, err := identity.NewCSR(c.ID())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := internalidentity.CheckCSR(der, id); err != nil {
		t.Fatal(err)
	}
}
