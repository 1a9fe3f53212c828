package identity

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"time"
)

// Issuer signs workload certificates with an issuing CA for one trust domain. It is
// immutable, so one Issuer may sign from many goroutines.
type Issuer struct {
	issuing     *KeyPair
	chain       []*x509.Certificate // between issuing and the root, root excluded
	chainPEM    []byte              // issuing then chain, appended after every leaf
	trustDomain string
}

// NewIssuer returns an Issuer that signs with issuing, which must be a CA certificate (with
// the certificate signing key usage) and its key. chain are the certificates between
// issuing and a root, in order; it may be empty when issuing is signed by a root or is a
// root itself, and a root at its end is dropped. NewIssuer checks that issuing chains to
// one of roots at now, for both server and client authentication, through exactly chain.
func NewIssuer(issuing *KeyPair, chain []*x509.Certificate, roots []*x509.Certificate, trustDomain string, now time.Time) (*Issuer, error) {
	if err := validateTrustDomain(trustDomain); err != nil {
		return nil, fmt.Errorf("creating issuer: %w", err)
	}
	if err := checkCA(issuing, trustDomain, now); err != nil {
		return nil, fmt.Errorf("creating issuer: issuing certificate: %w", err)
	}
	chain, err := checkChain(issuing.Cert, chain, roots, now)
	if err != nil {
		return nil, fmt.Errorf("creating issuer for %q: %w", trustDomain, err)
	}
	kp := *issuing // the Issuer keeps its own copies: it never changes
	i := &Issuer{issuing: &kp, chain: slices.Clone(chain), trustDomain: trustDomain}
	if !isIn(roots, issuing.Cert) {
		i.chainPEM = pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: issuing.Cert.Raw})
	}
	for _, c := range chain {
		i.chainPEM = append(i.chainPEM, pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: c.Raw})...)
	}
	return i, nil
}

// checkChain checks that issuing chains to roots through chain, returning chain without
// trailing roots.
func checkChain(issuing *x509.Certificate, chain, roots []*x509.Certificate, now time.Time) ([]*x509.Certificate, error) {
	if len(roots) == 0 {
		return nil, errors.New("no root certificates")
	}
	for len(chain) > 0 && isIn(roots, chain[len(chain)-1]) {
		chain = chain[:len(chain)-1]
	}
	if len(chain) > 0 && isIn(roots, issuing) {
		return nil, errors.New("the issuing certificate is a root: the chain must be empty")
	}
	rootPool, interPool := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		if r == nil {
			return nil, errors.New("nil root certificate")
		}
		rootPool.AddCert(r)
	}
	child := issuing
	for n, c := range chain {
		if c == nil {
			return nil, fmt.Errorf("chain certificate %d is nil", n)
		}
		if err := child.CheckSignatureFrom(c); err != nil {
			return nil, fmt.Errorf("chain certificate %d (%q) did not sign %q: %w", n, c.Subject, child.Subject, err)
		}
		interPool.AddCert(c)
		child = c
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		opts := x509.VerifyOptions{Roots: rootPool, Intermediates: interPool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}}
		if _, err := issuing.Verify(opts); err != nil {
			return nil, fmt.Errorf("issuing certificate %q does not chain to the roots at %v: %w", issuing.Subject, now.UTC(), err)
		}
	}
	return chain, nil
}

func isIn(certs []*x509.Certificate, c *x509.Certificate) bool {
	for _, x := range certs {
		if x != nil && x.Equal(c) {
			return true
		}
	}
	return false
}

// TrustDomain returns the trust domain the Issuer signs for.
func (i *Issuer) TrustDomain() string { return i.trustDomain }

// NotAfter returns when the issuing certificate expires; no leaf outlives it.
func (i *Issuer) NotAfter() time.Time { return i.issuing.Cert.NotAfter }

// Sign checks csrDER for id (see CheckCSR) and signs a workload certificate for it: a
// random 128-bit serial, valid from now-1m (not before the issuing certificate) to
// min(now+lifetime, the issuing certificate's NotAfter), KeyUsage DigitalSignature (and
// KeyEncipherment for RSA keys), ExtKeyUsage ServerAuth and ClientAuth, CA:FALSE, an empty
// subject and the one URI SAN id.URI(). It returns the leaf followed by the chain (the
// issuing certificate unless it is a root, then the intermediates up to but excluding the
// root) as PEM, and the leaf's NotAfter. CSR errors are *CSRError, wrapped.
func (i *Issuer) Sign(csrDER []byte, id ID, now time.Time, lifetime time.Duration) (chainPEM []byte, notAfter time.Time, err error) {
	if err := i.checkSignRequest(id, now, lifetime); err != nil {
		return nil, time.Time{}, fmt.Errorf("signing a certificate for %s: %w", id, err)
	}
	csr, err := CheckCSR(csrDER, id)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("signing a certificate for %s: %w", id, err)
	}
	tmpl, err := i.leafTemplate(csr, id, now, lifetime)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("signing a certificate for %s: %w", id, err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, i.issuing.Cert, csr.PublicKey, i.issuing.Key)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("signing a certificate for %s: %w", id, err)
	}
	var out bytes.Buffer
	out.Grow(pemLen(len(der)) + len(i.chainPEM))
	if err := pem.Encode(&out, &pem.Block{Type: pemCertificate, Bytes: der}); err != nil {
		return nil, time.Time{}, fmt.Errorf("encoding the certificate for %s: %w", id, err)
	}
	out.Write(i.chainPEM)
	return out.Bytes(), tmpl.NotAfter, nil
}

func (i *Issuer) checkSignRequest(id ID, now time.Time, lifetime time.Duration) error {
	if i == nil || i.issuing == nil {
		return errors.New("the issuer was not made by NewIssuer")
	}
	if err := id.Validate(); err != nil {
		return err
	}
	if id.TrustDomain != i.trustDomain {
		return fmt.Errorf("trust domain %q is not the issuer's %q", id.TrustDomain, i.trustDomain)
	}
	if lifetime <= 0 {
		return fmt.Errorf("lifetime %v is not positive", lifetime)
	}
	c := i.issuing.Cert
	if now.Before(c.NotBefore) || !now.Before(c.NotAfter) {
		return fmt.Errorf("the issuing certificate is valid from %v to %v, not at %v", c.NotBefore.UTC(), c.NotAfter.UTC(), now.UTC())
	}
	return nil
}

func (i *Issuer) leafTemplate(csr *x509.CertificateRequest, id ID, now time.Time, lifetime time.Duration) (*x509.Certificate, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	usage := x509.KeyUsageDigitalSignature
	if _, ok := csr.PublicKey.(*rsa.PublicKey); ok {
		usage |= x509.KeyUsageKeyEncipherment
	}
	// Certificates hold whole seconds: truncate, so the NotAfter returned is the leaf's.
	notBefore := latest(now.Add(-backdate), i.issuing.Cert.NotBefore).UTC().Truncate(time.Second)
	notAfter := earliest(now.Add(lifetime), i.issuing.Cert.NotAfter).UTC().Truncate(time.Second)
	if !notAfter.After(notBefore) {
		return nil, fmt.Errorf("validity would end (%v) before it starts (%v)", notAfter, notBefore)
	}
	return &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              usage,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		URIs:                  []*url.URL{id.URI()},
		AuthorityKeyId:        i.issuing.Cert.SubjectKeyId,
	}, nil
}

// pemLen is the length of the PEM encoding of a CERTIFICATE of n bytes: 64 base64
// characters and a newline per line, plus the header and footer lines.
func pemLen(n int) int {
	b64 := (n + 2) / 3 * 4
	return b64 + (b64+63)/64 + len("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
}
