package identityserver_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/braidmesh/braid/internal/identity"
	"github.com/braidmesh/braid/internal/identityserver"
	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/test/harness"
)

const (
	ns = "identity"
	td = "cluster.local"
)

var cp *harness.ControlPlane

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	cp, err = harness.StartControlPlane(context.Background(), zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.ErrorLevel)))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = cp.Stop() }()
	ctx := context.Background()
	if err := cp.Client.Create(ctx, harness.Namespace(ns)); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for _, sa := range []string{"web", "db", "gone"} {
		if err := cp.Client.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: sa}}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return m.Run()
}

type world struct {
	client api.IdentityServiceClient
	root   *identity.KeyPair
}

// start serves an identity server over real gRPC, with a fresh root and intermediate and
// the real TokenReview against the test API server.
func start(t *testing.T) *world {
	t.Helper()
	now := time.Now()
	root, err := identity.NewRoot(td, now, 24*time.Hour*365)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := identity.NewIntermediate(root, td, now, 24*time.Hour*30)
	if err != nil {
		t.Fatal(err)
	}
	issuer, err := identity.NewIssuer(inter, nil, []*x509.Certificate{root.Cert}, td, now)
	if err != nil {
		t.Fatal(err)
	}
	srv := identityserver.New(testr.New(t), identityserver.KubeTokenReviewer{Client: cp.Client},
		&identityserver.Authority{Issuer: issuer, Bundle: identity.BundlePEM(root.Cert)}, 24*time.Hour, clock.RealClock{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	api.RegisterIdentityServiceServer(gs, srv)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &world{client: api.NewIdentityServiceClient(conn), root: root}
}

// token is a projected ServiceAccount token, as the kubelet mounts it.
func token(ctx context.Context, t *testing.T, sa string, audience string) string {
	t.Helper()
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: []string{audience}}}
	account := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: sa}}
	if err := cp.Client.SubResource("token").Create(ctx, account, tr); err != nil {
		t.Fatalf("requesting a token for %s: %v", sa, err)
	}
	return tr.Status.Token
}

func csrFor(t *testing.T, sa string) []byte {
	t.Helper()
	der, _, err := identity.NewCSR(identity.ID{TrustDomain: td, Namespace: ns, ServiceAccount: sa})
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestIssuesTheTokensIdentity(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	w := start(t)
	resp, err := w.client.Certify(ctx, &api.CertifyRequest{Csr: csrFor(t, "web"), Token: token(ctx, t, "web", identityserver.Audience)})
	if err != nil {
		t.Fatal(err)
	}
	leaf, inters := parseChain(t, resp.GetCertificateChain())
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://cluster.local/ns/identity/sa/web" {
		t.Fatalf("leaf identity %v, want spiffe://cluster.local/ns/identity/sa/web", leaf.URIs)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(resp.GetTrustBundle()) {
		t.Fatal("the trust bundle holds no certificate")
	}
	pool := x509.NewCertPool()
	for _, c := range inters {
		pool.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("the leaf does not chain to the bundle: %v", err)
	}
	if left := time.Until(resp.GetNotAfter().AsTime()); left < 23*time.Hour || left > 25*time.Hour {
		t.Fatalf("not_after is %v away, want about 24h", left)
	}
}

func TestRefusals(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	w := start(t)
	webToken := token(ctx, t, "web", identityserver.Audience)
	goneToken := token(ctx, t, "gone", identityserver.Audience)
	if err := cp.Client.Delete(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "gone"}}); err != nil {
		t.Fatal(err)
	}
	extraSAN := func() []byte {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		id := identity.ID{TrustDomain: td, Namespace: ns, ServiceAccount: "web"}
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URI()}, DNSNames: []string{"web.identity.svc"}}, key)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	cases := []struct {
		name  string
		req   *api.CertifyRequest
		code  codes.Code
		quote string
	}{
		{"another ServiceAccount's identity", &api.CertifyRequest{Csr: csrFor(t, "db"), Token: webToken}, codes.PermissionDenied, "spiffe://cluster.local/ns/identity/sa/web"},
		{"a token for another audience", &api.CertifyRequest{Csr: csrFor(t, "web"), Token: token(ctx, t, "web", "vault")}, codes.Unauthenticated, ""},
		{"a token that is not one", &api.CertifyRequest{Csr: csrFor(t, "web"), Token: "not-a-token"}, codes.Unauthenticated, ""},
		{"no token", &api.CertifyRequest{Csr: csrFor(t, "web")}, codes.Unauthenticated, "projected token"},
		{"a deleted ServiceAccount's token", &api.CertifyRequest{Csr: csrFor(t, "gone"), Token: goneToken}, codes.Unauthenticated, ""},
		{"a malformed CSR", &api.CertifyRequest{Csr: []byte("certainly not DER"), Token: webToken}, codes.InvalidArgument, "Malformed"},
		{"a CSR with an extra DNS name", &api.CertifyRequest{Csr: extraSAN(), Token: webToken}, codes.InvalidArgument, "ExtraSANs"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := w.client.Certify(ctx, tc.req)
			st, _ := status.FromError(err)
			if st.Code() != tc.code {
				t.Fatalf("want %v, got %v", tc.code, err)
			}
			if tc.quote != "" && !strings.Contains(st.Message(), tc.quote) {
				t.Fatalf("the message should mention %q: %q", tc.quote, st.Message())
			}
		})
	}
}

func parseChain(t *testing.T, chainPEM []byte) (*x509.Certificate, []*x509.Certificate) {
	t.Helper()
	var certs []*x509.Certificate
	for rest := chainPEM; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	if len(certs) < 2 {
		t.Fatalf("want the leaf and its intermediate, got %d certificates", len(certs))
	}
	return certs[0], certs[1:]
}
