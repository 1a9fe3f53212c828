package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// SignServing issues the operator's own serving certificate: a fresh ECDSA P-256 key,
// the URI SAN id.URI() plus dnsNames, ExtKeyUsage ServerAuth and ClientAuth, valid like
// a workload leaf (see Sign) for lifetime. Unlike Sign it takes no CSR: the key is made
// here and never leaves the returned certificate. The chain is the leaf followed by the
// issuer's chain, as Sign returns it.
func (i *Issuer) SignServing(id ID, dnsNames []string, now time.Time, lifetime time.Duration) (*tls.Certificate, error) {
	if err := i.checkSignRequest(id, now, lifetime); err != nil {
		return nil, fmt.Errorf("signing a serving certificate for %s: %w", id, err)
	}
	for _, n := range dnsNames {
		if err := validateSubdomain(n); err != nil {
			return nil, fmt.Errorf("signing a serving certificate for %s: DNS name %q: %w", id, n, err)
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("signing a serving certificate for %s: generating key: %w", id, err)
	}
	tmpl, err := i.leafTemplate(&x509.CertificateRequest{PublicKey: key.Public()}, id, now, lifetime)
	if err != nil {
		return nil, fmt.Errorf("signing a serving certificate for %s: %w", id, err)
	}
	tmpl.URIs = []*url.URL{id.URI()}
	tmpl.DNSNames = dnsNames
	der, err := x509.CreateCertificate(rand.Reader, tmpl, i.issuing.Cert, key.Public(), i.issuing.Key)
	if err != nil {
		return nil, fmt.Errorf("signing a serving certificate for %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing the serving certificate just signed: %w", err)
	}
	cert := &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
	if len(i.chainPEM) > 0 { // empty when the issuing certificate is itself a root
		cert.Certificate = append(cert.Certificate, i.issuing.Cert.Raw)
		for _, c := range i.chain {
			cert.Certificate = append(cert.Certificate, c.Raw)
		}
	}
	return cert, nil
}

// Issuing returns the issuing CA certificate.
func (i *Issuer) Issuing() *x509.Certificate { return i.issuing.Cert }

// ParseCertificates parses PEM data made only of CERTIFICATE blocks, at least one, as in
// tls.crt and ca.crt of a cert-manager Secret.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	certs, err := parseCertificatesPEM(data)
	if err != nil {
		return nil, fmt.Errorf("parsing certificates: %w", err)
	}
	return certs, nil
}

// Fingerprint is the SHA-256 of the certificate's DER, as colon-separated uppercase hex
// pairs (the form openssl x509 -fingerprint -sha256 prints).
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	h := strings.ToUpper(hex.EncodeToString(sum[:]))
	var b strings.Builder
	for i := 0; i < len(h); i += 2 {
		if i > 0 {
			b.WriteByte(':')
		}
		b.WriteString(h[i : i+2])
	}
	return b.String()
}
