package identity

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"time"
)

const (
	pemCertificate = "CERTIFICATE"
	pemPrivateKey  = "PRIVATE KEY"

	// backdate is how far before "now" certificates start, to absorb clock skew between
	// the signer and the peers that verify.
	backdate = time.Minute
)

// KeyPair is a certificate with its private key.
type KeyPair struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte // the certificate alone
	KeyPEM  []byte // PKCS#8 "PRIVATE KEY"
}

// NewRoot creates a self-signed ECDSA P-256 root CA valid from now-1m to now+lifetime:
// CN "braid root CA <trust domain>", IsCA, MaxPathLen 1, KeyUsage CertSign|CRLSign,
// SubjectKeyId set, and the trust domain as a URI SAN spiffe://<td>.
func NewRoot(trustDomain string, now time.Time, lifetime time.Duration) (*KeyPair, error) {
	if err := validateTrustDomain(trustDomain); err != nil {
		return nil, fmt.Errorf("creating root CA: %w", err)
	}
	if lifetime <= 0 {
		return nil, fmt.Errorf("creating root CA: lifetime %v is not positive", lifetime)
	}
	kp, err := newCA(caRequest{
		commonName:  "braid root CA " + trustDomain,
		trustDomain: trustDomain,
		notBefore:   now.Add(-backdate),
		notAfter:    now.Add(lifetime),
		maxPathLen:  1,
	})
	if err != nil {
		return nil, fmt.Errorf("creating root CA for %q: %w", trustDomain, err)
	}
	return kp, nil
}

// NewIntermediate creates an issuing CA signed by parent: ECDSA P-256, IsCA, MaxPathLen 0
// (MaxPathLenZero), KeyUsage CertSign|CRLSign, valid from now-1m (not before the parent)
// to now+lifetime, at most until the parent expires. The parent must be a CA allowed to
// sign CA certificates, valid at now, and (if it names one) of the same trust domain.
func NewIntermediate(parent *KeyPair, trustDomain string, now time.Time, lifetime time.Duration) (*KeyPair, error) {
	if err := checkIntermediateRequest(parent, trustDomain, now, lifetime); err != nil {
		return nil, fmt.Errorf("creating intermediate CA: %w", err)
	}
	kp, err := newCA(caRequest{
		commonName:  "braid intermediate CA " + trustDomain,
		trustDomain: trustDomain,
		notBefore:   latest(now.Add(-backdate), parent.Cert.NotBefore),
		notAfter:    earliest(now.Add(lifetime), parent.Cert.NotAfter),
		maxPathLen:  0,
		parent:      parent,
	})
	if err != nil {
		return nil, fmt.Errorf("creating intermediate CA for %q: %w", trustDomain, err)
	}
	return kp, nil
}

func checkIntermediateRequest(parent *KeyPair, trustDomain string, now time.Time, lifetime time.Duration) error {
	if err := validateTrustDomain(trustDomain); err != nil {
		return err
	}
	if lifetime <= 0 {
		return fmt.Errorf("lifetime %v is not positive", lifetime)
	}
	if err := checkCA(parent, trustDomain, now); err != nil {
		return fmt.Errorf("parent: %w", err)
	}
	if parent.Cert.MaxPathLen == 0 && parent.Cert.MaxPathLenZero {
		return fmt.Errorf("parent %q has path length 0: it may not sign CA certificates", parent.Cert.Subject)
	}
	return nil
}

// checkCA checks that kp is a CA certificate with its key that may sign certificates at
// now, and that names no other trust domain than td.
func checkCA(kp *KeyPair, td string, now time.Time) error {
	if kp == nil || kp.Cert == nil || kp.Key == nil {
		return errors.New("missing certificate or key")
	}
	c := kp.Cert
	if !c.BasicConstraintsValid || !c.IsCA {
		return fmt.Errorf("%q is not a CA certificate", c.Subject)
	}
	if c.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("%q does not have the certificate signing key usage", c.Subject)
	}
	if now.Before(c.NotBefore) || !now.Before(c.NotAfter) {
		return fmt.Errorf("%q is valid from %v to %v, not at %v", c.Subject, c.NotBefore.UTC(), c.NotAfter.UTC(), now.UTC())
	}
	if err := checkKeyMatches(c, kp.Key.Public()); err != nil {
		return err
	}
	for _, u := range c.URIs {
		if u.Scheme == spiffeScheme && u.Host != td {
			return fmt.Errorf("%q belongs to trust domain %q, not %q", c.Subject, u.Host, td)
		}
	}
	return nil
}

type caRequest struct {
	commonName, trustDomain string
	notBefore, notAfter     time.Time
	maxPathLen              int
	parent                  *KeyPair // nil for a self-signed root
}

func newCA(r caRequest) (*KeyPair, error) {
	if !r.notAfter.After(r.notBefore) {
		return nil, fmt.Errorf("validity would end (%v) before it starts (%v)", r.notAfter.UTC(), r.notBefore.UTC())
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating key: %w", err)
	}
	skid, err := subjectKeyID(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: r.commonName},
		NotBefore:             r.notBefore,
		NotAfter:              r.notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            r.maxPathLen,
		MaxPathLenZero:        r.maxPathLen == 0,
		SubjectKeyId:          skid,
		URIs:                  []*url.URL{{Scheme: spiffeScheme, Host: r.trustDomain}},
	}
	parentCert, parentKey := tmpl, crypto.Signer(key)
	if r.parent != nil {
		parentCert, parentKey = r.parent.Cert, r.parent.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parentCert, key.Public(), parentKey)
	if err != nil {
		return nil, fmt.Errorf("signing certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing the certificate just created: %w", err)
	}
	return newKeyPair(cert, key)
}

// newKeyPair fills in the PEM encodings of cert and key.
func newKeyPair(cert *x509.Certificate, key crypto.Signer) (*KeyPair, error) {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding private key: %w", err)
	}
	return &KeyPair{
		Cert:    cert,
		Key:     key,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: cert.Raw}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: pemPrivateKey, Bytes: keyDER}),
	}, nil
}

// ParseKeyPair reads a cert-manager style pair. certPEM (tls.crt) holds one or more
// CERTIFICATE blocks: the first is the pair's, the others (its chain) must parse but are
// otherwise ignored. keyPEM (tls.key) holds one private key as PKCS#8 "PRIVATE KEY",
// PKCS#1 "RSA PRIVATE KEY" or SEC 1 "EC PRIVATE KEY"; it must match the certificate. The
// returned pair's CertPEM is the first certificate alone and its KeyPEM is PKCS#8.
func ParseKeyPair(certPEM, keyPEM []byte) (*KeyPair, error) {
	certs, err := parseCertificatesPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("parsing key pair certificate: %w", err)
	}
	key, err := parsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("parsing key pair private key: %w", err)
	}
	if err := checkKeyMatches(certs[0], key.Public()); err != nil {
		return nil, fmt.Errorf("parsing key pair: %w", err)
	}
	kp, err := newKeyPair(certs[0], key)
	if err != nil {
		return nil, fmt.Errorf("parsing key pair: %w", err)
	}
	return kp, nil
}

// parseCertificatesPEM parses every block of data, which must all be certificates; there
// must be at least one.
func parseCertificatesPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			if len(bytes.TrimSpace(rest)) != 0 {
				return nil, fmt.Errorf("data after PEM block %d is not PEM", len(certs))
			}
			break
		}
		if block.Type != pemCertificate {
			return nil, fmt.Errorf("PEM block %d is %q, want %q", len(certs), block.Type, pemCertificate)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs), err)
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		return nil, errors.New("no CERTIFICATE PEM block")
	}
	return certs, nil
}

// parsePrivateKeyPEM parses the one private key in data ("EC PARAMETERS" blocks, as
// written by openssl ecparam, are skipped).
func parsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	var key crypto.Signer
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			if len(bytes.TrimSpace(rest)) != 0 {
				return nil, errors.New("data after the PEM blocks is not PEM")
			}
			break
		}
		if block.Type == "EC PARAMETERS" {
			continue
		}
		if key != nil {
			return nil, fmt.Errorf("more than one key: unexpected %q PEM block", block.Type)
		}
		k, err := parsePrivateKeyBlock(block)
		if err != nil {
			return nil, err
		}
		key = k
	}
	if key == nil {
		return nil, errors.New("no private key PEM block")
	}
	return key, nil
}

func parsePrivateKeyBlock(block *pem.Block) (crypto.Signer, error) {
	var (
		key any
		err error
	)
	switch block.Type {
	case pemPrivateKey:
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q is not a private key", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", block.Type, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s: a %T cannot sign", block.Type, key)
	}
	return signer, nil
}

// checkKeyMatches checks that pub is the public key of cert.
func checkKeyMatches(cert *x509.Certificate, pub crypto.PublicKey) error {
	k, ok := pub.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !k.Equal(cert.PublicKey) {
		return fmt.Errorf("the private key does not match the public key of certificate %q", cert.Subject)
	}
	return nil
}

// BundlePEM encodes roots as a PEM trust bundle, in order, skipping nil and repeated certificates.
func BundlePEM(roots ...*x509.Certificate) []byte {
	var out []byte
	for i, c := range roots {
		if c == nil || isRepeated(roots[:i], c) {
			continue
		}
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: c.Raw})...)
	}
	return out
}

func isRepeated(seen []*x509.Certificate, c *x509.Certificate) bool {
	for _, s := range seen {
		if s != nil && s.Equal(c) {
			return true
		}
	}
	return false
}

// subjectKeyID is RFC 7093 method 1: the leftmost 160 bits of the SHA-256 hash of the
// subjectPublicKey bits.
func subjectKeyID(pub *ecdsa.PublicKey) ([]byte, error) {
	bits, err := pub.Bytes()
	if err != nil {
		return nil, fmt.Errorf("encoding public key: %w", err)
	}
	sum := sha256.Sum256(bits)
	return sum[:20], nil
}

// randomSerial returns a positive random 128-bit serial number.
func randomSerial() (*big.Int, error) {
	var b [16]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("generating serial number: %w", err)
		}
		if n := new(big.Int).SetBytes(b[:]); n.Sign() > 0 {
			return n, nil
		}
	}
}

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
