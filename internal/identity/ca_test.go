package identity_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/braidmesh/braid/internal/identity"
)

func TestNewRoot(t *testing.T) {
	root, err := identity.NewRoot(td, t0, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := root.Cert
	if got, want := c.Subject.CommonName, "braid root CA cluster.local"; got != want {
		t.Errorf("CN = %q, want %q", got, want)
	}
	if !c.NotBefore.Equal(t0.Add(-time.Minute)) || !c.NotAfter.Equal(t0.Add(24*time.Hour)) {
		t.Errorf("validity %v to %v, want %v to %v", c.NotBefore, c.NotAfter, t0.Add(-time.Minute), t0.Add(24*time.Hour))
	}
	if !c.BasicConstraintsValid || !c.IsCA || c.MaxPathLen != 1 {
		t.Errorf("basic constraints valid=%t CA=%t pathlen=%d, want CA with path length 1", c.BasicConstraintsValid, c.IsCA, c.MaxPathLen)
	}
	if c.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("KeyUsage = %b, want CertSign|CRLSign", c.KeyUsage)
	}
	if len(c.SubjectKeyId) == 0 {
		t.Error("no SubjectKeyId")
	}
	if len(c.URIs) != 1 || c.URIs[0].String() != "spiffe://cluster.local" {
		t.Errorf("URIs = %v, want [spiffe://cluster.local]", c.URIs)
	}
	if k, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("public key %T, want ECDSA P-256", c.PublicKey)
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Errorf("not self-signed: %v", err)
	}
	checkPEM(t, root)
}

// checkPEM checks that kp's PEM encodings are its certificate and a PKCS#8 key.
func checkPEM(t *testing.T, kp *identity.KeyPair) {
	t.Helper()
	b, rest := pem.Decode(kp.CertPEM)
	if b == nil || b.Type != "CERTIFICATE" || !bytes.Equal(b.Bytes, kp.Cert.Raw) || len(rest) != 0 {
		t.Errorf("CertPEM is not the certificate alone")
	}
	b, rest = pem.Decode(kp.KeyPEM)
	if b == nil || b.Type != "PRIVATE KEY" || len(rest) != 0 {
		t.Fatalf("KeyPEM is not one PRIVATE KEY block")
	}
	key, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		t.Fatalf("KeyPEM: %v", err)
	}
	if k, ok := key.(*ecdsa.PrivateKey); !ok || !k.PublicKey.Equal(kp.Cert.PublicKey) {
		t.Errorf("KeyPEM does not hold the certificate's key")
	}
}

func TestNewRootRejects(t *testing.T) {
	for name, tc := range map[string]struct {
		td       string
		lifetime time.Duration
	}{
		"invalid trust domain": {"Cluster.Local", time.Hour},
		"empty trust domain":   {"", time.Hour},
		"zero lifetime":        {td, 0},
		"negative lifetime":    {td, -time.Hour},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := identity.NewRoot(tc.td, t0, tc.lifetime); err == nil {
				t.Fatal("want an error")
			}
		})
	}
}

func TestNewIntermediate(t *testing.T) {
	p := newPKI(t, 365*24*time.Hour, 30*24*time.Hour)
	c := p.inter.Cert
	if !c.IsCA || c.MaxPathLen != 0 || !c.MaxPathLenZero {
		t.Errorf("CA=%t pathlen=%d zero=%t, want CA with path length 0", c.IsCA, c.MaxPathLen, c.MaxPathLenZero)
	}
	if c.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("KeyUsage = %b, want CertSign|CRLSign", c.KeyUsage)
	}
	if !bytes.Equal(c.AuthorityKeyId, p.root.Cert.SubjectKeyId) || len(c.SubjectKeyId) == 0 {
		t.Errorf("AuthorityKeyId %x SubjectKeyId %x, want the root's SKI %x and its own", c.AuthorityKeyId, c.SubjectKeyId, p.root.Cert.SubjectKeyId)
	}
	if !c.NotBefore.Equal(t0.Add(-time.Minute)) || !c.NotAfter.Equal(t0.Add(30*24*time.Hour)) {
		t.Errorf("validity %v to %v", c.NotBefore, c.NotAfter)
	}
	if err := c.CheckSignatureFrom(p.root.Cert); err != nil {
		t.Errorf("not signed by the root: %v", err)
	}
	if err := verify(c, nil, []*x509.Certificate{p.root.Cert}, t0, x509.ExtKeyUsageAny); err != nil {
		t.Errorf("does not verify: %v", err)
	}
	checkPEM(t, p.inter)
}

func TestIntermediateCappedByRoot(t *testing.T) {
	root, err := identity.NewRoot(td, t0, 10*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	now := t0.Add(5 * 24 * time.Hour)
	inter, err := identity.NewIntermediate(root, td, now, 30*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !inter.Cert.NotAfter.Equal(root.Cert.NotAfter) {
		t.Fatalf("intermediate NotAfter %v, want the root's %v", inter.Cert.NotAfter, root.Cert.NotAfter)
	}
}

func TestNewIntermediateRejects(t *testing.T) {
	p := defaultPKI(t)
	other, err := identity.NewRoot("other.example", t0, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf := leafKeyPair(t, p)
	cases := []struct {
		name     string
		parent   *identity.KeyPair
		td       string
		now      time.Time
		lifetime time.Duration
		mention  string
	}{
		{"nil parent", nil, td, t0, time.Hour, "missing"},
		{"parent with path length 0", p.inter, td, t0, time.Hour, "path length 0"},
		{"parent not a CA", leaf, td, t0, time.Hour, "not a CA"},
		{"parent of another trust domain", other, td, t0, time.Hour, "other.example"},
		{"parent expired", p.root, td, t0.Add(366 * 24 * time.Hour), time.Hour, "not at"},
		{"parent not yet valid", p.root, td, t0.Add(-time.Hour), time.Hour, "not at"},
		{"parent key mismatch", &identity.KeyPair{Cert: p.root.Cert, Key: p.inter.Key}, td, t0, time.Hour, "does not match"},
		{"invalid trust domain", p.root, "CLUSTER", t0, time.Hour, "trust domain"},
		{"zero lifetime", p.root, td, t0, 0, "lifetime"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := identity.NewIntermediate(tc.parent, tc.td, tc.now, tc.lifetime)
			if err == nil {
				t.Fatal("want an error")
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not mention %q", err, tc.mention)
			}
		})
	}
}

// leafKeyPair signs a workload certificate with p's issuer and returns it with its key.
func leafKeyPair(t *testing.T, p pki) *identity.KeyPair {
	t.Helper()
	der, key, err := identity.NewCSR(web)
	if err != nil {
		t.Fatal(err)
	}
	chain, _, err := p.issuer.Sign(der, web, t0, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf := parseChain(t, chain)[0]
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := identity.ParseKeyPair(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

func TestLeafChainsToRoot(t *testing.T) {
	p := defaultPKI(t)
	chain, _, err := p.issuer.Sign(newCSR(t, web), web, t0, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certs := parseChain(t, chain)
	if len(certs) != 2 || !certs[1].Equal(p.inter.Cert) {
		t.Fatalf("chain has %d certificates, want the leaf and the intermediate", len(certs))
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if err := verify(certs[0], certs[1:], []*x509.Certificate{p.root.Cert}, t0, usage); err != nil {
			t.Errorf("usage %v: %v", usage, err)
		}
	}
	if err := verify(certs[0], certs[1:], []*x509.Certificate{p.root.Cert}, t0, x509.ExtKeyUsageCodeSigning); err == nil {
		t.Error("the leaf verifies for code signing")
	}
	if err := verify(certs[0], nil, []*x509.Certificate{p.root.Cert}, t0, x509.ExtKeyUsageServerAuth); err == nil {
		t.Error("the leaf verifies without its intermediate")
	}
	other := newPKI(t, time.Hour, time.Hour)
	if err := verify(certs[0], certs[1:], []*x509.Certificate{other.root.Cert}, t0, x509.ExtKeyUsageServerAuth); err == nil {
		t.Error("the leaf verifies against another root")
	}
}

func TestLeafCappedByIntermediate(t *testing.T) {
	p := newPKI(t, 365*24*time.Hour, 10*time.Hour)
	now := t0.Add(9 * time.Hour)
	chain, notAfter, err := p.issuer.Sign(newCSR(t, web), web, now, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf := parseChain(t, chain)[0]
	if !leaf.NotAfter.Equal(p.inter.Cert.NotAfter) || !notAfter.Equal(leaf.NotAfter) {
		t.Fatalf("leaf NotAfter %v (returned %v), want the intermediate's %v", leaf.NotAfter, notAfter, p.inter.Cert.NotAfter)
	}
	if !p.issuer.NotAfter().Equal(p.inter.Cert.NotAfter) {
		t.Fatalf("Issuer.NotAfter %v, want %v", p.issuer.NotAfter(), p.inter.Cert.NotAfter)
	}
}

func TestPathLength(t *testing.T) {
	p := defaultPKI(t)
	roots := []*x509.Certificate{p.root.Cert}

	t.Run("a certificate signed by a leaf does not verify", func(t *testing.T) {
		leaf := leafKeyPair(t, p)
		child, _ := signWith(t, leaf, false)
		for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
			if err := verify(child, []*x509.Certificate{leaf.Cert, p.inter.Cert}, roots, t0, usage); err == nil {
				t.Fatal("a certificate signed by a leaf verifies")
			}
		}
	})
	t.Run("a CA under the intermediate cannot sign", func(t *testing.T) {
		sub, subKey := signWith(t, p.inter, true)
		leaf, _ := signWith(t, &identity.KeyPair{Cert: sub, Key: subKey}, false)
		if err := verify(leaf, []*x509.Certificate{sub, p.inter.Cert}, roots, t0, x509.ExtKeyUsageServerAuth); err == nil {
			t.Fatal("a leaf under a CA below a path-length-0 intermediate verifies")
		}
	})
}

// signWith signs, bypassing this package's checks, a certificate for a fresh key with
// parent: a CA, or a server/client leaf. It returns the certificate and its key.
func signWith(t *testing.T, parent *identity.KeyPair, isCA bool) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42), Subject: pkix.Name{CommonName: "rogue"},
		NotBefore: t0.Add(-time.Minute), NotAfter: t0.Add(time.Hour),
		BasicConstraintsValid: true, IsCA: isCA,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:        uris(web),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent.Cert, key.Public(), parent.Key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

func TestParseKeyPair(t *testing.T) {
	p := defaultPKI(t)
	sec1 := func(kp *identity.KeyPair) []byte {
		der, err := x509.MarshalECPrivateKey(kp.Key.(*ecdsa.PrivateKey))
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	}
	join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	cases := []struct {
		name      string
		cert, key []byte
		want      *identity.KeyPair // nil: an error is expected
		mention   string
	}{
		{name: "root", cert: p.root.CertPEM, key: p.root.KeyPEM, want: p.root},
		{name: "chain in tls.crt", cert: join(p.inter.CertPEM, p.root.CertPEM), key: p.inter.KeyPEM, want: p.inter},
		{name: "SEC 1 key", cert: p.inter.CertPEM, key: sec1(p.inter), want: p.inter},
		{name: "mismatched key", cert: p.inter.CertPEM, key: p.root.KeyPEM, mention: "does not match"},
		{name: "key of the second certificate", cert: join(p.inter.CertPEM, p.root.CertPEM), key: p.root.KeyPEM, mention: "does not match"},
		{name: "no certificate", cert: nil, key: p.root.KeyPEM, mention: "no CERTIFICATE"},
		{name: "no key", cert: p.root.CertPEM, key: nil, mention: "no private key"},
		{name: "two keys", cert: p.root.CertPEM, key: join(p.root.KeyPEM, p.root.KeyPEM), mention: "more than one key"},
		{name: "key in tls.crt", cert: join(p.root.CertPEM, p.root.KeyPEM), key: p.root.KeyPEM, mention: "PRIVATE KEY"},
		{name: "garbage after the certificates", cert: join(p.root.CertPEM, []byte("garbage")), key: p.root.KeyPEM, mention: "not PEM"},
		{name: "broken certificate", cert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2, 3}}), key: p.root.KeyPEM, mention: "certificate 0"},
		{name: "broken key", cert: p.root.CertPEM, key: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}}), mention: "PRIVATE KEY"},
		{name: "public key as key", cert: p.root.CertPEM, key: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1}}), mention: "not a private key"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			kp, err := identity.ParseKeyPair(tc.cert, tc.key)
			if tc.want == nil {
				if err == nil {
					t.Fatal("want an error")
				}
				if !strings.Contains(err.Error(), tc.mention) {
					t.Errorf("error %q does not mention %q", err, tc.mention)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !kp.Cert.Equal(tc.want.Cert) || !bytes.Equal(kp.CertPEM, tc.want.CertPEM) || !bytes.Equal(kp.KeyPEM, tc.want.KeyPEM) {
				t.Fatal("the parsed pair is not the one encoded")
			}
			checkPEM(t, kp)
		})
	}
}

func TestBundlePEM(t *testing.T) {
	a, b := defaultPKI(t).root, defaultPKI(t).root
	got := identity.BundlePEM(a.Cert, nil, b.Cert, a.Cert)
	if want := append(append([]byte{}, a.CertPEM...), b.CertPEM...); !bytes.Equal(got, want) {
		t.Fatalf("BundlePEM = %s, want %s", got, want)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(got) {
		t.Fatal("the bundle does not load into a pool")
	}
	if len(identity.BundlePEM()) != 0 {
		t.Fatal("an empty bundle is not empty")
	}
}
