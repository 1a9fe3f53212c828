package controllers

import (
	"context"
	"crypto/x509"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	braidv1alpha1 "github.com/braidmesh/braid/api/v1alpha1"
	"github.com/braidmesh/braid/internal/ca"
	"github.com/braidmesh/braid/internal/identity"
)

// Root rotation replaces the operator's root without a dropped request. It is a chain of
// phases, each one step of the certificate reconcile that checks its precondition and
// moves on. The phase lives in an annotation of the Secret RootNextSecretName, which
// holds the new root from the first phase until the last, so an operator restarted
// mid-rotation resumes where it was; the MeshConfig reports it in
// status.identity.rotationPhase and the condition RootRotation (whose reason is the phase).
const (
	// PhaseAddingRoot: the new root was created; the trust bundle becomes old + new.
	PhaseAddingRoot = "AddingRoot"
	// PhaseAwaitingBundle: waiting until every connected proxy has acknowledged the
	// bundle holding both roots.
	PhaseAwaitingBundle = "AwaitingBundle"
	// PhaseSwitchingIssuer: a new intermediate, signed by the new root, signs from now
	// on; the bundle puts the new root first, which tells proxies to renew.
	PhaseSwitchingIssuer = "SwitchingIssuer"
	// PhaseAwaitingRecertification: waiting until every connected proxy reports a
	// certificate chaining to the new root, or every certificate signed before the
	// switch has expired (a workload lifetime later).
	PhaseAwaitingRecertification = "AwaitingRecertification"
	// PhaseRemovingOldRoot: the new root replaces the old one in RootSecretName and the
	// bundle holds it alone.
	PhaseRemovingOldRoot = "RemovingOldRoot"
	// ReasonRotationComplete is the RootRotation reason (status False) once the last
	// rotation has finished.
	ReasonRotationComplete = "Complete"

	// ConditionRootRotation on the MeshConfig: True while a root rotation is under way
	// (reason: its phase), False with reason Complete after one finished. Absent before
	// the first rotation.
	ConditionRootRotation = "RootRotation"

	// RootNextSecretName holds the new root during a root rotation (cert-manager layout);
	// it exists only while one is under way.
	RootNextSecretName = "braid-ca-root-next"

	// RotationPhaseAnnotation and RotationSinceAnnotation, on RootNextSecretName, hold the
	// phase and when it began (RFC 3339).
	RotationPhaseAnnotation = "braid.dev/rotation-phase"
	RotationSinceAnnotation = "braid.dev/rotation-phase-since"

	// RotateRoot and RotateIssuer are the values of braidv1alpha1.RotateAnnotation.
	RotateRoot   = "root"
	RotateIssuer = "issuer"

	// rotationPoll is how often a waiting phase looks at the proxies again.
	rotationPoll = 2 * time.Second
	// expirySkew is added to a workload lifetime to be sure every certificate signed
	// before a moment has expired, whatever the clock skew between replicas.
	expirySkew = time.Minute
)

// MeshProxies is what root rotation needs to know of the proxies connected to this
// replica's config server (configserver.Server implements it).
type MeshProxies interface {
	// TrustBundleStatus counts the connected proxies that run the trust bundle bundle;
	// current is false while the config server does not send that bundle.
	TrustBundleStatus(bundle string) (acked, rejected, connected int, current bool)
	// CertificateRootStatus counts the connected proxies whose certificate chains to the
	// root of fingerprint root; other names one that does not.
	CertificateRootStatus(root string) (on, connected int, other string)
}

// rotation is a root rotation under way, as RootNextSecretName records it.
type rotation struct {
	sec   *corev1.Secret
	next  *identity.KeyPair
	phase string
	since time.Time
	// waiting says what the phase waits for, when it did not move on.
	waiting string
	// started: this reconcile created it; its first step comes at the next.
	started bool
}

// issuingNew says whether the new root issues: from SwitchingIssuer on.
func (rot *rotation) issuingNew() bool {
	return rot.phase == PhaseSwitchingIssuer || rot.phase == PhaseAwaitingRecertification || rot.phase == PhaseRemovingOldRoot
}

// roots returns the root that issues and the trust bundle's roots, the issuing one
// first, with root the one in RootSecretName; rot may be nil (no rotation under way).
func (rot *rotation) roots(root *identity.KeyPair) (*identity.KeyPair, []*x509.Certificate) {
	switch {
	case rot == nil:
		return root, []*x509.Certificate{root.Cert}
	case rot.issuingNew():
		return rot.next, []*x509.Certificate{rot.next.Cert, root.Cert}
	}
	return root, []*x509.Certificate{root.Cert, rot.next.Cert}
}

// rotationDone is a root rotation that has just finished.
type rotationDone struct {
	root     *identity.KeyPair // now in RootSecretName
	replaced *x509.Certificate
}

// loadRotation reads the rotation under way, or returns nil when there is none.
func (r *CertificateReconciler) loadRotation(ctx context.Context, secrets caSecrets, td string, now time.Time) (*rotation, error) {
	sec, err := secrets.get(ctx, RootNextSecretName)
	if err != nil || sec == nil {
		return nil, err
	}
	kp, err := parseCASecret(sec)
	if err == nil {
		err = usableRoot(td, now)(kp)
	}
	if err != nil {
		return nil, fmt.Errorf("the new root of the rotation under way, Secret %s/%s: %w (delete the Secret to abandon the rotation)",
			r.Namespace, RootNextSecretName, err)
	}
	rot := &rotation{sec: sec, next: kp, phase: sec.Annotations[RotationPhaseAnnotation]}
	switch rot.phase {
	case PhaseAddingRoot, PhaseAwaitingBundle, PhaseSwitchingIssuer, PhaseAwaitingRecertification, PhaseRemovingOldRoot:
	default:
		rot.phase = PhaseAddingRoot // a Secret written by hand: start from the beginning, harmlessly
	}
	if rot.since, err = time.Parse(time.RFC3339, sec.Annotations[RotationSinceAnnotation]); err != nil {
		rot.since = now
	}
	return rot, nil
}

// startRootRotation creates the new root, in phase AddingRoot. Another replica starting
// one at the same time wins (AlreadyExists): its rotation is read back.
func (r *CertificateReconciler) startRootRotation(ctx context.Context, secrets caSecrets, spec *braidv1alpha1.MeshConfigSpec, now time.Time, why string) (*rotation, error) {
	td := spec.EffectiveTrustDomain()
	kp, err := identity.NewRoot(td, now, spec.EffectiveRootLifetime())
	if err != nil {
		return nil, err
	}
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: r.Namespace, Name: RootNextSecretName,
			Labels: map[string]string{"app.kubernetes.io/part-of": "braid", "app.kubernetes.io/component": "ca"},
			Annotations: map[string]string{
				RotationPhaseAnnotation: PhaseAddingRoot, RotationSinceAnnotation: now.UTC().Format(time.RFC3339),
			}},
		Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{corev1.TLSCertKey: kp.CertPEM, corev1.TLSPrivateKeyKey: kp.KeyPEM, secretCAKey: kp.CertPEM},
	}
	switch err := r.Client.Create(ctx, sec); {
	case apierrors.IsAlreadyExists(err):
		return r.loadRotation(ctx, secrets, td, now)
	case err != nil:
		return nil, fmt.Errorf("creating Secret %s/%s: %w", r.Namespace, RootNextSecretName, err)
	}
	r.event(ctx, "RootRotationStarted", "RotateRoot", "root rotation started (%s): new root %s added to the trust bundle beside %s",
		why, identity.Fingerprint(kp.Cert), RootSecretName)
	return &rotation{sec: sec, next: kp, phase: PhaseAddingRoot, since: now, started: true}, nil
}

// removeOldRoot makes the new root the root: it writes it into RootSecretName, then
// deletes RootNextSecretName. Both writes are conditional on the versions read, and a
// rotation interrupted between them finds the same root in both and only deletes.
func (r *CertificateReconciler) removeOldRoot(ctx context.Context, secrets caSecrets, rot *rotation) (*identity.KeyPair, error) {
	sec, err := secrets.get(ctx, RootSecretName)
	if err != nil {
		return nil, err
	}
	if sec == nil {
		return nil, fmt.Errorf("the Secret %s/%s vanished during a root rotation", r.Namespace, RootSecretName)
	}
	if cur, err := parseCASecret(sec); err != nil || !cur.Cert.Equal(rot.next.Cert) {
		sec.Data = map[string][]byte{
			corev1.TLSCertKey: rot.next.CertPEM, corev1.TLSPrivateKeyKey: rot.next.KeyPEM, secretCAKey: rot.next.CertPEM,
		}
		if err := r.Client.Update(ctx, sec); err != nil {
			return nil, fmt.Errorf("writing the new root into Secret %s/%s: %w", r.Namespace, RootSecretName, err)
		}
	}
	err = r.Client.Delete(ctx, rot.sec, client.Preconditions{UID: &rot.sec.UID, ResourceVersion: &rot.sec.ResourceVersion})
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("deleting Secret %s/%s: %w", r.Namespace, RootNextSecretName, err)
	}
	return rot.next, nil
}

// advance runs the step of rot's phase once st (the CA of that phase) is in force, and
// returns when to look again.
func (r *CertificateReconciler) advance(ctx context.Context, rot *rotation, st *ca.State, now time.Time) (wait time.Duration, err error) {
	fp := identity.Fingerprint(rot.next.Cert)
	if rot.started {
		return time.Second, nil
	}
	switch rot.phase {
	case PhaseAddingRoot:
		return r.setPhase(ctx, rot, PhaseAwaitingBundle, now, "RootAdded",
			"the trust bundle holds the old and the new root (%s); waiting until every proxy has it", fp)
	case PhaseAwaitingBundle:
		if rot.waiting = r.bundleNotDelivered(string(st.Bundle)); rot.waiting != "" {
			return rotationPoll, nil
		}
		if rot.waiting, err = r.bundleNotInConfigMaps(ctx, string(st.Bundle)); err != nil || rot.waiting != "" {
			return rotationPoll, err
		}
		return r.setPhase(ctx, rot, PhaseSwitchingIssuer, now, "TrustBundleDistributed",
			"every connected proxy runs the trust bundle with the new root %s; switching the issuer to it", fp)
	case PhaseSwitchingIssuer:
		return r.setPhase(ctx, rot, PhaseAwaitingRecertification, now, "IssuerSwitched",
			"a new intermediate signed by the new root %s signs; waiting until every proxy has renewed its certificate", fp)
	case PhaseAwaitingRecertification:
		if rot.waiting = r.notRecertified(rot, fp, st.WorkloadLifetime, now); rot.waiting != "" {
			return min(rotationPoll, rot.since.Add(st.WorkloadLifetime+expirySkew).Sub(now)), nil
		}
		return r.setPhase(ctx, rot, PhaseRemovingOldRoot, now, "ProxiesRecertified",
			"every proxy's certificate chains to the new root %s; removing the old root", fp)
	}
	return 0, nil
}

// bundleNotDelivered says which proxies lack bundle, or "" when every connected one
// runs it.
func (r *CertificateReconciler) bundleNotDelivered(bundle string) string {
	if r.Proxies == nil {
		return ""
	}
	acked, rejected, connected, current := r.Proxies.TrustBundleStatus(bundle)
	switch {
	case !current:
		return "the config server does not send the new trust bundle yet"
	case acked < connected:
		return fmt.Sprintf("%d of %d connected proxies run the new trust bundle (%d rejected it)", acked, connected, rejected)
	}
	return ""
}

// bundleNotInConfigMaps names a meshed namespace whose trust bundle ConfigMap does not
// hold bundle yet, or returns "" when all do: proxies verify the identity service
// against it, and the identity service's certificate moves to the new root next.
func (r *CertificateReconciler) bundleNotInConfigMaps(ctx context.Context, bundle string) (string, error) {
	if r.ConfigMaps == nil {
		return "", nil
	}
	var namespaces corev1.NamespaceList
	if err := r.Client.List(ctx, &namespaces, client.MatchingLabels{trustBundleNSLabel: trustBundleNSValue}); err != nil {
		return "", fmt.Errorf("listing the meshed namespaces: %w", err)
	}
	for _, ns := range namespaces.Items {
		if ns.DeletionTimestamp != nil {
			continue
		}
		var cm corev1.ConfigMap
		err := r.ConfigMaps.Get(ctx, client.ObjectKey{Namespace: ns.Name, Name: TrustBundleConfigMapName}, &cm)
		if client.IgnoreNotFound(err) != nil {
			return "", fmt.Errorf("reading the trust bundle ConfigMap of namespace %s: %w", ns.Name, err)
		}
		if cm.Data[TrustBundleKey] != bundle {
			return fmt.Sprintf("the trust bundle ConfigMap %s/%s does not hold the new bundle yet", ns.Name, TrustBundleConfigMapName), nil
		}
	}
	return "", nil
}

// notRecertified says which proxies still hold a certificate from the old root, or ""
// when none does: every connected proxy reports the new root, or a workload lifetime has
// passed since the switch (every certificate the old root signed has expired).
func (r *CertificateReconciler) notRecertified(rot *rotation, fp string, lifetime time.Duration, now time.Time) string {
	deadline := rot.since.Add(lifetime + expirySkew)
	if !now.Before(deadline) {
		return ""
	}
	if r.Proxies == nil {
		return fmt.Sprintf("every certificate from the old root expires by %s", deadline.UTC().Format(time.RFC3339))
	}
	on, connected, other := r.Proxies.CertificateRootStatus(fp)
	if on < connected {
		return fmt.Sprintf("%d of %d connected proxies hold a certificate from the new root (not %s yet); at the latest every certificate from the old root expires by %s",
			on, connected, other, deadline.UTC().Format(time.RFC3339))
	}
	return ""
}

// setPhase records phase on the rotation's Secret (an update conditional on the version
// read) and reports the step as an Event; the next step comes at the next reconcile.
func (r *CertificateReconciler) setPhase(ctx context.Context, rot *rotation, phase string, now time.Time, reason, format string, args ...any) (time.Duration, error) {
	sec := rot.sec.DeepCopy()
	if sec.Annotations == nil {
		sec.Annotations = map[string]string{}
	}
	sec.Annotations[RotationPhaseAnnotation] = phase
	sec.Annotations[RotationSinceAnnotation] = now.UTC().Format(time.RFC3339)
	if err := r.Client.Update(ctx, sec); err != nil {
		return 0, fmt.Errorf("recording root rotation phase %s: %w", phase, err)
	}
	rot.sec, rot.phase, rot.since, rot.waiting = sec, phase, now, ""
	r.event(ctx, reason, "RotateRoot", format, args...)
	return time.Second, nil
}

// rotationCondition reports rot (nil: none under way) or, when set, done on the MeshConfig.
func rotationCondition(rot *rotation, done *rotationDone) *metav1.Condition {
	switch {
	case rot != nil:
		msg := "root rotation to " + identity.Fingerprint(rot.next.Cert) + " at phase " + rot.phase
		if rot.waiting != "" {
			msg += ": " + rot.waiting
		}
		return &metav1.Condition{Type: ConditionRootRotation, Status: metav1.ConditionTrue, Reason: rot.phase, Message: msg}
	case done != nil:
		return &metav1.Condition{Type: ConditionRootRotation, Status: metav1.ConditionFalse, Reason: ReasonRotationComplete,
			Message: fmt.Sprintf("the root %s replaced %s", identity.Fingerprint(done.root.Cert), identity.Fingerprint(done.replaced))}
	}
	return nil
}

// rotateRequest is the value of the rotate annotation on mc, or "".
func rotateRequest(mc *braidv1alpha1.MeshConfig) string {
	if mc == nil {
		return ""
	}
	return mc.Annotations[braidv1alpha1.RotateAnnotation]
}

// clearRotateRequest removes the rotate annotation from mc (a patch conditional on the
// version read: a request made meanwhile is not lost).
func (r *CertificateReconciler) clearRotateRequest(ctx context.Context, mc *braidv1alpha1.MeshConfig) error {
	if rotateRequest(mc) == "" {
		return nil
	}
	before := mc.DeepCopy()
	delete(mc.Annotations, braidv1alpha1.RotateAnnotation)
	if err := r.Client.Patch(ctx, mc, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("removing the %s annotation: %w", braidv1alpha1.RotateAnnotation, err)
	}
	return nil
}

// event records a Normal Event on the MeshConfig, when there is one, and logs.
func (r *CertificateReconciler) event(ctx context.Context, reason, action, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	log.FromContext(ctx).Info("Mesh CA rotation step", "reason", reason, "message", msg)
	if r.Events == nil {
		return
	}
	mc := &braidv1alpha1.MeshConfig{}
	if err := r.Client.Get(ctx, meshConfigRequest.NamespacedName, mc); err == nil {
		r.Events.Eventf(mc, nil, corev1.EventTypeNormal, reason, action, "%s", msg)
	}
}
