package ca_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/braidmesh/braid/internal/ca"
	"github.com/braidmesh/braid/internal/identity"
	"github.com/braidmesh/braid/proxy/api"
)

func state(t *testing.T, now time.Time) *ca.State {
	t.Helper()
	root, err := identity.NewRoot("cluster.local", now, 365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := identity.NewIntermediate(root, "cluster.local", now, 90*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := identity.NewIssuer(inter, nil, []*x509.Certificate{root.Cert}, "cluster.local", now)
	if err != nil {
		t.Fatal(err)
	}
	return &ca.State{Issuer: iss, Roots: []*x509.Certificate{root.Cert}, Bundle: identity.BundlePEM(root.Cert), WorkloadLifetime: 24 * time.Hour}
}

func waitChange(ctx context.Context, t *testing.T, s *ca.ServingCert, old *tls.Certificate) *tls.Certificate {
	t.Helper()
	for {
		if c := s.Certificate(); c != nil && c != old {
			return c
		}
		select {
		case <-ctx.Done():
			t.Fatal("the serving certificate did not change")
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// The serving certificate carries the Service names and the operator's SPIFFE ID, chains
// to the root, is reissued at two thirds of its lifetime (not before) and when the issuer
// changes; the expiry metrics follow.
func TestServingCert(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	clk := clocktesting.NewFakeClock(time.Now())
	holder := &ca.Holder{}
	s := &ca.ServingCert{Holder: holder, Namespace: "braid-system", ServiceAccount: "braid-operator",
		DNSNames: ca.ServingDNSNames("braid-system"), Clock: clk, Log: testr.New(t)}
	if _, err := s.GetCertificate(nil); err == nil {
		t.Fatal("a certificate before the CA is loaded")
	}
	done := make(chan error, 1)
	go func() { done <- s.Start(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	st := state(t, clk.Now())
	holder.Store(st)
	first := waitChange(ctx, t, s, nil)
	leaf := first.Leaf
	if leaf.URIs[0].String() != "spiffe://cluster.local/ns/braid-system/sa/braid-operator" ||
		len(leaf.DNSNames) != 2 || leaf.DNSNames[0] != "braid-operator.braid-system.svc" || leaf.DNSNames[1] != "braid-operator.braid-system.svc.cluster.local" {
		t.Fatalf("serving certificate names %v %v", leaf.URIs, leaf.DNSNames)
	}
	roots := x509.NewCertPool()
	roots.AddCert(st.Roots[0])
	inter := x509.NewCertPool()
	inter.AddCert(st.Issuer.Issuing())
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "braid-operator.braid-system.svc", Roots: roots, Intermediates: inter}); err != nil {
		t.Fatal(err)
	}
	if len(first.Certificate) != 2 {
		t.Fatalf("the chain served has %d certificates, want the leaf and the intermediate", len(first.Certificate))
	}

	col := ca.NewExpiryCollector(holder, s)
	if n := count(col, ""); n != 3 {
		t.Fatalf("%d expiry series, want root, issuer and serving", n)
	}

	for clk.Waiters() == 0 {
		time.Sleep(time.Millisecond)
	}
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	clk.Step(life*2/3 - 2*time.Minute)
	if s.Certificate() != first || !clk.HasWaiters() {
		t.Fatal("reissued before two thirds of the lifetime")
	}
	clk.Step(2 * time.Minute)
	second := waitChange(ctx, t, s, first)

	holder.Store(state(t, clk.Now()))
	third := waitChange(ctx, t, s, second)
	if err := third.Leaf.CheckSignatureFrom(holder.Load().Issuer.Issuing()); err != nil {
		t.Fatalf("after an issuer change the serving certificate is not from the new issuer: %v", err)
	}
}

type anyToken struct{}

func (anyToken) Review(context.Context, string) (string, string, error) { return "shop", "web", nil }

// A change of workload lifetime takes effect in the certificates issued, and the metrics
// stay one collector across it.
func TestCertifierFollowsLifetime(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Now())
	c := ca.NewCertifier(testr.New(t), anyToken{}, clk)
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	id := identity.ID{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "web"}
	certify := func() time.Duration {
		t.Helper()
		csr, _, err := identity.NewCSR(id)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Certify(t.Context(), &api.CertifyRequest{Csr: csr, Token: "t"})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetNotAfter().AsTime().Sub(clk.Now())
	}
	if _, err := c.Certify(t.Context(), &api.CertifyRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("before the CA is loaded: %v, want Unavailable", err)
	}
	st := state(t, clk.Now())
	c.Update(st)
	if got := certify(); got < 23*time.Hour || got > 24*time.Hour {
		t.Fatalf("leaf lifetime %v, want 24h", got)
	}
	longer := *st
	longer.WorkloadLifetime = 48 * time.Hour
	c.Update(&longer)
	if got := certify(); got < 47*time.Hour || got > 48*time.Hour {
		t.Fatalf("leaf lifetime %v after the change, want 48h", got)
	}
	if n := count(c, "braid_identity_certify_total"); n != 1 {
		t.Fatalf("%d certify_total series, want 1 (issued)", n)
	}
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}
}

// count is how many series col collects, of the metric name (all when "").
func count(col prometheus.Collector, name string) int {
	ch := make(chan prometheus.Metric, 100)
	col.Collect(ch)
	close(ch)
	n := 0
	for m := range ch {
		if name == "" || strings.Contains(m.Desc().String(), `"`+name+`"`) {
			n++
		}
	}
	return n
}
