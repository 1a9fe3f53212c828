package identity_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/braidmesh/braid/internal/identity"
)

func TestSign(t *testing.T) {
	p := defaultPKI(t)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		csr   []byte
		usage x509.KeyUsage
	}{
		{"ECDSA", makeCSR(t, ecKey, &x509.CertificateRequest{URIs: uris(web)}), x509.KeyUsageDigitalSignature},
		{"RSA", makeCSR(t, rsaKey, &x509.CertificateRequest{URIs: uris(web)}), x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment},
	} {
		t.Run(tc.name, func(t *testing.T) {
			chain, notAfter, err := p.issuer.Sign(tc.csr, web, t0, 24*time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			certs := parseChain(t, chain)
			leaf := certs[0]
			checkLeaf(t, leaf, p.inter.Cert)
			if !leaf.NotBefore.Equal(t0.Add(-time.Minute)) || !leaf.NotAfter.Equal(t0.Add(24*time.Hour)) || !notAfter.Equal(leaf.NotAfter) {
				t.Errorf("validity %v to %v (returned %v), want %v to %v", leaf.NotBefore, leaf.NotAfter, notAfter, t0.Add(-time.Minute), t0.Add(24*time.Hour))
			}
			if leaf.KeyUsage != tc.usage {
				t.Errorf("KeyUsage = %b, want %b", leaf.KeyUsage, tc.usage)
			}
			csr, err := x509.ParseCertificateRequest(tc.csr)
			if err != nil {
				t.Fatal(err)
			}
			if k, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(csr.PublicKey) {
				t.Error("the leaf does not certify the CSR's key")
			}
		})
	}
}

// checkLeaf checks the fields of a workload certificate issued by issuing.
func checkLeaf(t *testing.T, leaf, issuing *x509.Certificate) {
	t.Helper()
	if n := leaf.SerialNumber; n.Sign() <= 0 || n.BitLen() > 128 {
		t.Errorf("serial %v is not a positive 128-bit number", n)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != web.String() {
		t.Errorf("URIs = %v, want [%s]", leaf.URIs, web)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
		t.Errorf("other SANs: %v %v %v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
	}
	if !bytes.Equal(leaf.RawSubject, []byte{0x30, 0}) {
		t.Errorf("subject %q is not empty", leaf.Subject)
	}
	for _, e := range leaf.Extensions {
		if e.Id.String() == "2.5.29.17" && !e.Critical {
			t.Error("subjectAltName is not critical although the subject is empty (RFC 5280 4.2.1.6)")
		}
	}
	checkLeafUsage(t, leaf, issuing)
}

// checkLeafUsage checks what a workload certificate may be used for, and by whom it is issued.
func checkLeafUsage(t *testing.T, leaf, issuing *x509.Certificate) {
	t.Helper()
	if !leaf.BasicConstraintsValid || leaf.IsCA {
		t.Errorf("basic constraints valid=%t CA=%t, want CA:FALSE", leaf.BasicConstraintsValid, leaf.IsCA)
	}
	if want := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}; len(leaf.ExtKeyUsage) != 2 ||
		leaf.ExtKeyUsage[0] != want[0] || leaf.ExtKeyUsage[1] != want[1] || len(leaf.UnknownExtKeyUsage) != 0 {
		t.Errorf("ExtKeyUsage = %v, want %v", leaf.ExtKeyUsage, want)
	}
	if !bytes.Equal(leaf.AuthorityKeyId, issuing.SubjectKeyId) {
		t.Errorf("AuthorityKeyId %x, want %x", leaf.AuthorityKeyId, issuing.SubjectKeyId)
	}
	if err := leaf.CheckSignatureFrom(issuing); err != nil {
		t.Errorf("not signed by the issuing CA: %v", err)
	}
}

func TestSignTruncatesToSeconds(t *testing.T) {
	p := defaultPKI(t)
	now := t0.Add(1500 * time.Millisecond)
	chain, notAfter, err := p.issuer.Sign(newCSR(t, web), web, now, 90*time.Minute+250*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	leaf := parseChain(t, chain)[0]
	if !notAfter.Equal(leaf.NotAfter) || !notAfter.Equal(t0.Add(90*time.Minute+time.Second)) {
		t.Fatalf("returned NotAfter %v, leaf %v, want %v", notAfter, leaf.NotAfter, t0.Add(90*time.Minute+time.Second))
	}
}

func TestSignSerialsDiffer(t *testing.T) {
	p := defaultPKI(t)
	csr := newCSR(t, web)
	seen := map[string]bool{}
	for range 16 {
		chain, _, err := p.issuer.Sign(csr, web, t0, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		s := parseChain(t, chain)[0].SerialNumber.String()
		if seen[s] {
			t.Fatalf("serial %s issued twice", s)
		}
		seen[s] = true
	}
}

func TestSignRejects(t *testing.T) {
	p := newPKI(t, 365*24*time.Hour, 10*time.Hour)
	good := newCSR(t, web)
	otherTD := identity.ID{TrustDomain: "other.example", Namespace: "shop", ServiceAccount: "web"}
	db := identity.ID{TrustDomain: td, Namespace: "shop", ServiceAccount: "db"}
	cases := []struct {
		name     string
		csr      []byte
		id       identity.ID
		now      time.Time
		lifetime time.Duration
		reason   string // the CSRError reason, "" for other errors
		mention  string
	}{
		{"CSR for another identity", good, db, t0, time.Hour, "WrongIdentity", "spiffe://cluster.local/ns/shop/sa/db"},
		{"malformed CSR", []byte("nope"), web, t0, time.Hour, "Malformed", "spiffe://cluster.local/ns/shop/sa/web"},
		{"other trust domain", newCSR(t, otherTD), otherTD, t0, time.Hour, "", "other.example"},
		{"invalid identity", good, identity.ID{TrustDomain: td, Namespace: "x_y", ServiceAccount: "web"}, t0, time.Hour, "", "namespace"},
		{"zero lifetime", good, web, t0, 0, "", "lifetime"},
		{"issuer expired", good, web, t0.Add(10 * time.Hour), time.Hour, "", "issuing certificate"},
		{"issuer not yet valid", good, web, t0.Add(-2 * time.Minute), time.Hour, "", "issuing certificate"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			chain, _, err := p.issuer.Sign(tc.csr, tc.id, tc.now, tc.lifetime)
			if err == nil {
				t.Fatalf("signed %s", chain)
			}
			if got := reason(err); got != tc.reason {
				t.Errorf("reason %q, want %q (%v)", got, tc.reason, err)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not mention %q", err, tc.mention)
			}
		})
	}
}

func TestIssuerOnRoot(t *testing.T) {
	root, err := identity.NewRoot(td, t0, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	issuer, err := identity.NewIssuer(root, nil, []*x509.Certificate{root.Cert}, td, t0)
	if err != nil {
		t.Fatal(err)
	}
	if issuer.TrustDomain() != td || !issuer.NotAfter().Equal(root.Cert.NotAfter) {
		t.Fatalf("TrustDomain %q NotAfter %v", issuer.TrustDomain(), issuer.NotAfter())
	}
	chain, _, err := issuer.Sign(newCSR(t, web), web, t0, 2*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certs := parseChain(t, chain)
	if len(certs) != 1 {
		t.Fatalf("chain has %d certificates, want the leaf alone (the root is in the bundle)", len(certs))
	}
	checkLeaf(t, certs[0], root.Cert)
	if !certs[0].NotAfter.Equal(root.Cert.NotAfter) {
		t.Errorf("leaf NotAfter %v, want capped at the root's %v", certs[0].NotAfter, root.Cert.NotAfter)
	}
	if err := verify(certs[0], nil, []*x509.Certificate{root.Cert}, t0, x509.ExtKeyUsageClientAuth); err != nil {
		t.Fatal(err)
	}
}

func TestIssuerDropsRootFromChain(t *testing.T) {
	p := defaultPKI(t)
	// As cert-manager may write it: tls.crt holds the intermediate and the root.
	kp, err := identity.ParseKeyPair(append(bytes.Clone(p.inter.CertPEM), p.root.CertPEM...), p.inter.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	issuer, err := identity.NewIssuer(kp, []*x509.Certificate{p.root.Cert}, []*x509.Certificate{p.root.Cert}, td, t0)
	if err != nil {
		t.Fatal(err)
	}
	chain, _, err := issuer.Sign(newCSR(t, web), web, t0, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if certs := parseChain(t, chain); len(certs) != 2 || !certs[1].Equal(p.inter.Cert) {
		t.Fatalf("chain has %d certificates, want the leaf and the intermediate", len(certs))
	}
}

func TestNewIssuerRejects(t *testing.T) {
	p := defaultPKI(t)
	other := defaultPKI(t)
	otherTD, err := identity.NewRoot("other.example", t0, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	roots := []*x509.Certificate{p.root.Cert}
	cases := []struct {
		name    string
		issuing *identity.KeyPair
		chain   []*x509.Certificate
		roots   []*x509.Certificate
		td      string
		now     time.Time
		mention string
	}{
		{"does not chain to the roots", other.inter, nil, roots, td, t0, "does not chain"},
		{"chains only to another root", p.inter, nil, []*x509.Certificate{other.root.Cert}, td, t0, "does not chain"},
		{"not a CA", leafKeyPair(t, p), nil, roots, td, t0, "not a CA"},
		{"nil", nil, nil, roots, td, t0, "missing"},
		{"no roots", p.inter, nil, nil, td, t0, "no root"},
		{"chain not linking", p.inter, []*x509.Certificate{other.inter.Cert}, roots, td, t0, "did not sign"},
		{"expired", p.inter, nil, roots, td, t0.Add(31 * 24 * time.Hour), "not at"},
		{"key mismatch", &identity.KeyPair{Cert: p.inter.Cert, Key: other.inter.Key}, nil, roots, td, t0, "does not match"},
		{"issuing of another trust domain", otherTD, nil, []*x509.Certificate{otherTD.Cert}, td, t0, "other.example"},
		{"invalid trust domain", p.inter, nil, roots, "", t0, "trust domain"},
		{"a root with a chain", p.root, []*x509.Certificate{p.inter.Cert}, roots, td, t0, "chain must be empty"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := identity.NewIssuer(tc.issuing, tc.chain, tc.roots, tc.td, tc.now)
			if err == nil {
				t.Fatal("want an error")
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not mention %q", err, tc.mention)
			}
			var csrErr *identity.CSRError
			if errors.As(err, &csrErr) {
				t.Errorf("NewIssuer returned a CSRError: %v", err)
			}
		})
	}
}

// TestSignConcurrently is for the race detector: one Issuer serves many goroutines.
func TestSignConcurrently(t *testing.T) {
	p := defaultPKI(t)
	csr := newCSR(t, web)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			if _, _, err := p.issuer.Sign(csr, web, t0, time.Hour); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestZeroIssuer(t *testing.T) {
	var i identity.Issuer
	if _, _, err := i.Sign(newCSR(t, web), web, t0, time.Hour); err == nil {
		t.Fatal("a zero Issuer signed")
	}
}
