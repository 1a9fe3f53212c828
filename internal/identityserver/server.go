// Package identityserver serves workload certificates to proxies: it authenticates the
// pod's ServiceAccount token with TokenReview, checks the CSR asks for exactly that
// ServiceAccount's SPIFFE ID, and signs it with the current issuer.
package identityserver

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/utils/clock"

	"github.com/braidmesh/braid/internal/identity"
	"github.com/braidmesh/braid/proxy/api"
)

// Audience is the audience of the projected ServiceAccount tokens proxies present.
const Audience = "braid"

// ErrUnauthenticated is returned (wrapped) by a TokenReviewer for a token that does not
// authenticate a ServiceAccount for the audience.
var ErrUnauthenticated = errors.New("token not authenticated")

// TokenReviewer authenticates a ServiceAccount token for Audience.
type TokenReviewer interface {
	Review(ctx context.Context, token string) (namespace, serviceAccount string, err error)
}

// Authority is the issuer and trust bundle in force; it is swapped atomically on rotation.
type Authority struct {
	Issuer *identity.Issuer
	Bundle []byte // PEM roots
}

// Server implements api.IdentityServiceServer.
type Server struct {
	api.UnimplementedIdentityServiceServer

	log       logr.Logger
	reviewer  TokenReviewer
	clock     clock.PassiveClock
	lifetime  time.Duration
	authority atomic.Pointer[Authority]

	issued  *prometheus.CounterVec
	latency prometheus.Histogram
}

// New returns a Server that signs leaves of the given lifetime with authority.
func New(log logr.Logger, reviewer TokenReviewer, authority *Authority, lifetime time.Duration, clk clock.PassiveClock) *Server {
	s := &Server{
		log: log, reviewer: reviewer, clock: clk, lifetime: lifetime,
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "braid_identity_certify_total",
			Help: "Certify requests by result: issued, unauthenticated, denied, invalid_csr, unavailable.",
		}, []string{"result"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "braid_identity_certify_seconds", Help: "Time to answer a Certify request, TokenReview included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
	}
	s.authority.Store(authority)
	return s
}

// SetAuthority swaps the issuer and bundle used from the next request on.
func (s *Server) SetAuthority(a *Authority) { s.authority.Store(a) }

// Collectors are the server's metrics, to register with a Prometheus registry.
func (s *Server) Collectors() []prometheus.Collector {
	return []prometheus.Collector{s.issued, s.latency}
}

// Certify issues a certificate for the CSR of an authenticated ServiceAccount.
func (s *Server) Certify(ctx context.Context, req *api.CertifyRequest) (*api.CertifyResponse, error) {
	start := s.clock.Now()
	resp, result, err := s.certify(ctx, req)
	s.issued.WithLabelValues(result).Inc()
	s.latency.Observe(s.clock.Since(start).Seconds())
	if err != nil {
		s.log.V(1).Info("Refused a certificate", "result", result, "error", err.Error())
	}
	return resp, err
}

func (s *Server) certify(ctx context.Context, req *api.CertifyRequest) (*api.CertifyResponse, string, error) {
	a := s.authority.Load()
	if a == nil || a.Issuer == nil {
		return nil, "unavailable", status.Error(codes.Unavailable, "no issuer is loaded yet")
	}
	if req.GetToken() == "" {
		return nil, "unauthenticated", status.Error(codes.Unauthenticated, "no ServiceAccount token: send the pod's projected token (audience braid)")
	}
	ns, sa, err := s.reviewer.Review(ctx, req.GetToken())
	switch {
	case errors.Is(err, ErrUnauthenticated):
		return nil, "unauthenticated", status.Error(codes.Unauthenticated, err.Error())
	case err != nil:
		return nil, "unavailable", status.Errorf(codes.Unavailable, "reviewing the token: %v", err)
	}
	id := identity.ID{TrustDomain: a.Issuer.TrustDomain(), Namespace: ns, ServiceAccount: sa}
	chain, notAfter, err := a.Issuer.Sign(req.GetCsr(), id, s.clock.Now(), s.lifetime)
	var csrErr *identity.CSRError
	switch {
	case errors.As(err, &csrErr) && csrErr.Reason == "WrongIdentity":
		return nil, "denied", status.Errorf(codes.PermissionDenied, "the token is for %s; %s", id, csrErr.Msg)
	case errors.As(err, &csrErr):
		return nil, "invalid_csr", status.Errorf(codes.InvalidArgument, "CSR refused (%s): %s", csrErr.Reason, csrErr.Msg)
	case err != nil:
		return nil, "unavailable", status.Errorf(codes.Internal, "signing: %v", err)
	}
	return &api.CertifyResponse{CertificateChain: chain, TrustBundle: a.Bundle, NotAfter: timestamppb.New(notAfter)}, "issued", nil
}

// String names the server in logs.
func (s *Server) String() string {
	return fmt.Sprintf("identity server (leaf lifetime %v)", s.lifetime)
}
