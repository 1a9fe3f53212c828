package controllers_test

import (
	"context"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	braidv1alpha1 "github.com/braidmesh/braid/api/v1alpha1"
	"github.com/braidmesh/braid/controllers"
	"github.com/braidmesh/braid/internal/ca"
	"github.com/braidmesh/braid/internal/identity"
	"github.com/braidmesh/braid/test/harness"
)

func certReconciler(ns string, clk *clocktesting.FakeClock) *controllers.CertificateReconciler {
	return &controllers.CertificateReconciler{Client: cp.Client, APIReader: cp.Client, Namespace: ns, Holder: &ca.Holder{}, Clock: clk}
}

func reconcileCA(ctx context.Context, t *testing.T, r *controllers.CertificateReconciler) reconcile.Result {
	t.Helper()
	res, err := r.Reconcile(ctx, reconcile.Request{})
	if err != nil {
		t.Fatalf("reconciling the CA: %v", err)
	}
	return res
}

func caSecret(ctx context.Context, t *testing.T, ns, name string) (*corev1.Secret, *identity.KeyPair) {
	t.Helper()
	var s corev1.Secret
	if err := cp.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &s); err != nil {
		t.Fatalf("reading Secret %s: %v", name, err)
	}
	kp, err := identity.ParseKeyPair(s.Data["tls.crt"], s.Data["tls.key"])
	if err != nil {
		t.Fatalf("Secret %s: %v", name, err)
	}
	return &s, kp
}

// The first start creates the root and the intermediate; a restart (a new reconciler, an
// empty Holder) reuses both, and signs with them.
func TestCertificatesBootstrapThenRestartReuses(t *testing.T) {
	ctx := t.Context()
	ns := namespace(ctx, t)
	clk := clocktesting.NewFakeClock(time.Now())
	first := certReconciler(ns, clk)
	res := reconcileCA(ctx, t, first)

	rootSec, root := caSecret(ctx, t, ns, controllers.RootSecretName)
	interSec, inter := caSecret(ctx, t, ns, controllers.IssuerSecretName)
	if err := inter.Cert.CheckSignatureFrom(root.Cert); err != nil {
		t.Fatalf("the intermediate is not signed by the root: %v", err)
	}
	if got := inter.Cert.NotAfter.Sub(inter.Cert.NotBefore); got < braidv1alpha1.DefaultIssuerLifetime || got > braidv1alpha1.DefaultIssuerLifetime+2*time.Minute {
		t.Errorf("intermediate lifetime %v, want the default %v", got, braidv1alpha1.DefaultIssuerLifetime)
	}
	st := first.Holder.Load()
	if st == nil || !st.Issuer.Issuing().Equal(inter.Cert) || len(st.Roots) != 1 || !st.Roots[0].Equal(root.Cert) {
		t.Fatal("the Holder does not hold the CA in the Secrets")
	}
	if want := 2 * braidv1alpha1.DefaultIssuerLifetime / 3; res.RequeueAfter < want-2*time.Minute || res.RequeueAfter > want {
		t.Errorf("RequeueAfter %v, want about two thirds of the intermediate's lifetime (%v)", res.RequeueAfter, want)
	}

	clk.Step(time.Hour)
	restarted := certReconciler(ns, clk)
	reconcileCA(ctx, t, restarted)
	rootSec2, _ := caSecret(ctx, t, ns, controllers.RootSecretName)
	interSec2, _ := caSecret(ctx, t, ns, controllers.IssuerSecretName)
	if rootSec2.ResourceVersion != rootSec.ResourceVersion || interSec2.ResourceVersion != interSec.ResourceVersion {
		t.Fatal("a restart rewrote the CA Secrets")
	}
	if st := restarted.Holder.Load(); st == nil || !st.Roots[0].Equal(root.Cert) || !st.Issuer.Issuing().Equal(inter.Cert) {
		t.Fatal("after a restart the Holder does not hold the same root and intermediate")
	}
}

// Two replicas starting together agree on one root and one intermediate.
func TestCertificatesTwoReplicasAgree(t *testing.T) {
	ctx := t.Context()
	ns := namespace(ctx, t)
	clk := clocktesting.NewFakeClock(time.Now())
	replicas := []*controllers.CertificateReconciler{certReconciler(ns, clk), certReconciler(ns, clk)}
	var wg sync.WaitGroup
	errs := make([]error, len(replicas))
	for i, r := range replicas {
		wg.Go(func() {
			// A replica that lost a race on an update is requeued: a second pass converges.
			if _, errs[i] = r.Reconcile(ctx, reconcile.Request{}); errs[i] != nil {
				_, errs[i] = r.Reconcile(ctx, reconcile.Request{})
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	_, root := caSecret(ctx, t, ns, controllers.RootSecretName)
	_, inter := caSecret(ctx, t, ns, controllers.IssuerSecretName)
	for i, r := range replicas {
		st := r.Holder.Load()
		if !st.Roots[0].Equal(root.Cert) || !st.Issuer.Issuing().Equal(inter.Cert) {
			t.Errorf("replica %d holds another CA than the Secrets", i)
		}
	}
}

// The intermediate is renewed once the clock passes two thirds of its lifetime, not
// before; the root stays.
func TestCertificatesRenewIntermediateAtTwoThirds(t *testing.T) {
	ctx := t.Context()
	ns := namespace(ctx, t)
	clk := clocktesting.NewFakeClock(time.Now())
	r := certReconciler(ns, clk)
	reconcileCA(ctx, t, r)
	rootSec, root := caSecret(ctx, t, ns, controllers.RootSecretName)
	_, inter := caSecret(ctx, t, ns, controllers.IssuerSecretName)
	twoThirds := inter.Cert.NotBefore.Add(inter.Cert.NotAfter.Sub(inter.Cert.NotBefore) * 2 / 3)

	clk.SetTime(twoThirds.Add(-time.Minute))
	res := reconcileCA(ctx, t, r)
	if _, still := caSecret(ctx, t, ns, controllers.IssuerSecretName); !still.Cert.Equal(inter.Cert) {
		t.Fatal("the intermediate was renewed before two thirds of its lifetime")
	}
	if res.RequeueAfter > 2*time.Minute {
		t.Errorf("RequeueAfter %v a minute before the renewal", res.RequeueAfter)
	}

	clk.SetTime(twoThirds.Add(time.Second))
	reconcileCA(ctx, t, r)
	rootSec2, _ := caSecret(ctx, t, ns, controllers.RootSecretName)
	_, renewed := caSecret(ctx, t, ns, controllers.IssuerSecretName)
	if renewed.Cert.Equal(inter.Cert) {
		t.Fatal("the intermediate was not renewed past two thirds of its lifetime")
	}
	if rootSec2.ResourceVersion != rootSec.ResourceVersion {
		t.Fatal("renewing the intermediate rewrote the root")
	}
	if err := renewed.Cert.CheckSignatureFrom(root.Cert); err != nil {
		t.Fatalf("the renewed intermediate is not signed by the root: %v", err)
	}
	if st := r.Holder.Load(); !st.Issuer.Issuing().Equal(renewed.Cert) {
		t.Fatal("the Holder still signs with the old intermediate")
	}
}

// userCA returns Secret user-ca in the cert-manager layout: an intermediate, its key, its root.
func userCA(t *testing.T, ns string, now time.Time) (*corev1.Secret, *identity.KeyPair) {
	t.Helper()
	root, err := identity.NewRoot("cluster.local", now, 24*time.Hour*365)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := identity.NewIntermediate(root, "cluster.local", now, 24*time.Hour*30)
	if err != nil {
		t.Fatal(err)
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "user-ca"},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{"tls.crt": inter.CertPEM, "tls.key": inter.KeyPEM, "ca.crt": root.CertPEM},
	}, root
}

// meshConfig creates the MeshConfig with issuerSecret and deletes it after the test.
func meshConfig(ctx context.Context, t *testing.T, issuerSecret string) {
	t.Helper()
	mc := &braidv1alpha1.MeshConfig{ObjectMeta: metav1.ObjectMeta{Name: braidv1alpha1.MeshConfigName}}
	mc.Spec.Certificates.IssuerSecret = issuerSecret
	mustCreate(ctx, t, mc)
	t.Cleanup(func() {
		ctx := context.WithoutCancel(ctx)
		if err := cp.Client.Delete(ctx, mc); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("deleting the MeshConfig: %v", err)
		}
	})
}

func issuerReady(ctx context.Context, t *testing.T) (*metav1.Condition, *braidv1alpha1.IdentityStatus) {
	t.Helper()
	var mc braidv1alpha1.MeshConfig
	if err := cp.Client.Get(ctx, client.ObjectKey{Name: braidv1alpha1.MeshConfigName}, &mc); err != nil {
		t.Fatal(err)
	}
	return findCondition(mc.Status.Conditions, controllers.ConditionIssuerReady), mc.Status.Identity
}

// A user's issuer Secret signs and is reported; a bad one sets IssuerReady=False and
// the last good issuer stays in force.
func TestCertificatesIssuerSecret(t *testing.T) {
	ctx := t.Context()
	ns := namespace(ctx, t)
	clk := clocktesting.NewFakeClock(time.Now())
	sec, root := userCA(t, ns, clk.Now())
	mustCreate(ctx, t, sec)
	meshConfig(ctx, t, "user-ca")
	r := certReconciler(ns, clk)
	reconcileCA(ctx, t, r)

	good := r.Holder.Load()
	if good == nil || !good.Roots[0].Equal(root.Cert) || string(r.Holder.TrustBundle()) != string(sec.Data["ca.crt"]) {
		t.Fatal("the Holder does not hold the user's issuer and roots")
	}
	checkUserIssuerStatus(ctx, t, ns, root, good)

	// A key that does not match the certificate.
	other, _ := userCA(t, ns, clk.Now())
	sec.Data["tls.key"] = other.Data["tls.key"]
	if err := cp.Client.Update(ctx, sec); err != nil {
		t.Fatal(err)
	}
	reconcileCA(ctx, t, r)
	c, id := issuerReady(ctx, t)
	if c == nil || c.Status != metav1.ConditionFalse || c.Reason != controllers.ReasonIssuerSecretInvalid || c.Message == "" {
		t.Fatalf("IssuerReady = %+v, want False/%s with a message", c, controllers.ReasonIssuerSecretInvalid)
	}
	if r.Holder.Load() != good {
		t.Fatal("a bad issuer Secret replaced the last good issuer")
	}
	if len(id.Roots) != 1 || id.Roots[0] != identity.Fingerprint(root.Cert) {
		t.Fatalf("status.identity.roots = %v, want the last good root still", id.Roots)
	}

	// Gone altogether.
	if err := cp.Client.Delete(ctx, sec); err != nil {
		t.Fatal(err)
	}
	reconcileCA(ctx, t, r)
	if c, _ = issuerReady(ctx, t); c.Status != metav1.ConditionFalse || c.Reason != controllers.ReasonIssuerSecretNotFound {
		t.Fatalf("IssuerReady = %+v, want False/%s", c, controllers.ReasonIssuerSecretNotFound)
	}
}

// Without a MeshConfig the CA still runs, and no MeshConfig is created.
func TestCertificatesWithoutMeshConfig(t *testing.T) {
	ctx := t.Context()
	ns := namespace(ctx, t)
	r := certReconciler(ns, clocktesting.NewFakeClock(time.Now()))
	reconcileCA(ctx, t, r)
	if r.Holder.Load() == nil {
		t.Fatal("no CA without a MeshConfig")
	}
	err := cp.Client.Get(ctx, client.ObjectKey{Name: braidv1alpha1.MeshConfigName}, &braidv1alpha1.MeshConfig{})
	if !apierrors.IsNotFound(err) {
		t.Fatalf("the reconciler created a MeshConfig (or reading it failed): %v", err)
	}
}

// Through the manager: the trust bundle ConfigMap appears in meshed namespaces, labelled
// before or after the start, and follows the bundle when the user's issuer Secret
// changes (watched).
func TestTrustBundleConfigMaps(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	opNS := namespace(ctx, t)
	early := harness.Namespace(opNS + "-early")
	early.Labels = map[string]string{"braid.dev/inject": "enabled"}
	mustCreate(ctx, t, early)

	mgr, err := ctrl.NewManager(cp.RestConfig, ctrl.Options{Scheme: cp.Client.Scheme(), Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0"})
	if err != nil {
		t.Fatal(err)
	}
	holder, err := controllers.SetupIdentity(mgr, controllers.IdentityOptions{Namespace: opNS})
	if err != nil {
		t.Fatal(err)
	}
	mctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- mgr.Start(mctx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	_, root := waitSecret(ctx, t, opNS, controllers.RootSecretName)
	ownBundle := string(identity.BundlePEM(root.Cert))
	waitBundle(ctx, t, early.Name, ownBundle)
	late := harness.Namespace(opNS + "-late")
	mustCreate(ctx, t, late)
	late.Labels = map[string]string{"braid.dev/inject": "enabled"}
	if err := cp.Client.Update(ctx, late); err != nil {
		t.Fatal(err)
	}
	waitBundle(ctx, t, late.Name, ownBundle)

	// Switching to a user issuer changes the bundle everywhere; so does a new user root.
	sec, userRoot := userCA(t, opNS, time.Now())
	mustCreate(ctx, t, sec)
	meshConfig(ctx, t, "user-ca")
	waitBundle(ctx, t, early.Name, string(identity.BundlePEM(userRoot.Cert)))
	next, nextRoot := userCA(t, opNS, time.Now())
	sec.Data = next.Data
	if err := cp.Client.Update(ctx, sec); err != nil {
		t.Fatal(err)
	}
	waitBundle(ctx, t, late.Name, string(identity.BundlePEM(nextRoot.Cert)))
	waitBundle(ctx, t, early.Name, string(identity.BundlePEM(nextRoot.Cert)))
	if got := holder.Load().Roots[0]; !got.Equal(nextRoot.Cert) {
		t.Fatal("the Holder does not hold the reloaded issuer")
	}
}

func waitSecret(ctx context.Context, t *testing.T, ns, name string) (*corev1.Secret, *identity.KeyPair) {
	t.Helper()
	for {
		err := cp.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &corev1.Secret{})
		if err == nil {
			return caSecret(ctx, t, ns, name)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no Secret %s/%s: %v", ns, name, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func waitBundle(ctx context.Context, t *testing.T, ns, want string) {
	t.Helper()
	var got string
	for {
		var cm corev1.ConfigMap
		if err := cp.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: controllers.TrustBundleConfigMapName}, &cm); err == nil {
			if got = cm.Data[controllers.TrustBundleKey]; got == want {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the trust bundle in %s is %q, want %q", ns, got, want)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// checkUserIssuerStatus checks the MeshConfig reports the user's issuer and that the
// operator made no CA of its own.
func checkUserIssuerStatus(ctx context.Context, t *testing.T, ns string, root *identity.KeyPair, good *ca.State) {
	t.Helper()
	c, id := issuerReady(ctx, t)
	if c == nil || c.Status != metav1.ConditionTrue || c.Reason != controllers.ReasonIssuerSecretLoaded {
		t.Fatalf("IssuerReady = %+v, want True/%s", c, controllers.ReasonIssuerSecretLoaded)
	}
	if id == nil || id.TrustDomain != "cluster.local" || len(id.Roots) != 1 || id.Roots[0] != identity.Fingerprint(root.Cert) ||
		id.IssuerNotAfter == nil || !id.IssuerNotAfter.Time.Equal(good.Issuer.NotAfter()) {
		t.Fatalf("status.identity = %+v, want the user's root and issuer", id)
	}
	for _, name := range []string{controllers.RootSecretName, controllers.IssuerSecretName} {
		if err := cp.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &corev1.Secret{}); !apierrors.IsNotFound(err) {
			t.Errorf("with a user issuer the operator made its own CA Secret %s: %v", name, err)
		}
	}
}
