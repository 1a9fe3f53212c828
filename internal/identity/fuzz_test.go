package identity_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"slices"
	"testing"
	"time"

	"github.com/braidmesh/braid/internal/identity"
)

// FuzzCheckCSR feeds CheckCSR arbitrary bytes, seeded with the good and bad CSRs of
// TestCheckCSR. CheckCSR must never panic; it refuses with a known reason, or accepts a
// CSR that, read independently, requests exactly web's URI and nothing else, and that the
// issuer then signs.
func FuzzCheckCSR(f *testing.F) {
	for _, tc := range csrCases(f, newTestKeys(f)) {
		f.Add(tc.der)
	}
	p := defaultPKI(f)
	wantSAN, err := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte(web.String())}})
	if err != nil {
		f.Fatal(err)
	}
	reasons := []string{"Malformed", "BadSignature", "UnsupportedKey", "WrongIdentity", "ExtraSANs", "ForbiddenExtension", "SubjectNotAllowed"}
	f.Fuzz(func(t *testing.T, der []byte) {
		csr, err := identity.CheckCSR(der, web)
		if err != nil {
			if csr != nil {
				t.Fatalf("returned a CSR with error %v", err)
			}
			if r := reason(err); !slices.Contains(reasons, r) {
				t.Fatalf("refusal without a known reason (%q): %v", r, err)
			}
			return
		}
		checkAccepted(t, der, wantSAN)
		chain, _, err := p.issuer.Sign(der, web, t0, time.Hour)
		if err != nil {
			t.Fatalf("CheckCSR accepted a CSR that Sign refuses: %v", err)
		}
		leaf := parseChain(t, chain)[0]
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != web.String() || len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
			t.Fatalf("signed a leaf for %v %v %v %v", leaf.URIs, leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
		}
	})
}

// checkAccepted re-reads an accepted CSR without CheckCSR's code: its only extension is a
// subjectAltName whose DER is exactly the one URI of web, its subject is empty and its
// signature verifies.
func checkAccepted(t *testing.T, der, wantSAN []byte) {
	t.Helper()
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatalf("accepted a CSR crypto/x509 does not parse: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Fatalf("accepted a CSR whose signature does not verify: %v", err)
	}
	if len(csr.URIs) != 1 || csr.URIs[0].String() != web.String() {
		t.Fatalf("accepted a CSR with URIs %v", csr.URIs)
	}
	if len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) != 0 {
		t.Fatalf("accepted a CSR with other SANs: %v %v %v", csr.DNSNames, csr.IPAddresses, csr.EmailAddresses)
	}
	if len(csr.Extensions) != 1 || !csr.Extensions[0].Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 17}) || !bytes.Equal(csr.Extensions[0].Value, wantSAN) {
		t.Fatalf("accepted a CSR whose extensions are not exactly the one URI SAN: %+v", csr.Extensions)
	}
	if !bytes.Equal(csr.RawSubject, []byte{0x30, 0}) {
		t.Fatalf("accepted a CSR with subject %q", csr.Subject)
	}
}

// FuzzCheckCSRSigned fuzzes what FuzzCheckCSR's mutations rarely reach past the signature:
// the subjectAltName value and the raw subject of a CSR that is then properly signed, so
// that acceptance is possible and its property (exactly web's URI, nothing else) is tested.
func FuzzCheckCSRSigned(f *testing.F) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	name := func(tag int, s string) asn1.RawValue {
		return asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: tag, Bytes: []byte(s)}
	}
	wantSAN := mustMarshal(f, []asn1.RawValue{name(6, web.String())})
	emptySubject := []byte{0x30, 0}
	f.Add(wantSAN, emptySubject, false)
	f.Add(wantSAN, emptySubject, true)
	f.Add(wantSAN, []byte(nil), false)
	f.Add(mustMarshal(f, []asn1.RawValue{name(6, web.String()), name(6, web.String())}), emptySubject, false)
	f.Add(mustMarshal(f, []asn1.RawValue{name(6, web.String()), name(2, "web.shop.svc")}), emptySubject, false)
	f.Add(mustMarshal(f, []asn1.RawValue{name(6, "SPIFFE://cluster.local/ns/shop/sa/web")}), emptySubject, false)
	f.Add(mustMarshal(f, []asn1.RawValue{}), emptySubject, false)
	f.Add(wantSAN, mustMarshal(f, pkix.Name{CommonName: "web"}.ToRDNSequence()), false)
	f.Fuzz(func(t *testing.T, san, rawSubject []byte, critical bool) {
		tmpl := &x509.CertificateRequest{
			RawSubject:      rawSubject,
			ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Critical: critical, Value: san}},
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
		if err != nil {
			t.Skip(err)
		}
		if _, err := identity.CheckCSR(der, web); err == nil {
			checkAccepted(t, der, wantSAN)
		} else if reason(err) == "" {
			t.Fatalf("refusal without a reason: %v", err)
		}
	})
}
