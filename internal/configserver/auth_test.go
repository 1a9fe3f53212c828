package configserver_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/braidmesh/braid/internal/configserver"
	"github.com/braidmesh/braid/internal/identity"
	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/proxy/tlsid"
	"github.com/braidmesh/braid/test/harness"
)

// startTLSServer serves a config server over mTLS with a serving certificate for
// braid-operator.braid-system.svc from ca.
func startTLSServer(t *testing.T, ca *harness.TestCA) string {
	t.Helper()
	serving, err := ca.Issuer.SignServing(identity.ID{TrustDomain: ca.TrustDomain, Namespace: "braid-system", ServiceAccount: "braid-operator"},
		[]string{"braid-operator.braid-system.svc"}, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Root.Cert)
	srv := configserver.New(testr.New(t), configserver.Options{})
	srv.UseTLS(configserver.ServerTLS(func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return serving, nil }, func() *x509.CertPool { return pool }))
	srv.SetPolicy("shop", &configserver.Policy{Default: &api.Inbound{Mode: "Targeted", AllowAll: true}})
	srv.MarkReady()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.Serve(ctx, lis); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return lis.Addr().String()
}

// stream dials addr as a proxy with a certificate of certNS/certSA claiming helloNS/helloSA,
// and returns the first snapshot or the error.
func stream(t *testing.T, ca *harness.TestCA, addr, certNS, certSA, helloNS, helloSA string) (*api.Snapshot, error) {
	t.Helper()
	w, err := ca.Issue(certNS, certSA, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var ids tlsid.Store
	if err := ids.SetCertificate(w.TLS); err != nil {
		t.Fatal(err)
	}
	if err := ids.SetTrustBundle(ca.Bundle); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(ids.ControlPlaneConfig("braid-operator.braid-system.svc"))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	s, err := api.NewConfigServiceClient(conn).Stream(ctx)
	if err != nil {
		return nil, err
	}
	hello := &api.Hello{ProxyId: "p", Namespace: helloNS, ServiceAccount: helloSA}
	if err := s.Send(&api.StreamRequest{Kind: &api.StreamRequest_Hello{Hello: hello}}); err != nil {
		return nil, err
	}
	return s.Recv()
}

func TestMTLSStreamAuthenticatesTheProxy(t *testing.T) {
	ca, err := harness.NewTestCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	addr := startTLSServer(t, ca)
	snap, err := stream(t, ca, addr, "shop", "web", "shop", "web")
	if err != nil || !snap.GetInbound().GetAllowAll() {
		t.Fatalf("a proxy whose certificate matches its Hello: %v, %v", snap, err)
	}
	// Claiming another workload than the certificate's is refused.
	_, err = stream(t, ca, addr, "shop", "web", "shop", "payments")
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "shop/payments") {
		t.Errorf("a proxy claiming another identity got %v, want PermissionDenied naming the claim", err)
	}
	// A certificate from another CA does not get through the handshake.
	other, err := harness.NewTestCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := other.Issue("shop", "web", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// It trusts the server, but the server does not trust it.
	if err := firstSnapshotError(t, addr, foreign, ca.Bundle, "braid-operator.braid-system.svc"); err == nil {
		t.Error("a proxy certified by another CA got a snapshot")
	}
}

// firstSnapshotError dials addr as shop/web with certificate w, trusting bundle and
// expecting the server to be serverName, and returns what kept it from a first snapshot.
func firstSnapshotError(t *testing.T, addr string, w *harness.Workload, bundle []byte, serverName string) error {
	t.Helper()
	var ids tlsid.Store
	if err := ids.SetCertificate(w.TLS); err != nil {
		t.Fatal(err)
	}
	if err := ids.SetTrustBundle(bundle); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(ids.ControlPlaneConfig(serverName))))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := api.NewConfigServiceClient(conn).Stream(ctx)
	if err == nil {
		_ = s.Send(&api.StreamRequest{Kind: &api.StreamRequest_Hello{Hello: &api.Hello{ProxyId: "x", Namespace: "shop", ServiceAccount: "web"}}})
		_, err = s.Recv()
	}
	return err
}

func TestProxyVerifiesTheControlPlaneName(t *testing.T) {
	ca, err := harness.NewTestCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	addr := startTLSServer(t, ca)
	w, err := ca.Issue("shop", "web", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := firstSnapshotError(t, addr, w, ca.Bundle, "impostor.braid-system.svc"); err == nil || !strings.Contains(err.Error(), "impostor") {
		t.Errorf("a server certificate for another name was accepted: %v", err)
	}
}
