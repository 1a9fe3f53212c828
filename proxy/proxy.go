// Package proxy runs braid-proxy: the outbound listener, the admin server, and the
// control-plane stream or, standalone, the config file. It imports no Kubernetes client:
// its whole contract with the control plane is proxy/api.
package proxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"

	"github.com/braidmesh/braid/proxy/admin"
	"github.com/braidmesh/braid/proxy/api"
	"github.com/braidmesh/braid/proxy/configfile"
	"github.com/braidmesh/braid/proxy/controlplane"
	"github.com/braidmesh/braid/proxy/identity"
	"github.com/braidmesh/braid/proxy/inbound"
	"github.com/braidmesh/braid/proxy/internal/textpages"
	"github.com/braidmesh/braid/proxy/outbound"
	"github.com/braidmesh/braid/proxy/router"
	"github.com/braidmesh/braid/proxy/telemetry"
	"github.com/braidmesh/braid/proxy/tlsid"
)

// Options configure a proxy.
type Options struct {
	// ControlPlane is the operator's config server address (host:port).
	ControlPlane string
	// ConfigFile, when set, runs the proxy standalone: its configuration comes from this
	// file (a Snapshot in YAML or JSON, see docs/proxy-config.md) instead of the control
	// plane, and is applied again whenever the file changes.
	ConfigFile string
	// ConfigPoll is how often the config file is checked for changes (1 s when zero).
	ConfigPoll time.Duration
	// OutboundAddr is where the outbound listener listens: for explicit HTTP requests, and
	// for the connections braid-init redirects to it (see outbound.Listener).
	OutboundAddr string
	// DetectTimeout bounds protocol detection on transparent connections
	// (outbound.DefaultDetectTimeout when zero).
	DetectTimeout time.Duration
	// AdminAddr is where /ready, /live, /config, /metrics and /debug/pprof/ are served.
	AdminAddr string
	// ProxyID, Namespace and ServiceAccount identify the proxy to the control plane.
	ProxyID, Namespace, ServiceAccount string
	// ClusterDomain completes service names (<svc>.<ns>.svc.<domain>).
	ClusterDomain string
	// IdentityAddr is the operator's identity service (host:port). Empty, the proxy runs
	// without a workload certificate.
	IdentityAddr string
	// TokenFile is the projected ServiceAccount token (audience braid) proving the
	// proxy's identity; TrustBundleFile the PEM roots the identity service must chain to.
	TokenFile, TrustBundleFile string
	// TrustDomain of the proxy's SPIFFE ID.
	TrustDomain string
	// DrainTimeout bounds how long shutdown waits for requests in flight.
	DrainTimeout time.Duration
	// InboundAddr is where the inbound listener listens: mTLS from peer proxies, and the
	// plaintext connections braid-init redirects to it. Empty: no inbound listener.
	InboundAddr string
	// AppHost is the address the application listens on, from the proxy's point of view
	// (127.0.0.1 when empty).
	AppHost string
	// CertFile and KeyFile hold a workload certificate (chain) and key to use instead of
	// asking the identity service; TrustBundleFile then holds the roots peers chain to.
	CertFile, KeyFile string
	// ControlPlaneTLS dials the control plane over mTLS, presenting the workload
	// certificate, and verifies the operator's certificate names ControlPlaneServerName
	// (the control plane address's host when empty).
	ControlPlaneTLS        bool
	ControlPlaneServerName string
	// AppProbes is the JSON of the application probes the admin server answers on
	// /app-probe/<container>/<kind> (admin.AppProbes; BRAID_APP_PROBES, set by the injector).
	AppProbes string
}

// state is the configuration the proxy runs now.
type state struct {
	table atomic.Pointer[router.Table]
	// config is the snapshot the table was built from, for /config and for the last good
	// form of a Service that a later snapshot brings in a form that does not build (see
	// isolate). It is kept in its wire form: decoded, it takes about five times the
	// memory (for 1000 Services, 1.1 MB against 0.2 MB), and it is seldom read.
	config  atomic.Pointer[[]byte]
	opts    *Options
	metrics *telemetry.Metrics
	ids     *tlsid.Store // the workload certificate and trust bundle of mTLS
	// idc gets the certificate from the identity service; nil without one.
	idc  *identity.Client
	mesh meshState
	// endpoints keeps the live state of endpoints (latency, ejections) and retry
	// budgets across the tables of successive configurations.
	endpoints *router.Registry
	// trim runs once, when the first configuration is applied: it drops the pages of
	// the binary that starting up touched (see trimBinary).
	trim    func()
	trimmed sync.Once
}

// apply builds a table from a control-plane snapshot and swaps it in atomically. A
// Service that does not build is left at its last good form and reported (a
// *controlplane.PartialError); a snapshot that still does not build leaves the current
// table in place, and counts as a rejection.
func (s *state) apply(snap *api.Snapshot) error { return s.applySnapshot(snap, true) }

// applyFile applies a config file's snapshot whole, or not at all: a file is written by
// hand, and a mistake in it is better refused than half run.
func (s *state) applyFile(snap *api.Snapshot) error { return s.applySnapshot(snap, false) }

func (s *state) applySnapshot(snap *api.Snapshot, isolate bool) error {
	t, err := s.endpoints.Build(snap, s.opts.Namespace, s.opts.ClusterDomain)
	var rejected map[string]string
	if err != nil && isolate {
		// One Service that does not build must not hold the others back: build
		// without it (with its last good form, if any), and say so.
		var isolated *api.Snapshot
		if isolated, rejected = s.isolate(snap); len(rejected) > 0 {
			snap = isolated
			t, err = s.endpoints.Build(snap, s.opts.Namespace, s.opts.ClusterDomain)
		}
	}
	var policy *inbound.Policy
	if err == nil {
		policy, err = prepareInbound(snap)
	}
	if err == nil {
		err = s.applyBundle(snap)
	}
	if err != nil {
		s.metrics.ConfigRejected()
		return fmt.Errorf("version %d: %w", snap.GetVersion(), err)
	}
	wire, err := proto.Marshal(snap)
	if err != nil {
		s.metrics.ConfigRejected()
		return fmt.Errorf("version %d: keeping the configuration: %w", snap.GetVersion(), err)
	}
	s.mesh.policy.Store(policy)
	s.table.Store(t) // the table first: once /config shows a version, requests use it
	s.config.Store(&wire)
	s.metrics.ConfigApplied(t)
	if s.trim != nil {
		s.trimmed.Do(s.trim)
	}
	if len(rejected) > 0 {
		s.metrics.ConfigRejected()
		return &controlplane.PartialError{Rejected: rejected}
	}
	return nil
}

// isolate returns snap with each Service that does not build on its own replaced by its
// last good form, the one the proxy runs (left out when it runs none), and why each did
// not build.
func (s *state) isolate(snap *api.Snapshot) (*api.Snapshot, map[string]string) {
	rejected := map[string]string{}
	out := &api.Snapshot{Version: snap.GetVersion(), Full: snap.GetFull(), Inbound: snap.GetInbound(), TrustBundle: snap.GetTrustBundle()}
	var running map[string]*api.Service // decoded at the first Service that does not build
	for _, svc := range snap.GetServices() {
		one := &api.Snapshot{Version: snap.GetVersion(), Full: true, Services: []*api.Service{svc}}
		_, err := router.Build(one, s.opts.Namespace, s.opts.ClusterDomain)
		if err == nil {
			out.Services = append(out.Services, svc)
			continue
		}
		key := serviceKey(svc)
		rejected[key] = err.Error()
		if running == nil {
			if running, err = s.runningServices(); err != nil {
				rejected[key] += fmt.Sprintf(" (and the last good forms cannot be read back: %v)", err)
			}
		}
		if good, ok := running[key]; ok {
			out.Services = append(out.Services, good)
		}
	}
	return out, rejected
}

func serviceKey(svc *api.Service) string { return svc.GetNamespace() + "/" + svc.GetName() }

// runningServices returns the Services of the configuration the proxy runs, by key.
func (s *state) runningServices() (map[string]*api.Service, error) {
	snap, err := s.snapshot()
	if err != nil {
		return map[string]*api.Service{}, err
	}
	out := make(map[string]*api.Service, len(snap.GetServices()))
	for _, svc := range snap.GetServices() {
		out[serviceKey(svc)] = svc
	}
	return out, nil
}

// snapshot is the configuration the proxy runs now, decoded; nil before the first.
func (s *state) snapshot() (*api.Snapshot, error) {
	wire := s.config.Load()
	if wire == nil {
		return nil, nil
	}
	snap := &api.Snapshot{}
	if err := proto.Unmarshal(*wire, snap); err != nil {
		return nil, fmt.Errorf("decoding the configuration: %w", err)
	}
	return snap, nil
}

// readiness says why the proxy is not ready: it has no configuration yet, or (with a
// workload identity) no certificate yet.
func (s *state) readiness() admin.ReadinessFunc {
	identity := s.identityReadiness()
	return func() string {
		if s.config.Load() == nil {
			return admin.NoConfiguration
		}
		if identity != nil {
			return identity()
		}
		return ""
	}
}

// Run runs the proxy until ctx ends, then stops accepting and drains requests in flight.
func Run(ctx context.Context, log logr.Logger, opts Options) error {
	if opts.Namespace == "" {
		return errors.New("the proxy's namespace is required (--namespace or POD_NAMESPACE)")
	}
	if opts.ControlPlaneTLS && opts.IdentityAddr == "" && opts.CertFile == "" {
		return errors.New("--control-plane-tls needs a workload identity: --identity-address, or --cert-file and --key-file")
	}
	st := &state{opts: &opts, metrics: telemetry.New(), ids: &tlsid.Store{}, endpoints: router.NewRegistry(nil)}
	trimBinary(log) // the pages that initialising the packages touched
	st.trim = func() { trimBinary(log) }
	if err := loadStaticIdentity(log, st); err != nil {
		return err
	}
	if opts.IdentityAddr != "" {
		st.idc = identityClient(log, st)
	}
	source, err := configSource(log, st)
	if err != nil {
		return err
	}
	in, err := startInbound(ctx, log, st)
	if err != nil {
		return err
	}
	outLis, err := net.Listen("tcp", opts.OutboundAddr)
	if err != nil {
		return fmt.Errorf("outbound listener: %w", err)
	}
	adminLis, err := net.Listen("tcp", opts.AdminAddr)
	if err != nil {
		_ = outLis.Close()
		return fmt.Errorf("admin listener: %w", err)
	}
	out := outbound.NewListener(outLis, outbound.ListenerConfig{
		Log: log.WithName("outbound"), Table: &st.table, Metrics: st.metrics, DetectTimeout: opts.DetectTimeout,
		Dialer: outbound.MeshDialer{IDs: st.ids},
	})
	handler := outbound.New(log.WithName("outbound"), &st.table, st.metrics)
	handler.UseMesh(st.ids)
	outSrv := &http.Server{
		Handler:           handler,
		ConnContext:       outbound.ConnContext,
		Protocols:         outbound.ServerProtocols(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
	adminSrv := &http.Server{
		Handler:           admin.HandlerWithReadiness(st.snapshot, st.readiness(), st.metrics.Registry(), admin.WithAppProbes(opts.AppProbes, opts.AppHost), admin.WithEdges(st.metrics.Edges())),
		ReadHeaderTimeout: 5 * time.Second,
	}
	log.Info("Proxy starting", "outbound", outLis.Addr().String(), "admin", adminLis.Addr().String(),
		"controlPlane", opts.ControlPlane, "configFile", opts.ConfigFile)

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return serve(outSrv, out) })
	g.Go(func() error { return serve(adminSrv, adminLis) })
	g.Go(func() error { return source(gctx) })
	if in != nil {
		g.Go(in.Serve)
	}
	if st.idc != nil {
		g.Go(func() error { return st.idc.Run(gctx) })
	}
	g.Go(func() error {
		<-gctx.Done()
		drain, cancel := context.WithTimeout(context.WithoutCancel(gctx), opts.DrainTimeout)
		defer cancel()
		log.Info("Proxy stopping: draining requests in flight", "timeout", opts.DrainTimeout.String())
		var inErr error
		if in != nil {
			inErr = in.Shutdown(drain)
		}
		if err := errors.Join(outSrv.Shutdown(drain), out.Shutdown(drain), inErr, adminSrv.Shutdown(drain)); err != nil {
			return fmt.Errorf("draining requests in flight: %w", err)
		}
		log.Info("Proxy stopped: every request in flight was answered")
		return nil
	})
	return g.Wait()
}

// configSource returns what feeds the proxy its configuration until ctx ends: the config
// file, applied once before it returns, or the control plane.
func configSource(log logr.Logger, st *state) (func(ctx context.Context) error, error) {
	opts := st.opts
	if opts.ConfigFile != "" {
		w := &configfile.Watcher{
			Path: opts.ConfigFile, Apply: st.applyFile, Rejected: st.metrics.ConfigRejected,
			Log: log.WithName("config-file"), Interval: cmp.Or(opts.ConfigPoll, time.Second),
		}
		if err := w.Start(); err != nil {
			return nil, fmt.Errorf("standalone mode: %w", err)
		}
		return w.Run, nil
	}
	cp := &controlplane.Client{
		Address:    opts.ControlPlane,
		Hello:      &api.Hello{ProxyId: opts.ProxyID, Namespace: opts.Namespace, ServiceAccount: opts.ServiceAccount},
		Apply:      st.apply,
		Log:        log.WithName("control-plane"),
		MinBackoff: 100 * time.Millisecond, MaxBackoff: 5 * time.Second,
	}
	if st.idc != nil { // the Acks report the root the certificate chains to (root rotation)
		cp.CertificateRoot, cp.RootChanged = st.idc.CertificateRoot, st.idc.RootChanged()
	}
	if opts.ControlPlaneTLS {
		cp.TLS = st.ids.ControlPlaneConfig(controlPlaneServerName(opts))
	}
	return cp.Run, nil
}

// identityClient keeps st.ids holding a workload certificate from the identity service.
func identityClient(log logr.Logger, st *state) *identity.Client {
	o := st.opts
	return &identity.Client{
		Address: o.IdentityAddr, TokenFile: o.TokenFile, TrustBundleFile: o.TrustBundleFile,
		TrustDomain: o.TrustDomain, Namespace: o.Namespace, ServiceAccount: o.ServiceAccount,
		Store: st.ids, Log: log.WithName("identity"),
	}
}

func serve(srv *http.Server, lis net.Listener) error {
	if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving on %s: %w", lis.Addr(), err)
	}
	return nil
}

// trimBinary drops the resident pages of the binary's code and read-only data, which
// come back as they are used: the proxy's resident set keeps the pages it runs (for the
// client proxy of make bench-proxy, 11.6 MB of the binary became 9.4). It is done at
// start and once the first configuration is applied, so that the code only starting up
// needs (initialising packages, decoding the first configuration) leaves; see textpages
// for why nothing is lost.
func trimBinary(log logr.Logger) {
	n, err := textpages.Trim()
	if err != nil {
		// At most twice, and it explains a resident set larger than docs/benchmarks.md's.
		log.Info("Binary pages not trimmed", "error", err.Error())
		return
	}
	log.V(1).Info("Binary pages trimmed", "mapped", n)
}
