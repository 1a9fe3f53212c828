package harness

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/braidmesh/braid/internal/identity"
)

// TestCA is a mesh certificate authority for tests: a root, an issuing intermediate, and
// workload certificates signed the way the operator signs them.
type TestCA struct {
	TrustDomain string
	Root        *identity.KeyPair
	Issuer      *identity.Issuer
	// Bundle is the PEM trust bundle (the root).
	Bundle []byte
}

// NewTestCA creates a CA for trustDomain.
func NewTestCA(trustDomain string) (*TestCA, error) {
	now := time.Now()
	root, err := identity.NewRoot(trustDomain, now, 24*time.Hour)
	if err != nil {
		return nil, err
	}
	inter, err := identity.NewIntermediate(root, trustDomain, now, 12*time.Hour)
	if err != nil {
		return nil, err
	}
	iss, err := identity.NewIssuer(inter, nil, []*x509.Certificate{root.Cert}, trustDomain, now)
	if err != nil {
		return nil, err
	}
	return &TestCA{TrustDomain: trustDomain, Root: root, Issuer: iss, Bundle: identity.BundlePEM(root.Cert)}, nil
}

// Workload is a workload certificate: the chain and key as PEM, and as a tls.Certificate.
type Workload struct {
	ID               string
	ChainPEM, KeyPEM []byte
	TLS              *tls.Certificate
}

// Issue signs a certificate for spiffe://<td>/ns/<namespace>/sa/<serviceAccount>.
func (c *TestCA) Issue(namespace, serviceAccount string, lifetime time.Duration) (*Workload, error) {
	id := identity.ID{TrustDomain: c.TrustDomain, Namespace: namespace, ServiceAccount: serviceAccount}
	csr, key, err := identity.NewCSR(id)
	if err != nil {
		return nil, err
	}
	chain, _, err := c.Issuer.Sign(csr, id, time.Now(), lifetime)
	if err != nil {
		return nil, fmt.Errorf("signing %s: %w", id, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	cert, err := tls.X509KeyPair(chain, keyPEM)
	if err != nil {
		return nil, err
	}
	return &Workload{ID: id.String(), ChainPEM: chain, KeyPEM: keyPEM, TLS: &cert}, nil
}

// ProxyArgs issues a certificate for namespace/serviceAccount, writes it with its key and
// the trust bundle into dir, and returns the braid-proxy flags that use them.
func (c *TestCA) ProxyArgs(dir, namespace, serviceAccount string) ([]string, error) {
	w, err := c.Issue(namespace, serviceAccount, time.Hour)
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{"tls.crt": w.ChainPEM, "tls.key": w.KeyPEM, "ca.crt": c.Bundle}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return nil, fmt.Errorf("writing %s: %w", name, err)
		}
	}
	return []string{"--cert-file", filepath.Join(dir, "tls.crt"), "--key-file", filepath.Join(dir, "tls.key"),
		"--trust-bundle-file", filepath.Join(dir, "ca.crt")}, nil
}
