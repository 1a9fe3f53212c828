package ca

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	"github.com/braidmesh/braid/internal/identityserver"
	"github.com/braidmesh/braid/proxy/api"
)

// Rate limits of the TokenReview client. A rollout starts hundreds of pods at once and
// each proxy's first Certify costs one TokenReview; client-go's default (QPS 5, burst
// 10) would queue them for minutes, while the API server answers TokenReviews cheaply
// (no storage). Renewals afterwards spread over the workload lifetime.
const (
	tokenReviewQPS   = 200
	tokenReviewBurst = 400
)

// shutdownGrace bounds how long a stopping server waits for Certify calls in flight.
const shutdownGrace = 5 * time.Second

// ServerOptions configure AddServer.
type ServerOptions struct {
	// Address the identity service listens on (host:port).
	Address string
	// Namespace and ServiceAccount of the operator, named by its serving certificate.
	Namespace, ServiceAccount string
	// Clock drives certificate renewal; the real clock when nil.
	Clock clock.Clock
	// Registry receives the metrics; none are registered when nil.
	Registry prometheus.Registerer
	// Listener, when set, is used instead of listening on Address (tests).
	Listener net.Listener
	// Serving, when set, is the serving certificate presented, shared with the
	// operator's other servers; the caller runs it (adds it to the manager). When nil,
	// AddServer makes one for the Service names of Namespace and runs it.
	Serving *ServingCert
}

// Server serves the identity service over TLS with the operator's serving certificate.
type Server struct {
	Certifier *Certifier
	Serving   *ServingCert
	Address   string
	Listener  net.Listener
	Log       logr.Logger
}

// AddServer adds to mgr, on every replica (no leader election): the identity service,
// signing with what holder holds and reviewing tokens with a client of its own, and the
// serving certificate it presents. It registers the issuance and expiry metrics.
func AddServer(mgr manager.Manager, holder *Holder, o ServerOptions) (*Server, error) {
	clk := o.Clock
	if clk == nil {
		clk = clock.RealClock{}
	}
	cfg := rest.CopyConfig(mgr.GetConfig())
	cfg.QPS, cfg.Burst = tokenReviewQPS, tokenReviewBurst
	c, err := client.New(cfg, client.Options{Scheme: mgr.GetScheme(), Mapper: mgr.GetRESTMapper()})
	if err != nil {
		return nil, fmt.Errorf("creating the TokenReview client: %w", err)
	}
	log := mgr.GetLogger().WithName("identity")
	serving, own := o.Serving, o.Serving == nil
	if own {
		serving = &ServingCert{
			Holder: holder, Namespace: o.Namespace, ServiceAccount: o.ServiceAccount,
			DNSNames: ServingDNSNames(o.Namespace), Clock: clk, Log: log.WithName("serving-cert"),
		}
	}
	s := &Server{
		Certifier: NewCertifier(log, identityserver.KubeTokenReviewer{Client: c}, clk),
		Serving:   serving,
		Address:   o.Address, Listener: o.Listener, Log: log,
	}
	if o.Registry != nil {
		for _, col := range []prometheus.Collector{s.Certifier, NewExpiryCollector(holder, s.Serving)} {
			if err := o.Registry.Register(col); err != nil {
				return nil, fmt.Errorf("registering the identity metrics: %w", err)
			}
		}
	}
	if own {
		if err := mgr.Add(s.Serving); err != nil {
			return nil, fmt.Errorf("adding the serving certificate: %w", err)
		}
	}
	if err := mgr.Add(s); err != nil {
		return nil, fmt.Errorf("adding the identity server: %w", err)
	}
	return s, nil
}

// NeedLeaderElection is false: every replica issues certificates.
func (s *Server) NeedLeaderElection() bool { return false }

// Start follows the holder and serves until ctx ends (a manager.Runnable).
func (s *Server) Start(ctx context.Context) error {
	lis := s.Listener
	if lis == nil {
		var err error
		if lis, err = net.Listen("tcp", s.Address); err != nil {
			return fmt.Errorf("identity server listener: %w", err)
		}
	}
	changed := s.Serving.Holder.Subscribe()
	s.Certifier.Update(s.Serving.Holder.Load())
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-changed:
				s.Certifier.Update(s.Serving.Holder.Load())
			}
		}
	}()
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: s.Serving.GetCertificate,
	})))
	api.RegisterIdentityServiceServer(gs, s.Certifier)
	errs := make(chan error, 1)
	go func() { errs <- gs.Serve(lis) }()
	s.Log.Info("Identity server starting", "address", lis.Addr().String())
	select {
	case err := <-errs:
		return fmt.Errorf("serving the identity service: %w", err)
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(shutdownGrace):
		gs.Stop()
	}
	return nil
}
