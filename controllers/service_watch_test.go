package controllers

import (
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/event"

	braidv1alpha1 "github.com/braidmesh/braid/api/v1alpha1"
)

// Only a change of the trust domain in force recompiles Services: endpoint identities
// carry it, and nothing else of the MeshConfig reaches a compiled Service.
func TestTrustDomainChangeRecompilesServices(t *testing.T) {
	mc := func(td string, mode braidv1alpha1.AccessMode) *braidv1alpha1.MeshConfig {
		return &braidv1alpha1.MeshConfig{Spec: braidv1alpha1.MeshConfigSpec{TrustDomain: td, AccessControl: braidv1alpha1.AccessControl{Mode: mode}}}
	}
	for _, c := range []struct {
		old, new *braidv1alpha1.MeshConfig
		want     bool
	}{
		{mc("", ""), mc("example.org", ""), true},
		{mc("cluster.local", ""), mc("", ""), false}, // the default is cluster.local
		{mc("", braidv1alpha1.AccessStrict), mc("", braidv1alpha1.AccessPermissive), false},
	} {
		if got := trustDomainChanged(event.UpdateEvent{ObjectOld: c.old, ObjectNew: c.new}); got != c.want {
			t.Errorf("%q -> %q: recompile %v, want %v", c.old.Spec.TrustDomain, c.new.Spec.TrustDomain, got, c.want)
		}
	}
}
