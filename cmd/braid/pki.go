package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

const certLifetime = 365 * 24 * time.Hour

// writePKI writes the cluster's CA, the API server's and the kubelet's serving
// certificates, one system:masters client certificate every component and the user share,
// the ServiceAccount signing key pair and the kubeconfig. Existing files are kept, so a
// restart of the same cluster keeps its identity.
func writePKI(l layout) error {
	if _, err := os.Stat(l.kubeconfig()); err == nil {
		return nil
	}
	if err := os.MkdirAll(l.path("pki"), 0o700); err != nil {
		return err
	}
	now := time.Now().Add(-time.Hour)
	ca, caKey, err := writeCA(l.pki("ca"), "braid-cluster-ca", now)
	if err != nil {
		return err
	}
	leaves := []struct {
		name string
		tmpl *x509.Certificate
	}{
		{"apiserver", &x509.Certificate{
			Subject:     pkix.Name{CommonName: "kube-apiserver"},
			DNSNames:    []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP(nodeIP), net.ParseIP(apiServiceIP)},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}},
		{"kubelet", &x509.Certificate{
			Subject:     pkix.Name{CommonName: nodeName},
			DNSNames:    []string{nodeName},
			IPAddresses: []net.IP{net.ParseIP(nodeIP)},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}},
		{"admin", &x509.Certificate{
			Subject:     pkix.Name{CommonName: "braid-admin", Organization: []string{"system:masters"}},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}},
	}
	for i, leaf := range leaves {
		key, err := newKey()
		if err != nil {
			return err
		}
		t := leaf.tmpl
		t.NotBefore, t.NotAfter = now, now.Add(certLifetime)
		t.KeyUsage = x509.KeyUsageDigitalSignature
		t.SerialNumber = big.NewInt(int64(i + 2))
		der, err := sign(t, ca, key.Public(), caKey)
		if err != nil {
			return err
		}
		if err := writeCert(l.pki(leaf.name), der, key); err != nil {
			return err
		}
	}
	saKey, err := newKey()
	if err != nil {
		return err
	}
	if err := writeKey(l.pki("sa.key"), saKey); err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		return err
	}
	if err := os.WriteFile(l.pki("sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o600); err != nil {
		return err
	}
	return writeKubeconfig(l)
}

// writeFrontProxyPKI writes, unless present, the API server's front-proxy CA and the client
// certificate it presents to aggregated API servers (Braid's TrafficMetrics API), which
// verify it against the CA published in kube-system/extension-apiserver-authentication.
// A separate CA, as kubeadm sets up: a certificate of the cluster CA must not pass as the
// front proxy.
func writeFrontProxyPKI(l layout) error {
	if _, err := os.Stat(l.pki("front-proxy-client.crt")); err == nil {
		return nil
	}
	if err := os.MkdirAll(l.path("pki"), 0o700); err != nil {
		return err
	}
	now := time.Now().Add(-time.Hour)
	ca, caKey, err := writeCA(l.pki("front-proxy-ca"), "braid-front-proxy-ca", now)
	if err != nil {
		return err
	}
	key, err := newKey()
	if err != nil {
		return err
	}
	der, err := sign(&x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: frontProxyClientName},
		NotBefore:    now, NotAfter: now.Add(certLifetime),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, ca, key.Public(), caKey)
	if err != nil {
		return err
	}
	return writeCert(l.pki("front-proxy-client"), der, key)
}

// writeCA creates a self-signed CA named name, valid from now for 10 certificate
// lifetimes, writes it to base.crt and base.key, and returns it with its key.
func writeCA(base, name string, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now,
		NotAfter:              now.Add(10 * certLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := sign(tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, err
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return ca, key, writeCert(base, der, key)
}

// frontProxyClientName is the name the front proxy's client certificate carries, the one
// aggregated API servers accept (--requestheader-allowed-names).
const frontProxyClientName = "front-proxy-client"

func newKey() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }

func sign(tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) ([]byte, error) {
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber = big.NewInt(1)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		return nil, fmt.Errorf("signing the certificate of %s: %w", tmpl.Subject.CommonName, err)
	}
	return der, nil
}

// writeCert writes base.crt and base.key.
func writeCert(base string, der []byte, key *ecdsa.PrivateKey) error {
	if err := os.WriteFile(base+".crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	return writeKey(base+".key", key)
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
}

// writeKubeconfig writes the one kubeconfig every component and the user share, with the
// certificates embedded so it can be copied anywhere.
func writeKubeconfig(l layout) error {
	read := func(name string) (string, error) {
		b, err := os.ReadFile(l.pki(name))
		return base64.StdEncoding.EncodeToString(b), err
	}
	ca, err := read("ca.crt")
	if err != nil {
		return err
	}
	cert, err := read("admin.crt")
	if err != nil {
		return err
	}
	key, err := read("admin.key")
	if err != nil {
		return err
	}
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: %[1]s
  cluster:
    server: https://%[2]s:6443
    certificate-authority-data: %[3]s
users:
- name: %[1]s-admin
  user:
    client-certificate-data: %[4]s
    client-key-data: %[5]s
contexts:
- name: %[1]s
  context:
    cluster: %[1]s
    user: %[1]s-admin
current-context: %[1]s
`, clusterName, nodeIP, ca, cert, key)
	if err := os.MkdirAll(filepath.Dir(l.kubeconfig()), 0o700); err != nil {
		return err
	}
	return os.WriteFile(l.kubeconfig(), []byte(cfg), 0o600)
}
