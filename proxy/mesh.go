package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync/atomic"

	"github.com/go-logr/logr"

	"github.com/braidmesh/braid/proxy/admin"
	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/proxy/inbound"
	"github.com/braidmesh/braid/proxy/sockio"
)

// meshState is the part of the running configuration that concerns mTLS and access: the
// inbound policy, compiled, and the trust bundle last applied.
type meshState struct {
	policy atomic.Pointer[inbound.Policy]
	bundle atomic.Pointer[string]
}

// prepareInbound compiles the inbound policy a snapshot carries, without applying it.
// A snapshot without one (standalone configurations that predate it) admits everyone
// when the proxy has no identity, and no one otherwise.
func prepareInbound(snap *api.Snapshot) (*inbound.Policy, error) {
	in := snap.GetInbound()
	if in == nil {
		in = &api.Inbound{Mode: "Unconfigured"}
	}
	p, err := inbound.NewPolicy(in)
	if err != nil {
		return nil, fmt.Errorf("inbound policy: %w", err)
	}
	return p, nil
}

// applyBundle installs the trust bundle a snapshot carries, when it differs from the last,
// and hands it to the identity client, which renews the certificate when the bundle
// names a new issuing root (its first).
func (s *state) applyBundle(snap *api.Snapshot) error {
	b := snap.GetTrustBundle()
	if b == "" {
		return nil
	}
	if cur := s.mesh.bundle.Load(); cur != nil && *cur == b {
		return nil
	}
	if err := s.ids.SetTrustBundle([]byte(b)); err != nil {
		return fmt.Errorf("trust bundle: %w", err)
	}
	s.mesh.bundle.Store(&b)
	if s.idc != nil {
		s.idc.SetMeshBundle([]byte(b))
	}
	return nil
}

// loadStaticIdentity installs a certificate and trust bundle from files, for proxies run
// without the identity service (standalone on VMs, tests and benchmarks).
func loadStaticIdentity(log logr.Logger, st *state) error {
	o := st.opts
	switch {
	case o.CertFile == "" && o.KeyFile == "":
		return nil
	case o.CertFile == "" || o.KeyFile == "":
		return errors.New("--cert-file and --key-file go together")
	case o.IdentityAddr != "":
		return errors.New("--cert-file and --identity-address exclude each other: the certificate comes from files or from the identity service")
	}
	cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
	if err != nil {
		return fmt.Errorf("loading the workload certificate: %w", err)
	}
	if err := st.ids.SetCertificate(&cert); err != nil {
		return fmt.Errorf("workload certificate %s: %w", o.CertFile, err)
	}
	if o.TrustBundleFile != "" {
		b, err := os.ReadFile(o.TrustBundleFile)
		if err != nil {
			return fmt.Errorf("reading the trust bundle: %w", err)
		}
		if err := st.ids.SetTrustBundle(b); err != nil {
			return fmt.Errorf("trust bundle %s: %w", o.TrustBundleFile, err)
		}
	}
	log.Info("Workload identity loaded from files", "id", st.ids.ID())
	return nil
}

// startInbound returns the inbound server for the configured address, or nil without one.
func startInbound(ctx context.Context, log logr.Logger, st *state) (*inbound.Server, error) {
	if st.opts.InboundAddr == "" {
		return nil, nil
	}
	// Its connections come from peer proxies and, redirected, from unmeshed clients: a
	// client lost without a FIN or RST fails them after sockio.PeerUserTimeout.
	lc := net.ListenConfig{Control: sockio.UserTimeout(sockio.PeerUserTimeout)}
	lis, err := lc.Listen(ctx, "tcp", st.opts.InboundAddr)
	if err != nil {
		return nil, fmt.Errorf("inbound listener: %w", err)
	}
	return inbound.New(lis, inbound.Config{
		Log: log.WithName("inbound"), IDs: st.ids, Policy: &st.mesh.policy, AppHost: st.opts.AppHost, Metrics: st.metrics.Inbound(), Edges: st.metrics.Edges(),
		ProxyPorts: listenPorts(st.opts.OutboundAddr, st.opts.AdminAddr),
	}), nil
}

// identityReadiness makes a proxy that has a workload identity (from the identity service
// or files) ready only once it holds its certificate and the trust bundle: before, it
// could neither accept nor make mTLS connections.
func (s *state) identityReadiness() admin.ReadinessFunc {
	if s.opts.IdentityAddr == "" && s.opts.CertFile == "" {
		return nil
	}
	return func() string {
		if !s.ids.Ready() {
			return "no workload certificate and trust bundle yet"
		}
		return ""
	}
}

// controlPlaneServerName is the name the operator's certificate must carry.
func controlPlaneServerName(o *Options) string {
	if o.ControlPlaneServerName != "" {
		return o.ControlPlaneServerName
	}
	host, _, err := net.SplitHostPort(o.ControlPlane)
	if err != nil {
		return o.ControlPlane
	}
	return host
}

// listenPorts returns the ports of listen addresses (host:port).
func listenPorts(addrs ...string) []uint16 {
	var out []uint16
	for _, a := range addrs {
		if _, p, err := net.SplitHostPort(a); err == nil {
			if n, err := strconv.ParseUint(p, 10, 16); err == nil && n > 0 {
				out = append(out, uint16(n))
			}
		}
	}
	return out
}
