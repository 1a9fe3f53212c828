package ca

import (
	"context"
	"crypto/tls"
	"errors"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/utils/clock"

	"github.com/braidmesh/braid/internal/identity"
)

// servingRetry is how long a failed serving certificate waits before the next attempt.
const servingRetry = 10 * time.Second

// ServingCert is the operator's own serving certificate, signed in memory by the mesh
// CA: its key never leaves the process. It is reissued at two thirds of its lifetime and
// whenever the issuer changes, and served through GetCertificate, so new handshakes get
// the new one while established connections keep theirs.
type ServingCert struct {
	Holder *Holder
	// Namespace and ServiceAccount are the operator's: the certificate carries their
	// SPIFFE ID as well as the DNS names.
	Namespace, ServiceAccount string
	DNSNames                  []string
	Clock                     clock.Clock
	Log                       logr.Logger

	cert   atomic.Pointer[tls.Certificate]
	issuer atomic.Pointer[identity.Issuer] // that signed cert
}

// ServingDNSNames are the names of the operator's Service braid-operator in namespace.
func ServingDNSNames(namespace string) []string {
	return []string{"braid-operator." + namespace + ".svc", "braid-operator." + namespace + ".svc.cluster.local"}
}

// ErrNoServingCert is returned by handshakes before the first serving certificate.
var ErrNoServingCert = errors.New("the operator has no serving certificate yet: the mesh CA is not loaded")

// GetCertificate is a tls.Config callback.
func (s *ServingCert) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := s.cert.Load(); c != nil {
		return c, nil
	}
	return nil, ErrNoServingCert
}

// ConfigureTLS makes c present the certificate in use at each handshake; it fits
// controller-runtime's webhook.Options.TLSOpts.
func (s *ServingCert) ConfigureTLS(c *tls.Config) { c.GetCertificate = s.GetCertificate }

// Certificate returns the certificate in use, or nil.
func (s *ServingCert) Certificate() *tls.Certificate { return s.cert.Load() }

// Start keeps the certificate current until ctx ends (a manager.Runnable).
func (s *ServingCert) Start(ctx context.Context) error {
	changed := s.Holder.Subscribe()
	for {
		var wait <-chan time.Time
		if st := s.Holder.Load(); st != nil {
			wait = s.Clock.After(s.refresh(st))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-wait:
		}
	}
}

// NeedLeaderElection is false: every replica serves.
func (s *ServingCert) NeedLeaderElection() bool { return false }

// refresh reissues the certificate when it is missing, signed by another issuer or past
// two thirds of its lifetime, and returns how long until the next check.
func (s *ServingCert) refresh(st *State) time.Duration {
	now := s.Clock.Now()
	if c := s.cert.Load(); c != nil && s.issuer.Load() == st.Issuer {
		if at := renewAt(c.Leaf.NotBefore, c.Leaf.NotAfter); now.Before(at) {
			return at.Sub(now)
		}
	}
	id := identity.ID{TrustDomain: st.TrustDomain(), Namespace: s.Namespace, ServiceAccount: s.ServiceAccount}
	c, err := st.Issuer.SignServing(id, s.DNSNames, now, st.WorkloadLifetime)
	if err != nil {
		s.Log.Error(err, "Serving certificate was not issued; retrying", "retryIn", servingRetry.String())
		return servingRetry
	}
	s.cert.Store(c)
	s.issuer.Store(st.Issuer)
	s.Log.Info("Serving certificate issued", "id", id.String(), "notAfter", c.Leaf.NotAfter)
	return renewAt(c.Leaf.NotBefore, c.Leaf.NotAfter).Sub(now)
}

// renewAt is two thirds into [notBefore, notAfter].
func renewAt(notBefore, notAfter time.Time) time.Time {
	return notBefore.Add(notAfter.Sub(notBefore) * 2 / 3)
}
