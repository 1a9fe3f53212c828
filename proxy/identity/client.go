// Package identity gets the proxy its workload certificate from the operator's identity
// service and keeps it current: a fresh ECDSA P-256 key made in memory (it is never
// written anywhere), a CSR for spiffe://<trust domain>/ns/<namespace>/sa/<service
// account>, proved by the pod's projected ServiceAccount token, over TLS verified
// against the mesh trust bundle. The certificate and bundle go into a *tlsid.Store;
// renewal comes at about 70% of the lifetime, and a failed one keeps the certificate in
// use and retries with capped backoff. When the mesh trust bundle puts another root
// first (the operator issues from a new root: a root rotation), the client renews at
// once, within a random spread, and reports the root its certificate chains to, so the
// operator knows when every proxy has moved. It imports no Kubernetes code.
package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"

	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/proxy/tlsid"
)

// Renewal timing: at RenewFraction of the lifetime, give or take RenewJitter of it.
const (
	RenewFraction = 0.7
	RenewJitter   = 0.1
)

// DefaultRecertifySpread bounds the random wait before a renewal caused by a new
// issuing root, so that a mesh's proxies do not all ask at once.
const DefaultRecertifySpread = 10 * time.Second

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
	// RecertifySpread bounds the random wait before renewing when the mesh trust bundle
	// names a new issuing root (DefaultRecertifySpread when zero).
	RecertifySpread time.Duration

	once  sync.Once
	ready chan struct{}
	// moved wakes Run when the mesh bundle's issuing root is not the certificate's.
	moved chan struct{}
	// rootChanged tells the reporter that CertificateRoot may have changed.
	rootChanged chan struct{}
	// meshRoots are the roots of the last trust bundle from the control plane, the
	// issuing one first.
	meshRoots atomic.Pointer[[]*x509.Certificate]
	// issuedRoots are the roots of the trust bundle of the last Certify response.
	issuedRoots atomic.Pointer[[]*x509.Certificate]
	reported    atomic.Pointer[string] // the CertificateRoot last signalled
}

// ID returns the SPIFFE ID the client asks for.
func (c *Client) ID() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: c.TrustDomain, Path: "/ns/" + c.Namespace + "/sa/" + c.ServiceAccount}
}

// Ready is closed once the Store holds a first certificate and trust bundle.
func (c *Client) Ready() <-chan struct{} {
	c.init()
	return c.ready
}

func (c *Client) init() {
	c.once.Do(func() {
		c.ready = make(chan struct{})
		c.moved = make(chan struct{}, 1)
		c.rootChanged = make(chan struct{}, 1)
	})
}

// RootChanged receives when CertificateRoot may have changed (wake-ups coalesce).
func (c *Client) RootChanged() <-chan struct{} {
	c.init()
	return c.rootChanged
}

// SetMeshBundle takes the trust bundle the control plane sent (PEM, the issuing root
// first; the caller has installed it in the Store). When its first root is not the one
// the certificate chains to, the certificate is renewed within RecertifySpread.
func (c *Client) SetMeshBundle(bundle []byte) {
	c.init()
	roots, err := parseRoots(bundle)
	if err != nil || len(roots) == 0 {
		return // the Store refused it already; the caller reports that
	}
	c.meshRoots.Store(&roots)
	c.signalRoot()
	if !c.offIssuingRoot() {
		return
	}
	select {
	case c.moved <- struct{}{}:
	default:
	}
}

// offIssuingRoot says whether the certificate in use does not chain to the first root
// of the mesh bundle; false without either (the first certificate is on its way).
func (c *Client) offIssuingRoot() bool {
	cert, roots := c.Store.Certificate(), c.meshRoots.Load()
	return cert != nil && roots != nil && chainRoot(cert, (*roots)[:1]) == nil
}

// CertificateRoot returns the SHA-256 fingerprint (colon-separated upper-case hex) of
// the root of the trust bundle the certificate in use chains to, or "".
func (c *Client) CertificateRoot() string {
	cert := c.Store.Certificate()
	if cert == nil {
		return ""
	}
	var roots []*x509.Certificate
	if r := c.meshRoots.Load(); r != nil {
		roots = *r
	} else if r := c.issuedRoots.Load(); r != nil {
		roots = *r // no bundle from the control plane yet: the identity service's
	}
	if root := chainRoot(cert, roots); root != nil {
		return Fingerprint(root)
	}
	return ""
}

// signalRoot wakes RootChanged when CertificateRoot differs from what it last said.
func (c *Client) signalRoot() {
	root := c.CertificateRoot()
	if prev := c.reported.Swap(&root); prev != nil && *prev == root {
		return
	}
	select {
	case c.rootChanged <- struct{}{}:
	default:
	}
}

// chainRoot returns the root among roots that signed the last certificate of cert's
// chain (or is it), or nil.
func chainRoot(cert *tls.Certificate, roots []*x509.Certificate) *x509.Certificate {
	if len(cert.Certificate) == 0 {
		return nil
	}
	top, err := x509.ParseCertificate(cert.Certificate[len(cert.Certificate)-1])
	if err != nil {
		return nil
	}
	for _, r := range roots {
		if r.Equal(top) || top.CheckSignatureFrom(r) == nil {
			return r
		}
	}
	return nil
}

func parseRoots(bundle []byte) ([]*x509.Certificate, error) {
	var roots []*x509.Certificate
	for rest := bundle; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			return roots, nil
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		r, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		roots = append(roots, r)
	}
}

// Fingerprint is the SHA-256 fingerprint of c as colon-separated upper-case hex, as
// `openssl x509 -fingerprint -sha256` prints it and the operator reports roots.
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

// Run gets a certificate, then renews it, until ctx ends.
func (c *Client) Run(ctx context.Context) error {
	if c.Store == nil || c.Address == "" || c.TokenFile == "" || c.TrustBundleFile == "" {
		return errors.New("identity client: Store, Address, TokenFile and TrustBundleFile are required")
	}
	clk := c.clock()
	minBackoff, maxBackoff := orDefault(c.MinBackoff, time.Second), orDefault(c.MaxBackoff, 30*time.Second)
	conn, err := grpc.NewClient(c.Address, grpc.WithTransportCredentials(credentials.NewTLS(c.tlsConfig())),
		// The connection reconnects at the client's own pace, not gRPC's default (up to
		// two minutes), so that a renewal retried after an operator restart reaches it.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           grpcbackoff.Config{BaseDelay: minBackoff, Multiplier: 1.6, Jitter: 0.2, MaxDelay: maxBackoff},
			MinConnectTimeout: 5 * time.Second,
		}))
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
			c.signalRoot()
			select {
			case <-ready:
			default:
				close(c.ready)
			}
		}
		if !c.sleep(ctx, clk, wait) {
			return nil
		}
	}
}

// sleep waits for wait, or less when the mesh moves to another issuing root: then a
// random part of RecertifySpread. It returns false when ctx ends.
func (c *Client) sleep(ctx context.Context, clk Clock, wait time.Duration) bool {
	deadline := clk.Now().Add(wait)
	timer := clk.After(wait)
	for {
		select {
		case <-ctx.Done():
			return false
		case <-timer:
			return true
		case <-c.moved:
			if !c.offIssuingRoot() {
				continue // a renewal since already chains to it
			}
			d := time.Duration(c.random() * float64(orDefault(c.RecertifySpread, DefaultRecertifySpread)))
			if now := clk.Now(); now.Add(d).Before(deadline) {
				c.Log.Info("Workload certificate renewal brought forward: the mesh issues from a new root", "renewIn", d.String())
				deadline, timer = now.Add(d), clk.After(d)
			}
		}
	}
}

func (c *Client) random() float64 {
	if c.Random != nil {
		return c.Random()
	}
	return rand.Float64()
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
	if roots, err := parseRoots(resp.GetTrustBundle()); err == nil {
		c.issuedRoots.Store(&roots)
	}
	if err := c.Store.SetCertificate(cert); err != nil {
		return 0, fmt.Errorf("the identity service's certificate: %w", err)
	}
	now := c.clock().Now()
	lifetime := cert.Leaf.NotAfter.Sub(now)
	frac := RenewFraction * (1 + RenewJitter*(2*c.random()-1))
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
