package identity_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"net"
	"strings"
	"testing"

	"github.com/braidmesh/braid/internal/identity"
)

// testKeys are keys of every kind the CSR tests use; RSA keys are slow to make, so they
// are made once per test that needs them.
type testKeys struct {
	p224, p256, p384, p521 *ecdsa.PrivateKey
	ed                     ed25519.PrivateKey
	rsa1024, rsa2048       *rsa.PrivateKey
}

func newTestKeys(tb testing.TB) testKeys {
	tb.Helper()
	var k testKeys
	var err error
	for _, e := range []struct {
		key   **ecdsa.PrivateKey
		curve elliptic.Curve
	}{{&k.p224, elliptic.P224()}, {&k.p256, elliptic.P256()}, {&k.p384, elliptic.P384()}, {&k.p521, elliptic.P521()}} {
		if *e.key, err = ecdsa.GenerateKey(e.curve, rand.Reader); err != nil {
			tb.Fatal(err)
		}
	}
	if _, k.ed, err = ed25519.GenerateKey(rand.Reader); err != nil {
		tb.Fatal(err)
	}
	if k.rsa1024, err = rsa.GenerateKey(rand.Reader, 1024); err != nil {
		tb.Fatal(err)
	}
	if k.rsa2048, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		tb.Fatal(err)
	}
	return k
}

// generalName is a GeneralName of the given context-specific tag.
func generalName(tag int, compound bool, content []byte) asn1.RawValue {
	return asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: tag, IsCompound: compound, Bytes: content}
}

func uriName(uri string) asn1.RawValue { return generalName(6, false, []byte(uri)) }

// sanExtension encodes names as a subjectAltName extension.
func sanExtension(tb testing.TB, names ...asn1.RawValue) pkix.Extension {
	tb.Helper()
	v, err := asn1.Marshal(names)
	if err != nil {
		tb.Fatal(err)
	}
	return pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Value: v}
}

func mustMarshal(tb testing.TB, v any) []byte {
	tb.Helper()
	b, err := asn1.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// otherName is a UPN otherName GeneralName, as Windows puts in certificates.
func otherName(tb testing.TB) asn1.RawValue {
	tb.Helper()
	upn, err := asn1.MarshalWithParams("web@shop", "utf8")
	if err != nil {
		tb.Fatal(err)
	}
	oid := mustMarshal(tb, asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 20, 2, 3})
	value := mustMarshal(tb, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: upn})
	return generalName(0, true, append(oid, value...))
}

// tamper flips a bit in the last byte of the signature of csrDER.
func tamper(tb testing.TB, csrDER []byte) []byte {
	tb.Helper()
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		tb.Fatal(err)
	}
	i := bytes.LastIndex(csrDER, csr.Signature)
	if i < 0 || i+len(csr.Signature) != len(csrDER) {
		tb.Fatal("the signature is not at the end of the CSR")
	}
	out := bytes.Clone(csrDER)
	out[len(out)-1] ^= 0x01
	if _, err := x509.ParseCertificateRequest(out); err != nil {
		tb.Fatalf("the tampered CSR no longer parses: %v", err)
	}
	return out
}

type csrCase struct {
	name   string
	der    []byte
	reason string // "" when the CSR is good
}

// csrCases are good and bad CSRs for web; the fuzz test seeds its corpus with them.
func csrCases(tb testing.TB, k testKeys) []csrCase {
	tb.Helper()
	other := web
	other.ServiceAccount = "db"
	otherTD := web
	otherTD.TrustDomain = "other.example"
	mk := func(key crypto.Signer, tmpl x509.CertificateRequest) []byte { return makeCSR(tb, key, &tmpl) }
	good := mk(k.p256, x509.CertificateRequest{URIs: uris(web)})
	bc := pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: mustMarshal(tb, struct{ IsCA bool }{true})}
	ku := pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 15}, Critical: true, Value: mustMarshal(tb, asn1.BitString{Bytes: []byte{0x06}, BitLength: 7})}
	eku := pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 37}, Value: mustMarshal(tb, []asn1.ObjectIdentifier{{1, 3, 6, 1, 5, 5, 7, 3, 1}})}
	return []csrCase{
		{"good P-256", good, ""},
		{"good P-256 from NewCSR", newCSR(tb, web), ""},
		{"good P-384", mk(k.p384, x509.CertificateRequest{URIs: uris(web)}), ""},
		{"good Ed25519", mk(k.ed, x509.CertificateRequest{URIs: uris(web)}), ""},
		{"good RSA 2048", mk(k.rsa2048, x509.CertificateRequest{URIs: uris(web)}), ""},
		{"good RSA 2048 PSS", mk(k.rsa2048, x509.CertificateRequest{URIs: uris(web), SignatureAlgorithm: x509.SHA256WithRSAPSS}), ""},
		{"good hand-encoded SAN", mk(k.p256, x509.CertificateRequest{ExtraExtensions: []pkix.Extension{sanExtension(tb, uriName(web.String()))}}), ""},
		{"RSA 1024", mk(k.rsa1024, x509.CertificateRequest{URIs: uris(web)}), "UnsupportedKey"},
		{"P-224", mk(k.p224, x509.CertificateRequest{URIs: uris(web)}), "UnsupportedKey"},
		{"P-521", mk(k.p521, x509.CertificateRequest{URIs: uris(web)}), "UnsupportedKey"},
		{"wrong SPIFFE ID", mk(k.p256, x509.CertificateRequest{URIs: uris(other)}), "WrongIdentity"},
		{"other trust domain", mk(k.p256, x509.CertificateRequest{URIs: uris(otherTD)}), "WrongIdentity"},
		{"no SAN", mk(k.p256, x509.CertificateRequest{}), "WrongIdentity"},
		{"SAN without URI", mk(k.p256, x509.CertificateRequest{ExtraExtensions: []pkix.Extension{sanExtension(tb)}}), "WrongIdentity"},
		{"uppercase scheme", mk(k.p256, x509.CertificateRequest{ExtraExtensions: []pkix.Extension{sanExtension(tb, uriName("SPIFFE://cluster.local/ns/shop/sa/web"))}}), "WrongIdentity"},
		{"URI with empty query", mk(k.p256, x509.CertificateRequest{ExtraExtensions: []pkix.Extension{sanExtension(tb, uriName(web.String()+"?"))}}), "WrongIdentity"},
		{"percent-encoded URI", mk(k.p256, x509.CertificateRequest{ExtraExtensions: []pkix.Extension{sanExtension(tb, uriName("spiffe://cluster.local/ns/shop/sa/w%65b"))}}), "WrongIdentity"},
		{"two URI SANs", mk(k.p256, x509.CertificateRequest{URIs: uris(web, other)}), "ExtraSANs"},
		{"the same URI twice", mk(k.p256, x509.CertificateRequest{URIs: uris(web, web)}), "ExtraSANs"},
		{"extra DNS SAN", mk(k.p256, x509.CertificateRequest{URIs: uris(web), DNSNames: []string{"web.shop.svc"}}), "ExtraSANs"},
		{"IP SAN", mk(k.p256, x509.CertificateRequest{URIs: uris(web), IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)}}), "ExtraSANs"},
		{"email SAN", mk(k.p256, x509.CertificateRequest{URIs: uris(web), EmailAddresses: []string{"web@shop.example"}}), "ExtraSANs"},
		{"otherName SAN", mk(k.p256, x509.CertificateRequest{ExtraExtensions: []pkix.Extension{sanExtension(tb, uriName(web.String()), otherName(tb))}}), "ExtraSANs"},
		{"registeredID SAN", mk(k.p256, x509.CertificateRequest{ExtraExtensions: []pkix.Extension{sanExtension(tb, uriName(web.String()), generalName(8, false, []byte{0x2a, 0x03}))}}), "ExtraSANs"},
		{"CN set", mk(k.p256, x509.CertificateRequest{URIs: uris(web), Subject: pkix.Name{CommonName: "web"}}), "SubjectNotAllowed"},
		{"CN is the SPIFFE ID", mk(k.p256, x509.CertificateRequest{URIs: uris(web), Subject: pkix.Name{CommonName: web.String()}}), "SubjectNotAllowed"},
		{"organization set", mk(k.p256, x509.CertificateRequest{URIs: uris(web), Subject: pkix.Name{Organization: []string{"shop"}}}), "SubjectNotAllowed"},
		{"CA basic constraints", mk(k.p256, x509.CertificateRequest{URIs: uris(web), ExtraExtensions: []pkix.Extension{bc}}), "ForbiddenExtension"},
		{"key usage cert sign", mk(k.p256, x509.CertificateRequest{URIs: uris(web), ExtraExtensions: []pkix.Extension{ku}}), "ForbiddenExtension"},
		{"extended key usage", mk(k.p256, x509.CertificateRequest{URIs: uris(web), ExtraExtensions: []pkix.Extension{eku}}), "ForbiddenExtension"},
		{"SAN extension twice", mk(k.p256, x509.CertificateRequest{ExtraExtensions: []pkix.Extension{sanExtension(tb, uriName(web.String())), sanExtension(tb, uriName(web.String()))}}), "Malformed"}, // crypto/x509 refuses duplicate extensions
		{"SAN not a sequence", mk(k.p256, x509.CertificateRequest{ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Value: mustMarshal(tb, 7)}}}), "Malformed"},
		{"garbage", []byte("certainly not DER"), "Malformed"},
		{"empty", nil, "Malformed"},
		{"trailing data", append(bytes.Clone(good), 0), "Malformed"},
		{"truncated", good[:len(good)-1], "Malformed"},
		{"oversized", append(bytes.Clone(good), make([]byte, 16<<10)...), "Malformed"},
		{"tampered signature", tamper(tb, good), "BadSignature"},
		{"tampered Ed25519 signature", tamper(tb, mk(k.ed, x509.CertificateRequest{URIs: uris(web)})), "BadSignature"},
		{"ECDSA with SHA-1", mk(k.p256, x509.CertificateRequest{URIs: uris(web), SignatureAlgorithm: x509.ECDSAWithSHA1}), "BadSignature"},
	}
}

func TestCheckCSR(t *testing.T) {
	for _, tc := range csrCases(t, newTestKeys(t)) {
		t.Run(tc.name, func(t *testing.T) {
			csr, err := identity.CheckCSR(tc.der, web)
			if tc.reason == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if csr == nil || len(csr.URIs) != 1 || csr.URIs[0].String() != web.String() {
					t.Fatalf("returned CSR %+v does not request %s", csr, web)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted, want a %s refusal", tc.reason)
			}
			if csr != nil {
				t.Errorf("returned a CSR with error %v", err)
			}
			if got := reason(err); got != tc.reason {
				t.Fatalf("reason %q (%v), want %q", got, err, tc.reason)
			}
			if !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("error %q does not name its reason", err)
			}
		})
	}
}

func TestCheckCSRInvalidID(t *testing.T) {
	_, err := identity.CheckCSR(newCSR(t, web), identity.ID{TrustDomain: td, Namespace: "Shop", ServiceAccount: "web"})
	if err == nil {
		t.Fatal("accepted a CSR for an invalid identity")
	}
	if got := reason(err); got != "" {
		t.Fatalf("an invalid identity is the caller's error, not the CSR's: reason %q", got)
	}
}

func TestNewCSR(t *testing.T) {
	der, key, err := identity.NewCSR(web)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := identity.CheckCSR(der, web)
	if err != nil {
		t.Fatal(err)
	}
	if k, ok := key.(*ecdsa.PrivateKey); !ok || k.Curve != elliptic.P256() || !k.PublicKey.Equal(csr.PublicKey) {
		t.Fatalf("key %T does not match the CSR's P-256 key", key)
	}
	if _, _, err := identity.NewCSR(identity.ID{TrustDomain: td}); err == nil {
		t.Fatal("NewCSR accepted an invalid identity")
	}
}
