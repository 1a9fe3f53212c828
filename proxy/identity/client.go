// Package identity gets the proxy its workload certificate from the operator's identity
// service and keeps it current: a fresh ECDSA P-256 key made in memory (it is never
// written anywhere), a CSR for spiffe://<trust domain>/ns/<namespace>/sa/<service
// account>, proved by the pod's projected ServiceAccount token, over TLS verified
// against the mesh trust bundle. The certificate and bundle go into a *tlsid.Store;
// renewal comes at about 70% of the lifetime, and a failed one keeps the certificate in
// use and retries with capped backoff. It imports no Kubernetes code.
package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/proxy/tlsid"
)

// Renewal timing: at RenewFraction of the lifetime, give or take RenewJitter of it.
const (
	RenewFraction = 0.7
	RenewJitter   = 0.1
)

// Clock is the time the client runs on; tests use a fake one.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Client keeps the proxy's workload certificate current. Set the exported fields, then Run.
type Client struct {
	// Address is the identity service's host:port.
	Address string
	// ServerName is the name the service's certificate must carry; the host of Address
	// when empty.
	ServerName string
	// TokenFile is the projected ServiceAccount token (audience braid), read again for
	// every request: the kubelet rotates it.
	TokenFile string
	// TrustBundleFile holds the PEM roots the service's certificate must chain to; it is
	// read again for every connection.
	TrustBundleFile string
	// TrustDomain, Namespace and ServiceAccount make the SPIFFE ID asked for.
	TrustDomain, Namespace, ServiceAccount string
	// Store receives the certificate and trust bundle.
	Store *tlsid.Store
	Log   logr.Logger
	// Clock is the real clock when nil.
	Clock Clock
	// MinBackoff and MaxBackoff bound the wait between failed attempts (1 s and 30 s
	// when zero).
	MinBackoff, MaxBackoff time.Duration
	// RequestTimeout bounds one Certify call (30 s when zero).
	RequestTimeout time.Duration
	// Random returns numbers in [0, 1) for the jitter; math/rand/v2 when nil.
	Random func() float64

	once  sync.Once
	ready chan struct{}
}

// ID returns the SPIFFE ID the client asks for.
func (c *Client) ID() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: c.TrustDomain, Path: "/ns/" + c.Namespace + "/sa/" + c.ServiceAccount}
}

// Ready is closed once the Store holds a first certificate and trust bundle.
func (c *Client) Ready() <-chan struct{} {
	c.once.Do(func() { c.ready = make(chan struct{}) })
	return c.ready
}

// Run gets a certificate, then renews it, until ctx ends.
func (c *Client) Run(ctx context.Context) error {
	if c.Store == nil || c.Address == "" || c.TokenFile == "" || c.TrustBundleFile == "" {
		return errors.New("identity client: Store, Address, TokenFile and TrustBundleFile are required")
	}
	clk := c.clock()
	minBackoff, maxBackoff := orDefault(c.MinBackoff, time.Second), orDefault(c.MaxBackoff, 30*time.Second)
	conn, err := grpc.NewClient(c.Address, grpc.WithTransportCredentials(credentials.NewTLS(c.tlsConfig())))
	if err != nil {
		return fmt.Errorf("identity client for %s: %w", c.Address, err)
	}
	defer func() { _ = conn.Close() }()
	svc := api.NewIdentityServiceClient(conn)
	ready := c.Ready()
	var backoff time.Duration
	for {
		wait, err := c.renew(ctx, svc)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			backoff = min(max(2*backoff, minBackoff), maxBackoff)
			wait = backoff
			c.Log.Error(err, "Workload certificate was not renewed; the current one stays in use", "retryIn", wait.String(), "id", c.ID().String())
		} else {
			backoff = 0
			select {
			case <-ready:
			default:
				close(c.ready)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-clk.After(wait):
		}
	}
}

// renew asks for a certificate, stores it, and returns when to renew it.
func (c *Client) renew(ctx context.Context, svc api.IdentityServiceClient) (time.Duration, error) {
	token, err := os.ReadFile(c.TokenFile)
	if err != nil {
		return 0, fmt.Errorf("reading the ServiceAccount token: %w", err)
	}
	csr, key, err := NewCSR(c.ID())
	if err != nil {
		return 0, err
	}
	rctx, cancel := context.WithTimeout(ctx, orDefault(c.RequestTimeout, 30*time.Second))
	defer cancel()
	resp, err := svc.Certify(rctx, &api.CertifyRequest{Csr: csr, Token: strings.TrimSpace(string(token))})
	if err != nil {
		return 0, fmt.Errorf("requesting a certificate from %s: %w", c.Address, err)
	}
	cert, err := c.certificate(resp.GetCertificateChain(), key)
	if err != nil {
		return 0, err
	}
	if err := c.Store.SetTrustBundle(resp.GetTrustBundle()); err != nil {
		return 0, fmt.Errorf("the identity service's trust bundle: %w", err)
	}
	if err := c.Store.SetCertificate(cert); err != nil {
		return 0, fmt.Errorf("the identity service's certificate: %w", err)
	}
	now := c.clock().Now()
	lifetime := cert.Leaf.NotAfter.Sub(now)
	random := c.Random
	if random == nil {
		random = rand.Float64
	}
	frac := RenewFraction * (1 + RenewJitter*(2*random()-1))
	next := time.Duration(float64(lifetime) * frac)
	c.Log.Info("Workload certificate installed", "id", c.ID().String(), "notAfter", cert.Leaf.NotAfter, "renewIn", next.String())
	return next, nil
}

// certificate checks that chainPEM's leaf is for key and the client's ID, and pairs them.
func (c *Client) certificate(chainPEM []byte, key *ecdsa.PrivateKey) (*tls.Certificate, error) {
	cert := &tls.Certificate{PrivateKey: key}
	for rest := chainPEM; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		if block.Type == "CERTIFICATE" {
			cert.Certificate = append(cert.Certificate, block.Bytes)
		}
	}
	if len(cert.Certificate) == 0 {
		return nil, errors.New("the identity service returned no certificate")
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("parsing the certificate returned: %w", err)
	}
	if !key.PublicKey.Equal(leaf.PublicKey) {
		return nil, errors.New("the certificate returned is not for the key of the request")
	}
	if want := c.ID().String(); len(leaf.URIs) != 1 || leaf.URIs[0].String() != want {
		return nil, fmt.Errorf("the certificate returned is for %v, not %s", leaf.URIs, want)
	}
	cert.Leaf = leaf
	return cert, nil
}

// tlsConfig verifies the identity service's certificate against the trust bundle file
// as it is at each handshake, so a rotated bundle applies without a restart.
func (c *Client) tlsConfig() *tls.Config {
	name := c.ServerName
	if name == "" {
		if host, _, err := net.SplitHostPort(c.Address); err == nil {
			name = host
		}
	}
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		ServerName:         name,
		InsecureSkipVerify: true, // #nosec G402 -- verified in VerifyConnection against the bundle file read then
		VerifyConnection: func(cs tls.ConnectionState) error {
			bundle, err := os.ReadFile(c.TrustBundleFile)
			if err != nil {
				return fmt.Errorf("reading the trust bundle: %w", err)
			}
			roots := x509.NewCertPool()
			if !roots.AppendCertsFromPEM(bundle) {
				return fmt.Errorf("the trust bundle %s holds no certificate", c.TrustBundleFile)
			}
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the identity service presented no certificate")
			}
			inter := x509.NewCertPool()
			for _, ic := range cs.PeerCertificates[1:] {
				inter.AddCert(ic)
			}
			_, err = cs.PeerCertificates[0].Verify(x509.VerifyOptions{
				DNSName: name, Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			})
			if err != nil {
				return fmt.Errorf("verifying the identity service %s: %w", name, err)
			}
			return nil
		},
	}
}

// NewCSR makes a fresh ECDSA P-256 key and a certificate request signed with it for
// exactly id: an empty subject and the one URI SAN, as the identity service requires.
func NewCSR(id *url.URL) (csrDER []byte, key *ecdsa.PrivateKey, err error) {
	key, err = ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generating the workload key: %w", err)
	}
	csrDER, err = x509.CreateCertificateRequest(crand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id}}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("creating the certificate request for %s: %w", id, err)
	}
	return csrDER, key, nil
}

func (c *Client) clock() Clock {
	if c.Clock == nil {
		return realClock{}
	}
	return c.Clock
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}
