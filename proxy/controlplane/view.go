package controlplane

import (
	"cmp"
	"slices"
	"strings"

	"github.com/braidmesh/braid/proxy/api"
)

// view is the configuration one stream has delivered: full snapshots replace it, deltas
// update it. It tracks what was received, not what was applied, because the server's
// next delta builds on what it sent, whether or not the proxy could apply it.
type view struct {
	services map[string]*api.Service
	inbound  *api.Inbound
	bundle   string
}

// apply folds snap into the view and returns the view as a full snapshot.
func (v *view) apply(snap *api.Snapshot) *api.Snapshot {
	if snap.GetFull() || v.services == nil {
		v.services = make(map[string]*api.Service, len(snap.GetServices()))
		v.inbound, v.bundle = nil, ""
	}
	// A delta carries the inbound policy and the trust bundle only when they changed.
	if snap.GetInbound() != nil {
		v.inbound = snap.GetInbound()
	}
	if snap.GetTrustBundle() != "" {
		v.bundle = snap.GetTrustBundle()
	}
	for _, key := range snap.GetRemoved() {
		delete(v.services, key)
	}
	for _, s := range snap.GetServices() {
		v.services[s.GetNamespace()+"/"+s.GetName()] = s
	}
	out := &api.Snapshot{
		Version: snap.GetVersion(), Full: true, Services: make([]*api.Service, 0, len(v.services)),
		Inbound: v.inbound, TrustBundle: v.bundle,
	}
	for _, s := range v.services {
		out.Services = append(out.Services, s)
	}
	slices.SortFunc(out.Services, func(a, b *api.Service) int {
		return cmp.Or(strings.Compare(a.GetNamespace(), b.GetNamespace()), strings.Compare(a.GetName(), b.GetName()))
	})
	return out
}
