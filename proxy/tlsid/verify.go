package tlsid

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

// ALPN protocols spoken between proxies.
const (
	// ProtoHTTP2 carries HTTP requests, multiplexed; each names its target port in the
	// Braid-Target-Port header.
	ProtoHTTP2 = "h2"
	// ProtoTCP carries one opaque TCP connection, preceded by a two-byte target port.
	ProtoTCP = "braid.tcp/1"
	// ProtoHTTP1 carries HTTP/1.1 requests that HTTP/2 cannot: protocol upgrades such as
	// WebSocket. Each names its target port like an HTTP/2 request.
	ProtoHTTP1 = "http/1.1"
)

// ServerConfig returns the configuration of the proxy's mTLS listener: it presents the
// current certificate and requires a client certificate chaining to the current trust
// bundle. The peer's identity is read from the verified chain with PeerID.
func (s *Store) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{ProtoHTTP2, ProtoTCP, ProtoHTTP1},
		ClientAuth: tls.RequireAnyClientCert, // verified below, against the bundle of the moment
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			if c := s.cert.Load(); c != nil {
				return c, nil
			}
			return nil, ErrNoIdentity
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := s.verify(cs.PeerCertificates, x509.ExtKeyUsageClientAuth)
			return err
		},
	}
}

// ClientConfig returns the configuration for dialing a peer proxy that must present the
// SPIFFE ID want, speaking one of protos.
func (s *Store) ClientConfig(want string, protos ...string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		NextProtos:         protos,
		InsecureSkipVerify: true, // #nosec G402 -- the chain and the SPIFFE ID are verified in VerifyConnection
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if c := s.cert.Load(); c != nil {
				return c, nil
			}
			return nil, ErrNoIdentity
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			got, err := s.verify(cs.PeerCertificates, x509.ExtKeyUsageServerAuth)
			if err != nil {
				return err
			}
			if got != want {
				return fmt.Errorf("peer presented identity %s, want %s", got, want)
			}
			return nil
		},
	}
}

// verify checks a peer's chain against the current bundle and returns its SPIFFE ID.
func (s *Store) verify(chain []*x509.Certificate, usage x509.ExtKeyUsage) (string, error) {
	roots := s.roots.Load()
	if roots == nil {
		return "", ErrNoIdentity
	}
	if len(chain) == 0 {
		return "", errors.New("the peer presented no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return "", fmt.Errorf("verifying the peer's certificate: %w", err)
	}
	return spiffeID(chain[0])
}

// PeerID returns the SPIFFE ID of a peer whose handshake completed against a
// configuration from this package, or "" when cs has no peer certificate.
func PeerID(cs tls.ConnectionState) string {
	if len(cs.PeerCertificates) == 0 {
		return ""
	}
	id, _ := spiffeID(cs.PeerCertificates[0])
	return id
}

func spiffeID(c *x509.Certificate) (string, error) {
	var id string
	for _, u := range c.URIs {
		if u.Scheme != "spiffe" {
			continue
		}
		if id != "" {
			return "", errors.New("the certificate carries more than one SPIFFE ID")
		}
		id = u.String()
	}
	if id == "" {
		return "", errors.New("the certificate carries no SPIFFE ID")
	}
	return id, nil
}

// ControlPlaneConfig returns the configuration for dialing the operator: it presents the
// proxy's certificate (the operator authenticates the proxy by its SPIFFE ID) and
// requires the operator's certificate to chain to the current trust bundle and name
// serverName.
func (s *Store) ControlPlaneConfig(serverName string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // #nosec G402 -- verified in VerifyConnection against the bundle of the moment
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if c := s.cert.Load(); c != nil {
				return c, nil
			}
			return nil, ErrNoIdentity
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			roots := s.roots.Load()
			if roots == nil {
				return ErrNoIdentity
			}
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the control plane presented no certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{DNSName: serverName, Roots: roots, Intermediates: inter})
			if err != nil {
				return fmt.Errorf("verifying the control plane's certificate for %s: %w", serverName, err)
			}
			return nil
		},
	}
}
