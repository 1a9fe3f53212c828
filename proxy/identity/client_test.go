package identity_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	clocktesting "k8s.io/utils/clock/testing"

	internalidentity "github.com/braidmesh/braid/internal/identity"
	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/proxy/identity"
	"github.com/braidmesh/braid/proxy/tlsid"
)

// ca is a root and an issuer signed by an intermediate of it.
type ca struct {
	root   *internalidentity.KeyPair
	issuer *internalidentity.Issuer
}

func newCA(t *testing.T) ca {
	t.Helper()
	now := time.Now()
	root, err := internalidentity.NewRoot("cluster.local", now, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := internalidentity.NewIntermediate(root, "cluster.local", now, 12*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	issuer, err := internalidentity.NewIssuer(inter, nil, []*x509.Certificate{root.Cert}, "cluster.local", now)
	if err != nil {
		t.Fatal(err)
	}
	return ca{root: root, issuer: issuer}
}

// fakeIdentityService signs every CSR with the issuer of the moment, without any token
// check, for a one-hour lifetime.
type fakeIdentityService struct {
	api.UnimplementedIdentityServiceServer
	mu     sync.Mutex
	issuer *internalidentity.Issuer
	bundle []byte
}

func (f *fakeIdentityService) set(issuer *internalidentity.Issuer, bundle []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.issuer, f.bundle = issuer, bundle
}

func (f *fakeIdentityService) Certify(_ context.Context, req *api.CertifyRequest) (*api.CertifyResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := internalidentity.ID{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "web"}
	chain, _, err := f.issuer.Sign(req.GetCsr(), id, time.Now(), time.Hour)
	if err != nil {
		return nil, err
	}
	return &api.CertifyResponse{CertificateChain: chain, TrustBundle: f.bundle}, nil
}

// When the mesh trust bundle puts another root first, the client renews within the
// recertification spread, not at 70% of its lifetime, and reports the new root; a bundle
// whose first root is its own changes nothing.
func TestClientRecertifiesWhenTheIssuingRootChanges(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	a, b := newCA(t), newCA(t)
	svc := &fakeIdentityService{}
	svc.set(a.issuer, internalidentity.BundlePEM(a.root.Cert, b.root.Cert))
	addr := serve(t, svc, a)
	dir := t.TempDir()
	tokenFile, bundleFile := filepath.Join(dir, "token"), filepath.Join(dir, "ca.crt")
	for path, data := range map[string][]byte{tokenFile: []byte("token"), bundleFile: internalidentity.BundlePEM(a.root.Cert, b.root.Cert)} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	clk := clocktesting.NewFakeClock(time.Now())
	store := &tlsid.Store{}
	c := &identity.Client{
		Address: addr, ServerName: "localhost", TokenFile: tokenFile, TrustBundleFile: bundleFile,
		TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "web",
		Store: store, Log: testr.New(t), Clock: clk, Random: func() float64 { return 0.5 },
		RecertifySpread: 10 * time.Second,
	}
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	select {
	case <-c.Ready():
	case <-ctx.Done():
		t.Fatal("no first certificate")
	}
	waitRootChanged(ctx, t, c)
	if got, want := c.CertificateRoot(), identity.Fingerprint(a.root.Cert); got != want {
		t.Fatalf("CertificateRoot = %q, want root A %q", got, want)
	}
	first := store.Certificate()

	// The bundle with A first: nothing to do.
	c.SetMeshBundle(internalidentity.BundlePEM(a.root.Cert, b.root.Cert))
	waitWaiters(ctx, t, clk, 1)
	clk.Step(6 * time.Second)
	if store.Certificate() != first {
		t.Fatal("the client renewed although its certificate chains to the issuing root")
	}

	// B issues now and comes first: the client renews after half the spread (Random 0.5).
	svc.set(b.issuer, internalidentity.BundlePEM(b.root.Cert, a.root.Cert))
	c.SetMeshBundle(internalidentity.BundlePEM(b.root.Cert, a.root.Cert))
	waitWaiters(ctx, t, clk, 2) // the renewal at 70% and the one brought forward
	clk.Step(4 * time.Second)
	if store.Certificate() != first {
		t.Fatal("the client renewed before its random share of the spread")
	}
	clk.Step(2 * time.Second)
	waitCertChange(ctx, t, store, first)
	waitRootChanged(ctx, t, c)
	if got, want := c.CertificateRoot(), identity.Fingerprint(b.root.Cert); got != want {
		t.Fatalf("CertificateRoot = %q, want root B %q", got, want)
	}

	// The bundle again, B first: no further renewal.
	second := store.Certificate()
	c.SetMeshBundle(internalidentity.BundlePEM(b.root.Cert, a.root.Cert))
	waitWaiters(ctx, t, clk, 1)
	clk.Step(10 * time.Second)
	time.Sleep(20 * time.Millisecond) // a renewal, wrongly started, would show by now
	if store.Certificate() != second {
		t.Fatal("the client renewed again although its certificate chains to the issuing root")
	}
}

// serve serves svc over TLS for localhost, with a certificate from ca; it returns its address.
func serve(t *testing.T, svc api.IdentityServiceServer, ca ca) string {
	t.Helper()
	serving, err := ca.issuer.SignServing(internalidentity.ID{TrustDomain: "cluster.local", Namespace: "braid-system", ServiceAccount: "braid-operator"},
		[]string{"localhost"}, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*serving}})))
	api.RegisterIdentityServiceServer(gs, svc)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	return lis.Addr().String()
}

func waitCertChange(ctx context.Context, t *testing.T, store *tlsid.Store, old *tls.Certificate) {
	t.Helper()
	for store.Certificate() == old {
		select {
		case <-ctx.Done():
			t.Fatal("the client did not renew its certificate")
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func waitRootChanged(ctx context.Context, t *testing.T, c *identity.Client) {
	t.Helper()
	select {
	case <-c.RootChanged():
	case <-ctx.Done():
		t.Fatal("RootChanged did not fire")
	}
}

func waitWaiters(ctx context.Context, t *testing.T, clk *clocktesting.FakeClock, n int) {
	t.Helper()
	for clk.Waiters() < n {
		select {
		case <-ctx.Done():
			t.Fatal("the client never waited on its clock")
		case <-time.After(5 * time.Millisecond):
		}
	}
}
