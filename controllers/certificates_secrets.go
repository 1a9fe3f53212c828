package controllers

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/braidmesh/braid/internal/identity"
)

// The operator's own CA, in the cert-manager layout (tls.crt, tls.key, ca.crt), in the
// operator's namespace.
const (
	// RootSecretName holds the root: its certificate and key. The root is created once
	// and kept while it is valid: every proxy trusts it.
	RootSecretName = "braid-ca-root"
	// IssuerSecretName holds the issuing intermediate (signed by the root, ca.crt is the
	// root). It is renewed at two thirds of its lifetime.
	IssuerSecretName = "braid-ca-issuer"

	secretCAKey = "ca.crt"
)

// errCAInvalid marks a CA Secret whose content cannot be used; the message says why.
var errCAInvalid = errors.New("invalid")

// caSecrets reads and writes the CA Secrets of one namespace. Reads go to the API server
// (not a cache): two replicas race to create them, and the loser must see the winner's.
type caSecrets struct {
	reader    client.Reader
	writer    client.Client
	namespace string
}

// get returns the Secret, or nil when there is none.
func (s caSecrets) get(ctx context.Context, name string) (*corev1.Secret, error) {
	sec := &corev1.Secret{}
	err := s.reader.Get(ctx, client.ObjectKey{Namespace: s.namespace, Name: name}, sec)
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("reading Secret %s/%s: %w", s.namespace, name, err)
	}
	return sec, nil
}

// ensure returns the key pair in Secret name when usable says it is, and otherwise
// writes the one create makes: it creates the Secret when absent (another replica
// creating it first wins: its pair is read back and used) and replaces an unusable one
// (an update conditional on the version read, so a concurrent writer wins too).
// replaced says why an existing pair was replaced, for the caller to report.
func (s caSecrets) ensure(ctx context.Context, name string, usable func(*identity.KeyPair) error,
	create func() (*identity.KeyPair, []byte, error)) (kp *identity.KeyPair, replaced error, err error) {
	for range 2 { // a lost creation race reads the winner's Secret on the second pass
		sec, err := s.get(ctx, name)
		if err != nil {
			return nil, nil, err
		}
		if sec != nil {
			kp, why := parseCASecret(sec)
			if why == nil {
				why = usable(kp)
			}
			if why == nil {
				return kp, nil, nil
			}
			replaced = why
		}
		kp, caPEM, err := create()
		if err != nil {
			return nil, nil, err
		}
		data := map[string][]byte{corev1.TLSCertKey: kp.CertPEM, corev1.TLSPrivateKeyKey: kp.KeyPEM, secretCAKey: caPEM}
		if sec != nil {
			sec.Data = data
			if err := s.writer.Update(ctx, sec); err != nil {
				return nil, nil, fmt.Errorf("replacing Secret %s/%s: %w", s.namespace, name, err)
			}
			return kp, replaced, nil
		}
		err = s.writer.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: s.namespace, Name: name, Labels: map[string]string{
				"app.kubernetes.io/part-of": "braid", "app.kubernetes.io/component": "ca",
			}},
			Type: corev1.SecretTypeTLS,
			Data: data,
		})
		switch {
		case err == nil:
			return kp, nil, nil
		case !apierrors.IsAlreadyExists(err):
			return nil, nil, fmt.Errorf("creating Secret %s/%s: %w", s.namespace, name, err)
		}
	}
	return nil, nil, fmt.Errorf("the Secret %s/%s was created concurrently with content this operator cannot use", s.namespace, name)
}

func parseCASecret(sec *corev1.Secret) (*identity.KeyPair, error) {
	kp, err := identity.ParseKeyPair(sec.Data[corev1.TLSCertKey], sec.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errCAInvalid, err)
	}
	return kp, nil
}

// usableRoot accepts a self-signed CA of trust domain td that is valid at now.
func usableRoot(td string, now time.Time) func(*identity.KeyPair) error {
	return func(kp *identity.KeyPair) error {
		c := kp.Cert
		if err := checkCACert(c, td, now); err != nil {
			return err
		}
		if err := c.CheckSignatureFrom(c); err != nil {
			return fmt.Errorf("%w: the root is not self-signed: %w", errCAInvalid, err)
		}
		return nil
	}
}

// usableIntermediate accepts a CA of trust domain td signed by root, before two thirds
// of its lifetime.
func usableIntermediate(root *x509.Certificate, td string, now time.Time) func(*identity.KeyPair) error {
	return func(kp *identity.KeyPair) error {
		c := kp.Cert
		if err := checkCACert(c, td, now); err != nil {
			return err
		}
		if err := c.CheckSignatureFrom(root); err != nil {
			return fmt.Errorf("%w: not signed by the current root: %w", errCAInvalid, err)
		}
		if at := caRenewAt(c); !now.Before(at) {
			return fmt.Errorf("due for renewal since %v (two thirds of its lifetime)", at.UTC())
		}
		return nil
	}
}

func checkCACert(c *x509.Certificate, td string, now time.Time) error {
	if !c.BasicConstraintsValid || !c.IsCA || c.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("%w: %q is not a CA that may sign certificates", errCAInvalid, c.Subject)
	}
	if now.Before(c.NotBefore) || !now.Before(c.NotAfter) {
		return fmt.Errorf("%w: %q is valid from %v to %v, not now", errCAInvalid, c.Subject, c.NotBefore.UTC(), c.NotAfter.UTC())
	}
	for _, u := range c.URIs {
		if u.Scheme == "spiffe" && u.Host != td {
			return fmt.Errorf("%w: %q is for trust domain %q, not %q", errCAInvalid, c.Subject, u.Host, td)
		}
	}
	return nil
}

// renewAt is two thirds into the certificate's validity.
func caRenewAt(c *x509.Certificate) time.Time {
	return c.NotBefore.Add(c.NotAfter.Sub(c.NotBefore) * 2 / 3)
}
