package ca

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/utils/clock"

	"github.com/braidmesh/braid/internal/identityserver"
	"github.com/braidmesh/braid/proxy/api"
)

// Certifier is the identity service: it answers Certify with an identityserver.Server
// signing with the Holder's State. identityserver.Server fixes the workload lifetime at
// construction, so a change of spec.certificates.workloadLifetime builds a new one; its
// request metrics then start again from zero (a counter reset Prometheus handles).
type Certifier struct {
	api.UnimplementedIdentityServiceServer

	log      logr.Logger
	reviewer identityserver.TokenReviewer
	clock    clock.PassiveClock

	mu       sync.Mutex // serialises Update
	srv      atomic.Pointer[identityserver.Server]
	lifetime time.Duration
	descs    []prometheus.Collector // of a prototype server: the metrics' descriptions
}

// NewCertifier returns a Certifier that authenticates tokens with reviewer. It refuses
// requests with Unavailable until the first Update.
func NewCertifier(log logr.Logger, reviewer identityserver.TokenReviewer, clk clock.PassiveClock) *Certifier {
	proto := identityserver.New(log, reviewer, nil, time.Hour, clk)
	return &Certifier{log: log, reviewer: reviewer, clock: clk, descs: proto.Collectors()}
}

// Update makes s the authority of the next requests.
func (c *Certifier) Update(s *State) {
	if s == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	a := &identityserver.Authority{Issuer: s.Issuer, Bundle: s.Bundle}
	if srv := c.srv.Load(); srv != nil && c.lifetime == s.WorkloadLifetime {
		srv.SetAuthority(a)
		return
	}
	c.lifetime = s.WorkloadLifetime
	c.srv.Store(identityserver.New(c.log, c.reviewer, a, s.WorkloadLifetime, c.clock))
}

// Certify implements api.IdentityServiceServer.
func (c *Certifier) Certify(ctx context.Context, req *api.CertifyRequest) (*api.CertifyResponse, error) {
	srv := c.srv.Load()
	if srv == nil {
		return nil, status.Error(codes.Unavailable, "the mesh CA is not loaded yet")
	}
	return srv.Certify(ctx, req)
}

// Describe implements prometheus.Collector: braid_identity_certify_total and
// braid_identity_certify_seconds of identityserver.
func (c *Certifier) Describe(ch chan<- *prometheus.Desc) {
	for _, col := range c.descs {
		col.Describe(ch)
	}
}

// Collect implements prometheus.Collector with the metrics of the server in use.
func (c *Certifier) Collect(ch chan<- prometheus.Metric) {
	srv := c.srv.Load()
	if srv == nil {
		return
	}
	for _, col := range srv.Collectors() {
		col.Collect(ch)
	}
}
