// Package ca is the mesh certificate authority as it lives in the operator: the issuer
// and trust bundle in force (Holder), the identity service that signs with them
// (Certifier, Server), the operator's own serving certificate (ServingCert) and the
// expiry metrics. The certificate controller (controllers/certificates_controller.go)
// loads or creates the CA and stores it here; every other part reads it from here.
package ca

import (
	"crypto/x509"
	"sync"
	"sync/atomic"
	"time"

	"github.com/braidmesh/braid/internal/identity"
)

// State is the certificate authority in force. It is immutable once stored.
type State struct {
	// Issuer signs workload certificates; its trust domain is the mesh's.
	Issuer *identity.Issuer
	// Roots are the trust bundle: the root the issuer chains to first.
	Roots []*x509.Certificate
	// Bundle is Roots as PEM.
	Bundle []byte
	// WorkloadLifetime is the lifetime of the workload certificates signed.
	WorkloadLifetime time.Duration
}

// TrustDomain is the trust domain of the issuer.
func (s *State) TrustDomain() string { return s.Issuer.TrustDomain() }

// Holder holds the State in force and tells subscribers when it changes. Its zero value
// holds nothing; it is safe for concurrent use.
type Holder struct {
	cur  atomic.Pointer[State]
	mu   sync.Mutex
	subs []chan struct{}
}

// Load returns the State in force, or nil before the CA is loaded.
func (h *Holder) Load() *State { return h.cur.Load() }

// TrustBundle returns the PEM roots peers and the operator's servers chain to, or nil
// before the CA is loaded. The config server sends it to proxies.
func (h *Holder) TrustBundle() []byte {
	if s := h.cur.Load(); s != nil {
		return s.Bundle
	}
	return nil
}

// Store puts s in force and wakes every subscriber.
func (h *Holder) Store(s *State) {
	h.cur.Store(s)
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.subs {
		select {
		case c <- struct{}{}:
		default: // a wake-up is pending already: the subscriber will Load the latest
		}
	}
}

// Subscribe returns a channel that receives after every Store (wake-ups coalesce: read
// the State with Load). It is never closed.
func (h *Holder) Subscribe() <-chan struct{} {
	c := make(chan struct{}, 1)
	h.mu.Lock()
	h.subs = append(h.subs, c)
	h.mu.Unlock()
	return c
}
