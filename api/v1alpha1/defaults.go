package v1alpha1

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Defaults of the MeshConfig spec, applied when a field is unset.
const (
	DefaultTrustDomain      = "cluster.local"
	DefaultAccessMode       = AccessTargeted
	DefaultWorkloadLifetime = 24 * time.Hour
	DefaultIssuerLifetime   = 90 * 24 * time.Hour
	DefaultRootLifetime     = 10 * 365 * 24 * time.Hour
	// MinWorkloadLifetime is the shortest workload lifetime honoured: shorter ones would
	// have proxies renewing faster than a rollout burst can be served.
	MinWorkloadLifetime = 10 * time.Minute
)

// EffectiveTrustDomain returns the trust domain in force.
func (s *MeshConfigSpec) EffectiveTrustDomain() string {
	if s == nil || s.TrustDomain == "" {
		return DefaultTrustDomain
	}
	return s.TrustDomain
}

// EffectiveAccessMode returns the mesh-wide access mode, overridden by a namespace's
// braid.dev/access-control annotation value when that is a valid mode.
func (s *MeshConfigSpec) EffectiveAccessMode(namespaceAnnotation string) AccessMode {
	switch m := AccessMode(namespaceAnnotation); m {
	case AccessPermissive, AccessTargeted, AccessStrict:
		return m
	}
	if s == nil || s.AccessControl.Mode == "" {
		return DefaultAccessMode
	}
	return s.AccessControl.Mode
}

// EffectiveWorkloadLifetime returns the workload certificate lifetime in force.
func (s *MeshConfigSpec) EffectiveWorkloadLifetime() time.Duration {
	if s == nil {
		return DefaultWorkloadLifetime
	}
	return max(durationOr(s.Certificates.WorkloadLifetime, DefaultWorkloadLifetime), MinWorkloadLifetime)
}

// EffectiveIssuerLifetime returns the lifetime of an issuer the operator creates.
func (s *MeshConfigSpec) EffectiveIssuerLifetime() time.Duration {
	if s == nil {
		return DefaultIssuerLifetime
	}
	return durationOr(s.Certificates.IssuerLifetime, DefaultIssuerLifetime)
}

// EffectiveRootLifetime returns the lifetime of a root the operator creates.
func (s *MeshConfigSpec) EffectiveRootLifetime() time.Duration {
	if s == nil {
		return DefaultRootLifetime
	}
	return durationOr(s.Certificates.RootLifetime, DefaultRootLifetime)
}

func durationOr(d *metav1.Duration, def time.Duration) time.Duration {
	if d == nil || d.Duration <= 0 {
		return def
	}
	return d.Duration
}
