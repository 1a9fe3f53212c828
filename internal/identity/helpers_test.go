package identity_test

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/url"
	"testing"
	"time"

	"github.com/braidmesh/braid/internal/identity"
)

const td = "cluster.local"

// t0 is the fixed "now" of every test.
var t0 = time.Date(2026, time.March, 1, 12, 0, 0, 0, time.UTC)

var web = identity.ID{TrustDomain: td, Namespace: "shop", ServiceAccount: "web"}

// pki is a root, an intermediate signed by it and an Issuer on the intermediate.
type pki struct {
	root, inter *identity.KeyPair
	issuer      *identity.Issuer
}

func newPKI(tb testing.TB, rootLife, interLife time.Duration) pki {
	tb.Helper()
	root, err := identity.NewRoot(td, t0, rootLife)
	if err != nil {
		tb.Fatal(err)
	}
	inter, err := identity.NewIntermediate(root, td, t0, interLife)
	if err != nil {
		tb.Fatal(err)
	}
	issuer, err := identity.NewIssuer(inter, nil, []*x509.Certificate{root.Cert}, td, t0)
	if err != nil {
		tb.Fatal(err)
	}
	return pki{root: root, inter: inter, issuer: issuer}
}

func defaultPKI(tb testing.TB) pki {
	tb.Helper()
	return newPKI(tb, 365*24*time.Hour, 30*24*time.Hour)
}

func newCSR(tb testing.TB, id identity.ID) []byte {
	tb.Helper()
	der, _, err := identity.NewCSR(id)
	if err != nil {
		tb.Fatal(err)
	}
	return der
}

// makeCSR signs tmpl with key.
func makeCSR(tb testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	tb.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		tb.Fatal(err)
	}
	return der
}

func uris(ids ...identity.ID) []*url.URL {
	out := make([]*url.URL, 0, len(ids))
	for _, id := range ids {
		out = append(out, id.URI())
	}
	return out
}

// parseChain parses the PEM chain Sign returns.
func parseChain(tb testing.TB, chainPEM []byte) []*x509.Certificate {
	tb.Helper()
	var certs []*x509.Certificate
	for rest := chainPEM; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			if len(rest) != 0 {
				tb.Fatalf("trailing data after the chain: %q", rest)
			}
			break
		}
		if b.Type != "CERTIFICATE" {
			tb.Fatalf("PEM block %q in the chain", b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			tb.Fatal(err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		tb.Fatal("empty chain")
	}
	return certs
}

// verify verifies leaf against roots through intermediates at now, for usage.
func verify(leaf *x509.Certificate, intermediates, roots []*x509.Certificate, now time.Time, usage x509.ExtKeyUsage) error {
	rp, ip := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range roots {
		rp.AddCert(c)
	}
	for _, c := range intermediates {
		ip.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: rp, Intermediates: ip, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}})
	return err
}

// reason is the Reason of err's *CSRError, or "" when it has none.
func reason(err error) string {
	var e *identity.CSRError
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}
