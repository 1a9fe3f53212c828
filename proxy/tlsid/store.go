// Package tlsid holds the proxy's workload identity (its certificate and the trust bundle)
// and builds the TLS configurations of the mesh's mTLS from it: TLS 1.3 only, peers
// verified against the current trust bundle, and identified by the SPIFFE ID in their
// certificate's URI SAN. Certificates and bundles are swapped atomically, so renewals and
// root rotations apply to new handshakes without touching established connections.
package tlsid

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"sync/atomic"
)

// Store holds the proxy's current certificate and trust bundle.
type Store struct {
	cert  atomic.Pointer[tls.Certificate]
	roots atomic.Pointer[x509.CertPool]
	id    atomic.Pointer[string]
}

// SetCertificate installs the certificate (with its private key and chain) new
// handshakes present. Its leaf must carry exactly one spiffe:// URI SAN.
func (s *Store) SetCertificate(cert *tls.Certificate) error {
	if cert == nil || len(cert.Certificate) == 0 {
		return errors.New("no certificate")
	}
	leaf := cert.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return fmt.Errorf("parsing the leaf certificate: %w", err)
		}
		cert.Leaf = leaf
	}
	id, err := spiffeID(leaf)
	if err != nil {
		return err
	}
	s.cert.Store(cert)
	s.id.Store(&id)
	return nil
}

// Certificate returns the certificate in use, or nil before the first one.
func (s *Store) Certificate() *tls.Certificate { return s.cert.Load() }

// ID returns the proxy's own SPIFFE ID, or "" before the first certificate.
func (s *Store) ID() string {
	if id := s.id.Load(); id != nil {
		return *id
	}
	return ""
}

// SetTrustBundle installs the PEM roots peers must chain to. During a root rotation the
// bundle holds the old and the new root, so peers certified by either are accepted.
func (s *Store) SetTrustBundle(bundle []byte) error {
	pool := x509.NewCertPool()
	n := 0
	for rest := bundle; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return fmt.Errorf("trust bundle certificate %d: %w", n+1, err)
		}
		if !c.IsCA {
			return fmt.Errorf("trust bundle certificate %d (%s) is not a CA", n+1, c.Subject)
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return errors.New("the trust bundle holds no certificate")
	}
	s.roots.Store(pool)
	return nil
}

// Ready reports whether the store has both a certificate and a trust bundle.
func (s *Store) Ready() bool { return s.cert.Load() != nil && s.roots.Load() != nil }

// ErrNoIdentity is returned by handshakes attempted before the proxy has a certificate
// and a trust bundle.
var ErrNoIdentity = errors.New("the proxy has no workload certificate yet")
