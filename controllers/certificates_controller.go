package controllers

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	braidv1alpha1 "github.com/braidmesh/braid/api/v1alpha1"
	"github.com/braidmesh/braid/internal/ca"
	"github.com/braidmesh/braid/internal/identity"
)

// ConditionIssuerReady on the MeshConfig says whether the issuer configured signs
// workload certificates. False keeps the last good issuer in force.
const ConditionIssuerReady = "IssuerReady"

// Reasons of the IssuerReady condition.
const (
	// ReasonOperatorCA: the operator's own root and intermediate sign.
	ReasonOperatorCA = "OperatorCA"
	// ReasonIssuerSecretLoaded: the user's spec.certificates.issuerSecret signs.
	ReasonIssuerSecretLoaded = "IssuerSecretLoaded"
	// ReasonIssuerSecretNotFound: spec.certificates.issuerSecret names no Secret.
	ReasonIssuerSecretNotFound = "IssuerSecretNotFound"
	// ReasonIssuerSecretInvalid: the Secret is not a usable CA (see the message).
	ReasonIssuerSecretInvalid = "IssuerSecretInvalid"
	// ReasonCAUnavailable: the operator's own CA could not be read or written.
	ReasonCAUnavailable = "CAUnavailable"
)

// meshConfigRequest is the one request of the certificate reconciler: the MeshConfig,
// whether it exists or not.
var meshConfigRequest = reconcile.Request{NamespacedName: types.NamespacedName{Name: braidv1alpha1.MeshConfigName}}

// CertificateReconciler runs the mesh CA: it loads (or creates) the issuer, puts it in
// Holder, and reports it in the MeshConfig's status. Without spec.certificates.issuerSecret
// the operator's own CA signs: a root (RootSecretName), created once and kept while
// valid, and an intermediate (IssuerSecretName) renewed at two thirds of its lifetime.
// With it, the user's Secret signs and is reloaded when it changes; an invalid one sets
// IssuerReady=False and the last good issuer stays in force.
//
// It runs on every replica, since every replica serves the identity service: Secrets are
// created only if absent and replaced only by updates conditional on the version read,
// so concurrent replicas agree on one CA. It rotates the intermediate (on schedule or on
// demand, braid.dev/rotate: issuer) and the root (at two thirds of its lifetime, or on
// demand, braid.dev/rotate: root) in the phases of certificates_rotation.go.
type CertificateReconciler struct {
	// Client writes Secrets and reads the MeshConfig.
	Client client.Client
	// APIReader reads Secrets from the API server directly.
	APIReader client.Reader
	// Namespace is the operator's: the CA Secrets and issuerSecret live there.
	Namespace string
	Holder    *ca.Holder
	Clock     clock.PassiveClock
	Events    events.EventRecorder
	// Proxies tells root rotation which connected proxies run the new trust bundle and
	// hold a certificate from the new root. Without it, the rotation does not wait for
	// the bundle and waits a workload lifetime for the certificates.
	Proxies MeshProxies
	// ConfigMaps, when set, reads the trust bundle ConfigMaps: a root rotation switches
	// the issuer only once every meshed namespace's holds the new bundle.
	ConfigMaps client.Reader
}

// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create;update;delete,namespace=braid-system
// +kubebuilder:rbac:groups=braid.dev,resources=meshconfigs,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=braid.dev,resources=meshconfigs/status,verbs=get;update;patch

// Reconcile loads or creates the CA, stores it in the Holder and reports it.
func (r *CertificateReconciler) Reconcile(ctx context.Context, _ reconcile.Request) (reconcile.Result, error) {
	mc := &braidv1alpha1.MeshConfig{}
	switch err := r.Client.Get(ctx, meshConfigRequest.NamespacedName, mc); {
	case apierrors.IsNotFound(err):
		mc = nil
	case err != nil:
		return reconcile.Result{}, fmt.Errorf("reading the MeshConfig: %w", err)
	}
	var spec *braidv1alpha1.MeshConfigSpec
	if mc != nil {
		spec = &mc.Spec
	}
	var (
		res  loadResult
		cond metav1.Condition
		err  error
	)
	if spec != nil && spec.Certificates.IssuerSecret != "" {
		res, cond = r.loadIssuerSecret(ctx, spec)
		if ask := rotateRequest(mc); ask != "" {
			r.warn(ctx, "RotationNotApplicable", "%s: %s is ignored: spec.certificates.issuerSecret signs, and rotating it is up to its owner (see docs/identity.md)",
				braidv1alpha1.RotateAnnotation, ask)
			err = r.clearRotateRequest(ctx, mc)
		}
	} else {
		res, cond, err = r.ensureOwnCA(ctx, mc)
	}
	if res.state != nil {
		r.store(ctx, res.state)
	}
	if serr := r.updateStatus(ctx, mc, cond, res); serr != nil {
		err = errors.Join(err, serr)
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	if res.recheckAt.IsZero() {
		return reconcile.Result{}, nil
	}
	return reconcile.Result{RequeueAfter: max(res.recheckAt.Sub(r.Clock.Now()), time.Second)}, nil
}

// loadResult is a CA loaded and when to look at it again.
type loadResult struct {
	state     *ca.State // nil: keep the one in force
	recheckAt time.Time // zero: only on a change
	// ownCA: the operator's own CA signs. phase is then its root rotation's phase ("":
	// none under way) and rotation the RootRotation condition to set (nil: it stays).
	ownCA    bool
	phase    string
	rotation *metav1.Condition
}

// store puts st in force unless the same CA is already.
func (r *CertificateReconciler) store(ctx context.Context, st *ca.State) {
	if cur := r.Holder.Load(); cur != nil && cur.Issuer.Issuing().Equal(st.Issuer.Issuing()) &&
		bytes.Equal(cur.Bundle, st.Bundle) && cur.WorkloadLifetime == st.WorkloadLifetime {
		return
	}
	r.Holder.Store(st)
	log.FromContext(ctx).Info("Mesh CA loaded", "trustDomain", st.TrustDomain(),
		"issuer", st.Issuer.Issuing().Subject.String(), "issuerNotAfter", st.Issuer.NotAfter(), "roots", len(st.Roots))
}

// ensureOwnCA loads the operator's root and intermediate, creating or renewing them,
// and runs the steps of the rotations under way or asked for.
func (r *CertificateReconciler) ensureOwnCA(ctx context.Context, mc *braidv1alpha1.MeshConfig) (loadResult, metav1.Condition, error) {
	var spec *braidv1alpha1.MeshConfigSpec
	if mc != nil {
		spec = &mc.Spec
	}
	td, now := spec.EffectiveTrustDomain(), r.Clock.Now()
	secrets := caSecrets{reader: r.APIReader, writer: r.Client, namespace: r.Namespace}
	unavailable := func(err error) (loadResult, metav1.Condition, error) {
		if apierrors.IsConflict(err) { // another replica wrote first: retried at once, nothing to report
			return loadResult{}, metav1.Condition{}, err
		}
		return loadResult{}, issuerCondition(metav1.ConditionFalse, ReasonCAUnavailable, err.Error()), err
	}
	root, replaced, err := secrets.ensure(ctx, RootSecretName, usableRoot(td, now), func() (*identity.KeyPair, []byte, error) {
		kp, err := identity.NewRoot(td, now, spec.EffectiveRootLifetime())
		if err != nil {
			return nil, nil, err
		}
		return kp, kp.CertPEM, nil
	})
	if err != nil {
		return unavailable(err)
	}
	if replaced != nil {
		r.warn(ctx, "RootReplaced", "the root in Secret %s/%s could not be used (%v): a new root was created; proxies trust it once they renew their certificates",
			r.Namespace, RootSecretName, replaced)
	}
	rot, done, err := r.stepRootRotation(ctx, secrets, mc, root, now)
	if err != nil {
		return unavailable(err)
	}
	if done != nil {
		root = done.root
	}
	issuing, roots := rot.roots(root)
	inter, err := r.ensureIntermediate(ctx, secrets, mc, issuing, td, now)
	if err != nil {
		return unavailable(err)
	}
	issuer, err := identity.NewIssuer(inter, nil, []*x509.Certificate{issuing.Cert}, td, now)
	if err != nil {
		return unavailable(err)
	}
	st := &ca.State{Issuer: issuer, Roots: roots, Bundle: identity.BundlePEM(roots...), WorkloadLifetime: spec.EffectiveWorkloadLifetime()}
	r.store(ctx, st) // before the step below, which looks at who has the bundle in force
	res := loadResult{state: st, recheckAt: caRenewAt(inter.Cert), ownCA: true}
	if rot == nil {
		res.recheckAt = earliest(res.recheckAt, caRenewAt(root.Cert)) // the scheduled root rotation
	} else {
		// A step that fails leaves the CA in force as it is: it is retried, and the
		// error is the Reconcile's.
		var wait time.Duration
		wait, err = r.advance(ctx, rot, st, now)
		res.recheckAt, res.phase = earliest(res.recheckAt, now.Add(wait)), rot.phase
	}
	res.rotation = rotationCondition(rot, done)
	msg := fmt.Sprintf("the operator's CA (Secrets %s and %s) signs; the intermediate is renewed at %s", RootSecretName, IssuerSecretName, caRenewAt(inter.Cert).UTC().Format(time.RFC3339))
	return res, issuerCondition(metav1.ConditionTrue, ReasonOperatorCA, msg), err
}

// stepRootRotation reads the root rotation under way, starts one when asked for (the
// rotate annotation, or the root past two thirds of its lifetime), and finishes one at
// RemovingOldRoot: done then says which root replaced which.
func (r *CertificateReconciler) stepRootRotation(ctx context.Context, secrets caSecrets, mc *braidv1alpha1.MeshConfig, root *identity.KeyPair,
	now time.Time) (rot *rotation, done *rotationDone, err error) {
	var spec *braidv1alpha1.MeshConfigSpec
	if mc != nil {
		spec = &mc.Spec
	}
	if rot, err = r.loadRotation(ctx, secrets, spec.EffectiveTrustDomain(), now); err != nil {
		return nil, nil, err
	}
	if rot, err = r.startRootRotationIfDue(ctx, secrets, mc, root, rot, now); err != nil {
		return nil, nil, err
	}
	if rot == nil || rot.phase != PhaseRemovingOldRoot {
		return rot, nil, nil
	}
	next, err := r.removeOldRoot(ctx, secrets, rot)
	if err != nil {
		return nil, nil, err
	}
	r.event(ctx, "RootRotationComplete", "RotateRoot", "the root %s replaced %s: the trust bundle holds it alone",
		identity.Fingerprint(next.Cert), identity.Fingerprint(root.Cert))
	return nil, &rotationDone{root: next, replaced: root.Cert}, nil
}

// startRootRotationIfDue starts a root rotation when none is under way (rot is nil) and
// the rotate annotation asks for one or the root is past two thirds of its lifetime. It
// removes the annotation once acted upon (an unknown value, with a Warning), and returns
// the rotation under way.
func (r *CertificateReconciler) startRootRotationIfDue(ctx context.Context, secrets caSecrets, mc *braidv1alpha1.MeshConfig,
	root *identity.KeyPair, rot *rotation, now time.Time) (*rotation, error) {
	var spec *braidv1alpha1.MeshConfigSpec
	if mc != nil {
		spec = &mc.Spec
	}
	var err error
	switch ask := rotateRequest(mc); {
	case ask == RotateIssuer: // ensureIntermediate's
		return rot, nil
	case ask != "" && ask != RotateRoot:
		r.warn(ctx, "RotateAnnotationInvalid", "%s: %q is neither %q nor %q; it is removed",
			braidv1alpha1.RotateAnnotation, ask, RotateRoot, RotateIssuer)
	case rot == nil && ask == RotateRoot:
		rot, err = r.startRootRotation(ctx, secrets, spec, now, "asked by the "+braidv1alpha1.RotateAnnotation+" annotation")
	case rot == nil && !now.Before(caRenewAt(root.Cert)):
		rot, err = r.startRootRotation(ctx, secrets, spec, now, "the root is past two thirds of its lifetime")
	case rot != nil && ask == RotateRoot:
		r.event(ctx, "RootRotationUnderWay", "RotateRoot", "a root rotation is already under way, at phase %s", rot.phase)
	}
	if err != nil {
		return nil, err
	}
	return rot, r.clearRotateRequest(ctx, mc) // nothing to do without the annotation
}

// ensureIntermediate loads the issuing intermediate, which must be signed by issuing: it
// is renewed at two thirds of its lifetime, when another root issues, and on demand
// (the rotate annotation says issuer).
func (r *CertificateReconciler) ensureIntermediate(ctx context.Context, secrets caSecrets, mc *braidv1alpha1.MeshConfig, issuing *identity.KeyPair,
	td string, now time.Time) (*identity.KeyPair, error) {
	var spec *braidv1alpha1.MeshConfigSpec
	if mc != nil {
		spec = &mc.Spec
	}
	asked := rotateRequest(mc) == RotateIssuer
	usable := usableIntermediate(issuing.Cert, td, now)
	if asked {
		usable = func(*identity.KeyPair) error {
			return fmt.Errorf("rotation asked by the %s annotation", braidv1alpha1.RotateAnnotation)
		}
	}
	inter, why, err := secrets.ensure(ctx, IssuerSecretName, usable, func() (*identity.KeyPair, []byte, error) {
		kp, err := identity.NewIntermediate(issuing, td, now, spec.EffectiveIssuerLifetime())
		if err != nil {
			return nil, nil, err
		}
		return kp, issuing.CertPEM, nil
	})
	if err != nil {
		return nil, err
	}
	if why != nil {
		r.event(ctx, "IssuerRotated", "RotateIssuer", "a new intermediate, valid until %s and signed by the root %s, replaced the previous one: %v",
			inter.Cert.NotAfter.UTC().Format(time.RFC3339), identity.Fingerprint(issuing.Cert), why)
	}
	if asked {
		if err := r.clearRotateRequest(ctx, mc); err != nil {
			return nil, err
		}
	}
	return inter, nil
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// loadIssuerSecret loads the user's issuer Secret (cert-manager layout: tls.crt the
// issuing certificate then its chain, tls.key its key, ca.crt the roots).
func (r *CertificateReconciler) loadIssuerSecret(ctx context.Context, spec *braidv1alpha1.MeshConfigSpec) (loadResult, metav1.Condition) {
	name := spec.Certificates.IssuerSecret
	sec, err := caSecrets{reader: r.APIReader, namespace: r.Namespace}.get(ctx, name)
	switch {
	case err != nil:
		return loadResult{}, issuerCondition(metav1.ConditionFalse, ReasonIssuerSecretNotFound, err.Error())
	case sec == nil:
		return loadResult{}, issuerCondition(metav1.ConditionFalse, ReasonIssuerSecretNotFound,
			fmt.Sprintf("Secret %s/%s named by spec.certificates.issuerSecret does not exist; the last good issuer stays in force", r.Namespace, name))
	}
	st, err := issuerFromSecret(sec, spec, r.Clock.Now())
	if err != nil {
		msg := fmt.Sprintf("Secret %s/%s: %v; the last good issuer stays in force", r.Namespace, name, err)
		r.warn(ctx, ReasonIssuerSecretInvalid, "%s", msg)
		return loadResult{}, issuerCondition(metav1.ConditionFalse, ReasonIssuerSecretInvalid, msg)
	}
	msg := fmt.Sprintf("Secret %s/%s signs; it expires at %s", r.Namespace, name, st.Issuer.NotAfter().UTC().Format(time.RFC3339))
	// Looked at again when it expires, to say so: renewing it is the user's (or cert-manager's) job.
	return loadResult{state: st, recheckAt: st.Issuer.NotAfter()}, issuerCondition(metav1.ConditionTrue, ReasonIssuerSecretLoaded, msg)
}

func issuerFromSecret(sec *corev1.Secret, spec *braidv1alpha1.MeshConfigSpec, now time.Time) (*ca.State, error) {
	kp, err := identity.ParseKeyPair(sec.Data[corev1.TLSCertKey], sec.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		return nil, err
	}
	certs, err := identity.ParseCertificates(sec.Data[corev1.TLSCertKey])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", corev1.TLSCertKey, err)
	}
	if len(sec.Data[secretCAKey]) == 0 {
		return nil, fmt.Errorf("no %s: the roots the issuer chains to are required", secretCAKey)
	}
	roots, err := identity.ParseCertificates(sec.Data[secretCAKey])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", secretCAKey, err)
	}
	td := spec.EffectiveTrustDomain()
	issuer, err := identity.NewIssuer(kp, certs[1:], roots, td, now)
	if err != nil {
		return nil, err
	}
	roots = issuingRootFirst(certs, roots)
	return &ca.State{Issuer: issuer, Roots: roots, Bundle: identity.BundlePEM(roots...), WorkloadLifetime: spec.EffectiveWorkloadLifetime()}, nil
}

// issuingRootFirst orders roots with the one that signed the end of chain first.
func issuingRootFirst(chain, roots []*x509.Certificate) []*x509.Certificate {
	last := chain[len(chain)-1]
	i := slices.IndexFunc(roots, func(r *x509.Certificate) bool { return r.Equal(last) || last.CheckSignatureFrom(r) == nil })
	if i <= 0 {
		return roots
	}
	out := append([]*x509.Certificate{roots[i]}, roots[:i]...)
	return append(out, roots[i+1:]...)
}

func issuerCondition(status metav1.ConditionStatus, reason, msg string) metav1.Condition {
	return metav1.Condition{Type: ConditionIssuerReady, Status: status, Reason: reason, Message: msg}
}

// updateStatus reports the CA in force, cond and the rotation of res on mc; without a
// MeshConfig it does nothing.
func (r *CertificateReconciler) updateStatus(ctx context.Context, mc *braidv1alpha1.MeshConfig, cond metav1.Condition, res loadResult) error {
	if mc == nil {
		return nil
	}
	before := mc.DeepCopy()
	if st := r.Holder.Load(); st != nil {
		id := &braidv1alpha1.IdentityStatus{TrustDomain: st.TrustDomain(), IssuerNotAfter: &metav1.Time{Time: st.Issuer.NotAfter()}}
		switch {
		case res.ownCA:
			id.RotationPhase = res.phase
		case mc.Status.Identity != nil:
			id.RotationPhase = mc.Status.Identity.RotationPhase
		}
		for _, root := range st.Roots {
			id.Roots = append(id.Roots, identity.Fingerprint(root))
		}
		mc.Status.Identity = id
	}
	cond.ObservedGeneration = mc.Generation
	cond.LastTransitionTime = metav1.NewTime(r.Clock.Now())
	if cond.Type != "" { // none: nothing new to say (a write lost to another replica)
		meta.SetStatusCondition(&mc.Status.Conditions, cond)
	}
	if rc := res.rotation; rc != nil {
		rc.ObservedGeneration = mc.Generation
		rc.LastTransitionTime = cond.LastTransitionTime
		meta.SetStatusCondition(&mc.Status.Conditions, *rc)
	}
	if equalMeshConfigStatus(before.Status, mc.Status) {
		return nil
	}
	if err := r.Client.Status().Patch(ctx, mc, client.MergeFrom(before)); err != nil {
		return fmt.Errorf("updating the MeshConfig status: %w", err)
	}
	return nil
}

func equalMeshConfigStatus(a, b braidv1alpha1.MeshConfigStatus) bool {
	ai, bi := a.Identity, b.Identity
	if (ai == nil) != (bi == nil) {
		return false
	}
	if ai != nil && (ai.TrustDomain != bi.TrustDomain || !slices.Equal(ai.Roots, bi.Roots) || ai.RotationPhase != bi.RotationPhase ||
		!ai.IssuerNotAfter.Equal(bi.IssuerNotAfter)) {
		return false
	}
	return slices.EqualFunc(a.Conditions, b.Conditions, func(x, y metav1.Condition) bool {
		return x.Type == y.Type && x.Status == y.Status && x.Reason == y.Reason && x.Message == y.Message &&
			x.ObservedGeneration == y.ObservedGeneration && x.LastTransitionTime.Equal(&y.LastTransitionTime)
	})
}

// warn records a Warning Event on the MeshConfig, when there is one, and logs.
func (r *CertificateReconciler) warn(ctx context.Context, reason, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	log.FromContext(ctx).Info("Mesh CA problem", "reason", reason, "message", msg)
	if r.Events == nil {
		return
	}
	mc := &braidv1alpha1.MeshConfig{}
	if err := r.Client.Get(ctx, meshConfigRequest.NamespacedName, mc); err == nil {
		r.Events.Eventf(mc, nil, corev1.EventTypeWarning, reason, "LoadCA", "%s", msg)
	}
}
