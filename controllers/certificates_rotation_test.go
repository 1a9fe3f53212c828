package controllers_test

import (
	"context"
	"crypto/x509"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	braidv1alpha1 "github.com/braidmesh/braid/api/v1alpha1"
	"github.com/braidmesh/braid/controllers"
	"github.com/braidmesh/braid/internal/identity"
	"github.com/braidmesh/braid/test/harness"
)

// fakeProxies stands for the config server: what the connected proxies acknowledged.
type fakeProxies struct {
	mu                    sync.Mutex
	bundle                string // the bundle the config server sends
	connected, bundleAcks int
	onRoot                map[string]int // proxies by certificate root
}

func (f *fakeProxies) TrustBundleStatus(bundle string) (acked, rejected, connected int, current bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if bundle != f.bundle {
		return 0, 0, f.connected, false
	}
	return f.bundleAcks, 0, f.connected, true
}

func (f *fakeProxies) CertificateRootStatus(root string) (on, connected int, other string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.onRoot[root] < f.connected {
		other = "proxy-on-old-root"
	}
	return f.onRoot[root], f.connected, other
}

func (f *fakeProxies) set(fn func(*fakeProxies)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// rotationEnv is a reconciler with a fake clock, fake proxies and recorded Events, on a
// MeshConfig of its own.
type rotationEnv struct {
	t       *testing.T
	ns      string
	clk     *clocktesting.FakeClock
	proxies *fakeProxies
	events  *events.FakeRecorder
	r       *controllers.CertificateReconciler
}

func newRotationEnv(ctx context.Context, t *testing.T) *rotationEnv {
	t.Helper()
	e := &rotationEnv{t: t, ns: namespace(ctx, t), clk: clocktesting.NewFakeClock(time.Now()), proxies: &fakeProxies{onRoot: map[string]int{}},
		events: events.NewFakeRecorder(64)}
	e.r = e.reconciler()
	meshConfig(ctx, t, "")
	reconcileCA(ctx, t, e.r)
	return e
}

// reconciler is a replica of the operator, as after a restart: an empty Holder.
func (e *rotationEnv) reconciler() *controllers.CertificateReconciler {
	r := certReconciler(e.ns, e.clk)
	r.Proxies, r.Events = e.proxies, e.events
	return r
}

func (e *rotationEnv) annotate(ctx context.Context, value string) {
	e.t.Helper()
	var mc braidv1alpha1.MeshConfig
	if err := cp.Client.Get(ctx, client.ObjectKey{Name: braidv1alpha1.MeshConfigName}, &mc); err != nil {
		e.t.Fatal(err)
	}
	patch := client.MergeFrom(mc.DeepCopy())
	mc.Annotations = map[string]string{braidv1alpha1.RotateAnnotation: value}
	if err := cp.Client.Patch(ctx, &mc, patch); err != nil {
		e.t.Fatal(err)
	}
}

// status returns the MeshConfig's rotation phase, its RootRotation condition and whether
// it still carries the rotate annotation.
func (e *rotationEnv) status(ctx context.Context) (phase string, cond *metav1.Condition, annotated bool) {
	e.t.Helper()
	var mc braidv1alpha1.MeshConfig
	if err := cp.Client.Get(ctx, client.ObjectKey{Name: braidv1alpha1.MeshConfigName}, &mc); err != nil {
		e.t.Fatal(err)
	}
	if mc.Status.Identity != nil {
		phase = mc.Status.Identity.RotationPhase
	}
	_, annotated = mc.Annotations[braidv1alpha1.RotateAnnotation]
	return phase, findCondition(mc.Status.Conditions, controllers.ConditionRootRotation), annotated
}

// step reconciles once and checks the phase it ends at, in the status and in the Secret.
func (e *rotationEnv) step(ctx context.Context, want string) {
	e.t.Helper()
	reconcileCA(ctx, e.t, e.r)
	phase, cond, _ := e.status(ctx)
	if phase != want {
		e.t.Fatalf("rotationPhase = %q, want %q (condition %+v)", phase, want, cond)
	}
	if want == "" {
		return
	}
	if cond == nil || cond.Status != metav1.ConditionTrue || cond.Reason != want {
		e.t.Fatalf("RootRotation = %+v, want True/%s", cond, want)
	}
	sec, _ := caSecret(ctx, e.t, e.ns, controllers.RootNextSecretName)
	if got := sec.Annotations[controllers.RotationPhaseAnnotation]; got != want {
		e.t.Fatalf("the phase recorded in Secret %s is %q, want %q", controllers.RootNextSecretName, got, want)
	}
}

// wantEvent checks that an Event with reason was recorded since the last call.
func (e *rotationEnv) wantEvent(reason string) {
	e.t.Helper()
	var seen []string
	for {
		select {
		case ev := <-e.events.Events:
			if strings.HasPrefix(ev, "Normal "+reason+" ") {
				return
			}
			seen = append(seen, ev)
		default:
			e.t.Fatalf("no Normal Event %s; saw %q", reason, seen)
		}
	}
}

// bundle checks the Holder's trust bundle: these roots, in this order.
func (e *rotationEnv) bundle(want ...*x509.Certificate) {
	e.t.Helper()
	st := e.r.Holder.Load()
	if len(st.Roots) != len(want) {
		e.t.Fatalf("the trust bundle holds %d roots, want %d", len(st.Roots), len(want))
	}
	for i := range want {
		if !st.Roots[i].Equal(want[i]) {
			e.t.Fatalf("root %d of the trust bundle is %s, want %s", i, identity.Fingerprint(st.Roots[i]), identity.Fingerprint(want[i]))
		}
	}
	if string(st.Bundle) != string(identity.BundlePEM(want...)) {
		e.t.Fatal("the bundle PEM is not the roots in order")
	}
}

func (e *rotationEnv) issuerSignedBy(ctx context.Context, root *x509.Certificate) *identity.KeyPair {
	e.t.Helper()
	_, inter := caSecret(ctx, e.t, e.ns, controllers.IssuerSecretName)
	if err := inter.Cert.CheckSignatureFrom(root); err != nil {
		e.t.Fatalf("the intermediate in Secret %s is not signed by root %s: %v", controllers.IssuerSecretName, identity.Fingerprint(root), err)
	}
	if !e.r.Holder.Load().Issuer.Issuing().Equal(inter.Cert) {
		e.t.Fatal("the Holder does not sign with the intermediate in the Secret")
	}
	return inter
}

// Root rotation on demand, step by step: each reconcile moves one phase once its
// precondition holds, and waits while it does not.
func TestRootRotationSteps(t *testing.T) {
	ctx := t.Context()
	e := newRotationEnv(ctx, t)
	_, old := caSecret(ctx, t, e.ns, controllers.RootSecretName)
	e.proxies.set(func(f *fakeProxies) { f.connected, f.onRoot[identity.Fingerprint(old.Cert)] = 2, 2 })

	next := e.startsRotation(ctx, old)
	e.awaitsBundle(ctx)
	e.step(ctx, controllers.PhaseAwaitingRecertification)
	e.wantEvent("IssuerRotated")
	e.wantEvent("IssuerSwitched")
	e.bundle(next.Cert, old.Cert) // the new root issues: first, which tells proxies to renew
	e.issuerSignedBy(ctx, next.Cert)

	// One proxy of two renewed.
	e.proxies.set(func(f *fakeProxies) { f.onRoot[identity.Fingerprint(next.Cert)] = 1 })
	e.step(ctx, controllers.PhaseAwaitingRecertification)
	e.proxies.set(func(f *fakeProxies) { f.onRoot[identity.Fingerprint(next.Cert)] = 2 })
	e.step(ctx, controllers.PhaseRemovingOldRoot)
	e.wantEvent("ProxiesRecertified")

	e.step(ctx, "")
	e.wantEvent("RootRotationComplete")
	inter := e.completed(ctx, next)
	// Nothing moves any more.
	e.step(ctx, "")
	if _, still := caSecret(ctx, t, e.ns, controllers.IssuerSecretName); !still.Cert.Equal(inter.Cert) {
		t.Error("the intermediate changed after the rotation completed")
	}
}

// startsRotation asks for a root rotation and checks its first step; it returns the new root.
func (e *rotationEnv) startsRotation(ctx context.Context, old *identity.KeyPair) *identity.KeyPair {
	t := e.t
	t.Helper()
	e.annotate(ctx, controllers.RotateRoot)
	e.step(ctx, controllers.PhaseAddingRoot)
	e.wantEvent("RootRotationStarted")
	if _, _, annotated := e.status(ctx); annotated {
		t.Error("the rotate annotation stayed once the rotation started")
	}
	_, next := caSecret(ctx, t, e.ns, controllers.RootNextSecretName)
	if next.Cert.Equal(old.Cert) || next.Cert.CheckSignatureFrom(next.Cert) != nil {
		t.Fatal("the new root is not a new self-signed root")
	}
	e.bundle(old.Cert, next.Cert) // the old root still issues: first
	e.issuerSignedBy(ctx, old.Cert)
	e.step(ctx, controllers.PhaseAwaitingBundle)
	e.wantEvent("RootAdded")
	return next
}

// awaitsBundle checks AwaitingBundle waits for every connected proxy (two) to run the
// new bundle, then moves to SwitchingIssuer.
func (e *rotationEnv) awaitsBundle(ctx context.Context) {
	t := e.t
	t.Helper()
	// The config server does not send the bundle yet, then one proxy of two runs it.
	e.step(ctx, controllers.PhaseAwaitingBundle)
	e.proxies.set(func(f *fakeProxies) { f.bundle, f.bundleAcks = string(e.r.Holder.TrustBundle()), 1 })
	res := reconcileCA(ctx, t, e.r)
	if phase, cond, _ := e.status(ctx); phase != controllers.PhaseAwaitingBundle || !strings.Contains(cond.Message, "1 of 2 connected proxies") {
		t.Fatalf("with one proxy of two on the bundle: phase %q, condition %+v", phase, cond)
	}
	if res.RequeueAfter <= 0 || res.RequeueAfter > 5*time.Second {
		t.Errorf("RequeueAfter %v while waiting for proxies, want a few seconds", res.RequeueAfter)
	}
	e.proxies.set(func(f *fakeProxies) { f.bundleAcks = 2 })
	e.step(ctx, controllers.PhaseSwitchingIssuer)
	e.wantEvent("TrustBundleDistributed")
}

// completed checks the state after a rotation to next: the condition, the Secrets, the
// bundle and the status. It returns the intermediate.
func (e *rotationEnv) completed(ctx context.Context, next *identity.KeyPair) *identity.KeyPair {
	t := e.t
	t.Helper()
	_, cond, _ := e.status(ctx)
	if cond == nil || cond.Status != metav1.ConditionFalse || cond.Reason != controllers.ReasonRotationComplete {
		t.Fatalf("RootRotation = %+v, want False/Complete", cond)
	}
	if _, root := caSecret(ctx, t, e.ns, controllers.RootSecretName); !root.Cert.Equal(next.Cert) {
		t.Fatalf("Secret %s does not hold the new root", controllers.RootSecretName)
	}
	err := cp.Client.Get(ctx, client.ObjectKey{Namespace: e.ns, Name: controllers.RootNextSecretName}, &corev1.Secret{})
	if !apierrors.IsNotFound(err) {
		t.Fatalf("Secret %s still exists after the rotation (or reading it failed: %v)", controllers.RootNextSecretName, err)
	}
	e.bundle(next.Cert)
	inter := e.issuerSignedBy(ctx, next.Cert)
	_, id := issuerReady(ctx, t)
	if len(id.Roots) != 1 || id.Roots[0] != identity.Fingerprint(next.Cert) || !id.IssuerNotAfter.Time.Equal(inter.Cert.NotAfter) {
		t.Errorf("status.identity = %+v, want the new root alone and the new intermediate's expiry", id)
	}
	return inter
}

// An operator restarted in the middle of a rotation resumes at the phase recorded, with
// the same CA.
func TestRootRotationResumesAfterRestart(t *testing.T) {
	ctx := t.Context()
	e := newRotationEnv(ctx, t)
	_, old := caSecret(ctx, t, e.ns, controllers.RootSecretName)
	e.annotate(ctx, controllers.RotateRoot)
	e.step(ctx, controllers.PhaseAddingRoot)
	e.step(ctx, controllers.PhaseAwaitingBundle)
	e.proxies.set(func(f *fakeProxies) { f.bundle = string(e.r.Holder.TrustBundle()) }) // no proxy connected
	e.step(ctx, controllers.PhaseSwitchingIssuer)
	e.step(ctx, controllers.PhaseAwaitingRecertification)
	_, next := caSecret(ctx, t, e.ns, controllers.RootNextSecretName)
	_, inter := caSecret(ctx, t, e.ns, controllers.IssuerSecretName)

	e.r = e.reconciler() // the restart: nothing in memory
	e.proxies.set(func(f *fakeProxies) { f.connected = 1 })
	e.step(ctx, controllers.PhaseAwaitingRecertification)
	e.bundle(next.Cert, old.Cert)
	if got := e.issuerSignedBy(ctx, next.Cert); !got.Cert.Equal(inter.Cert) {
		t.Fatal("the restarted operator replaced the intermediate of the new root")
	}
	e.proxies.set(func(f *fakeProxies) { f.onRoot[identity.Fingerprint(next.Cert)] = 1 })
	e.step(ctx, controllers.PhaseRemovingOldRoot)
	e.r = e.reconciler()
	e.step(ctx, "")
	e.bundle(next.Cert)
}

// Without a view of the proxies, the rotation does not wait for the bundle, and waits a
// workload lifetime for every certificate from the old root to expire.
func TestRootRotationWithoutProxiesWaitsAWorkloadLifetime(t *testing.T) {
	ctx := t.Context()
	e := newRotationEnv(ctx, t)
	e.r.Proxies = nil
	e.annotate(ctx, controllers.RotateRoot)
	e.step(ctx, controllers.PhaseAddingRoot)
	e.step(ctx, controllers.PhaseAwaitingBundle)
	e.step(ctx, controllers.PhaseSwitchingIssuer)
	e.step(ctx, controllers.PhaseAwaitingRecertification)
	lifetime := braidv1alpha1.DefaultWorkloadLifetime
	e.clk.Step(lifetime)
	e.step(ctx, controllers.PhaseAwaitingRecertification)
	e.clk.Step(time.Minute + time.Second) // past the allowance for clock skew
	e.step(ctx, controllers.PhaseRemovingOldRoot)
	e.step(ctx, "")
}

// The root rotation starts by itself at two thirds of the root's lifetime, and the
// reconciler requeues itself for it.
func TestRootRotationOnSchedule(t *testing.T) {
	ctx := t.Context()
	e := newRotationEnv(ctx, t)
	_, root := caSecret(ctx, t, e.ns, controllers.RootSecretName)
	twoThirds := root.Cert.NotBefore.Add(root.Cert.NotAfter.Sub(root.Cert.NotBefore) * 2 / 3)
	_, inter := caSecret(ctx, t, e.ns, controllers.IssuerSecretName)
	// Keep the intermediate out of the way: renew it just before, so that the root's
	// schedule is the next thing due.
	e.clk.SetTime(twoThirds.Add(-time.Hour))
	if !e.clk.Now().After(inter.Cert.NotAfter) {
		t.Fatal("test assumption: the first intermediate has expired by then")
	}
	res := reconcileCA(ctx, t, e.r)
	if phase, _, _ := e.status(ctx); phase != "" {
		t.Fatalf("a rotation started before two thirds of the root's lifetime: %q", phase)
	}
	if res.RequeueAfter > time.Hour {
		t.Errorf("RequeueAfter %v, want at most the hour left before the scheduled root rotation", res.RequeueAfter)
	}
	e.clk.SetTime(twoThirds.Add(time.Second))
	e.step(ctx, controllers.PhaseAddingRoot)
	e.wantEvent("RootRotationStarted")
}

// braid.dev/rotate: issuer replaces the intermediate at once, from the same root, and
// the annotation goes.
func TestIssuerRotationOnDemand(t *testing.T) {
	ctx := t.Context()
	e := newRotationEnv(ctx, t)
	_, root := caSecret(ctx, t, e.ns, controllers.RootSecretName)
	_, before := caSecret(ctx, t, e.ns, controllers.IssuerSecretName)
	e.annotate(ctx, controllers.RotateIssuer)
	e.step(ctx, "")
	e.wantEvent("IssuerRotated")
	after := e.issuerSignedBy(ctx, root.Cert)
	if after.Cert.Equal(before.Cert) {
		t.Fatal("the intermediate was not replaced")
	}
	if _, _, annotated := e.status(ctx); annotated {
		t.Error("the rotate annotation stayed")
	}
	e.bundle(root.Cert)
	_, id := issuerReady(ctx, t)
	if !id.IssuerNotAfter.Time.Equal(after.Cert.NotAfter) {
		t.Errorf("status.identity.issuerNotAfter = %v, want the new intermediate's %v", id.IssuerNotAfter, after.Cert.NotAfter)
	}
	e.step(ctx, "")
	if _, still := caSecret(ctx, t, e.ns, controllers.IssuerSecretName); !still.Cert.Equal(after.Cert) {
		t.Error("the intermediate was replaced again without being asked")
	}
}

// With a user's issuer Secret, rotation is the user's: the annotation is refused with a
// Warning and removed.
func TestRotationWithUserIssuerIsRefused(t *testing.T) {
	ctx := t.Context()
	ns := namespace(ctx, t)
	clk := clocktesting.NewFakeClock(time.Now())
	sec, _ := userCA(t, ns, clk.Now())
	mustCreate(ctx, t, sec)
	meshConfig(ctx, t, "user-ca")
	rec := events.NewFakeRecorder(8)
	r := certReconciler(ns, clk)
	r.Events = rec
	e := &rotationEnv{t: t, ns: ns, clk: clk, r: r, events: rec}
	e.annotate(ctx, controllers.RotateRoot)
	reconcileCA(ctx, t, r)
	if phase, cond, annotated := e.status(ctx); phase != "" || cond != nil || annotated {
		t.Fatalf("phase %q, RootRotation %+v, annotated %v; want no rotation and the annotation gone", phase, cond, annotated)
	}
	select {
	case ev := <-rec.Events:
		if !strings.HasPrefix(ev, "Warning RotationNotApplicable ") {
			t.Errorf("Event %q, want a RotationNotApplicable Warning", ev)
		}
	default:
		t.Error("no Event")
	}
}

// The issuer switches to the new root only once every meshed namespace's trust bundle
// ConfigMap holds both roots: proxies verify the identity service against it.
func TestRootRotationWaitsForTrustBundleConfigMaps(t *testing.T) {
	ctx := t.Context()
	e := newRotationEnv(ctx, t)
	e.r.ConfigMaps = cp.Client
	meshed := harness.Namespace(strings.ToLower(e.ns + "-meshed"))
	meshed.Labels = map[string]string{"braid.dev/inject": "enabled"}
	mustCreate(ctx, t, meshed)
	e.annotate(ctx, controllers.RotateRoot)
	e.step(ctx, controllers.PhaseAddingRoot)
	e.step(ctx, controllers.PhaseAwaitingBundle)
	bundle := string(e.r.Holder.TrustBundle())
	e.proxies.set(func(f *fakeProxies) { f.bundle = bundle }) // no proxy connected
	e.step(ctx, controllers.PhaseAwaitingBundle)
	if _, cond, _ := e.status(ctx); !strings.Contains(cond.Message, controllers.TrustBundleConfigMapName) {
		t.Fatalf("RootRotation = %+v, want a message naming the ConfigMap waited for", cond)
	}

	// What the trust bundle reconciler does: every meshed namespace gets the bundle.
	var list corev1.NamespaceList
	if err := cp.Client.List(ctx, &list, client.MatchingLabels{"braid.dev/inject": "enabled"}); err != nil {
		t.Fatal(err)
	}
	for _, ns := range list.Items {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: controllers.TrustBundleConfigMapName}}
		if _, err := controllerutil.CreateOrUpdate(ctx, cp.Client, cm, func() error {
			cm.Data = map[string]string{controllers.TrustBundleKey: bundle}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	e.step(ctx, controllers.PhaseSwitchingIssuer)
}

// An unknown rotate value is refused with a Warning, removed, and rotates nothing.
func TestRotateAnnotationWithAnUnknownValue(t *testing.T) {
	ctx := t.Context()
	e := newRotationEnv(ctx, t)
	_, before := caSecret(ctx, t, e.ns, controllers.IssuerSecretName)
	e.annotate(ctx, "everything")
	e.step(ctx, "")
	if _, _, annotated := e.status(ctx); annotated {
		t.Error("the annotation stayed")
	}
	if _, after := caSecret(ctx, t, e.ns, controllers.IssuerSecretName); !after.Cert.Equal(before.Cert) {
		t.Error("the intermediate was replaced")
	}
	select {
	case ev := <-e.events.Events:
		if !strings.HasPrefix(ev, "Warning RotateAnnotationInvalid ") {
			t.Errorf("Event %q, want a RotateAnnotationInvalid Warning", ev)
		}
	default:
		t.Error("no Event")
	}
}
