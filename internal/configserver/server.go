// Package configserver streams compiled configuration to proxies over gRPC and tracks
// which version each connected proxy has acknowledged.
package configserver

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"k8s.io/utils/clock"

	"github.com/braidmesh/braid/proxy/api"
)

// Server holds the compiled configuration of every Service and streams it to proxies.
// Reconcilers feed it with SetService; each change produces a new version. A proxy gets
// the full configuration when it connects and, after that, deltas: the services that
// changed or went away since the last snapshot on its stream.
type Server struct {
	api.UnimplementedConfigServiceServer

	log  logr.Logger
	opts Options

	mu        sync.Mutex
	version   uint64
	services  map[string]*api.Service
	changedAt map[string]uint64  // the version at which each service last changed
	changes   []change           // every change after floor, in version order
	floor     uint64             // deltas can be computed from any version >= floor
	snapshot  *api.Snapshot      // the full snapshot of the current version, built lazily
	policies  map[string]*Policy // inbound policy by namespace
	bundle    string             // the trust bundle, PEM
	bundleAt  uint64             // the version from which proxies run bundle
	proxies   map[*proxyConn]struct{}
	wakeArmed bool // a debounce timer will wake the streams

	// Scoping (scope.go): what stands behind each Service, the Services behind which
	// each namespace's workloads stand, and the stub each Service is sent as to the
	// workloads that may not reach it.
	backings     map[string]backing
	byWorkloadNS map[string]map[string]struct{}
	stubs        map[string]*api.Service
	lastChanged  changedCache

	// onAcks is called, outside the lock, whenever what proxies have acknowledged changes.
	onAcks func()
	// rejections counts the NACKs proxies sent.
	rejections prometheus.Counter

	// ready closes once the server holds the whole mesh (MarkReady); streams send nothing
	// before, so a restarted operator never hands proxies an empty or partial mesh.
	ready     chan struct{}
	readyOnce sync.Once
}

// Options tune a Server.
type Options struct {
	// Clock stamps connections and runs the debounce window.
	Clock clock.WithDelayedExecution
	// Debounce is how long the first change waits for others before proxies are woken.
	// The window is not extended by later changes, so it is also the most a change waits.
	// Zero pushes every change at once.
	Debounce time.Duration
	// TLS, when set, serves the stream over mTLS (see ServerTLS): a proxy must present a
	// certificate of the workload its Hello names.
	TLS *tls.Config
}

type change struct {
	version uint64
	key     string
	// policy marks a change of a namespace's inbound policy (key is the namespace), or
	// of the trust bundle (key is empty); otherwise key names a Service.
	policy bool
}

// Policy is the inbound policy of one namespace's workloads: ByServiceAccount for the
// ServiceAccounts TrafficTargets name, Default for the others.
type Policy struct {
	Default          *api.Inbound
	ByServiceAccount map[string]*api.Inbound
}

func (p *Policy) equal(o *Policy) bool {
	if p == nil || o == nil {
		return p == o
	}
	if !proto.Equal(p.Default, o.Default) || len(p.ByServiceAccount) != len(o.ByServiceAccount) {
		return false
	}
	for sa, in := range p.ByServiceAccount {
		if other, ok := o.ByServiceAccount[sa]; !ok || !proto.Equal(in, other) {
			return false
		}
	}
	return true
}

// denyUnknown is the policy of a workload in a namespace the server has no policy for:
// nothing the control plane has not compiled gets in.
var denyUnknown = &api.Inbound{Mode: "Unknown"}

// proxyConn is one connected proxy's stream.
type proxyConn struct {
	hello     *api.Hello
	connected time.Time
	wake      chan struct{}

	// guarded by Server.mu
	sentAny, ackedAny bool
	sent, acked       uint64
	// wire is the version of the last snapshot actually sent: sent moves past it when
	// later versions hold nothing for this proxy, and an ACK of wire then covers sent.
	wire    uint64
	inbound *api.Inbound // the inbound policy last sent
	bundle  string       // the trust bundle last sent
	nack    string       // the error of the last rejected version, until a later ACK
	nacked  uint64       // the version nack is about
	// denied holds the stubs sent for the Services the proxy's workload may not reach.
	denied map[string]*api.Service
	// certRoot is the fingerprint of the root the proxy's certificate chains to, as its
	// last Ack said.
	certRoot string
	// rejectedServices are the Services (namespace/name → why) its last Ack said it could
	// not build; they run their last good configuration there.
	rejectedServices map[string]string
}

// ProxyStatus describes one connected proxy.
type ProxyStatus struct {
	ID             string
	Namespace      string
	ServiceAccount string
	Connected      time.Time
	// Sent is the last version sent to the proxy, Acked the last it applied.
	Sent, Acked uint64
	// Nack is the error of the last version the proxy rejected, if it has not applied a
	// later one since; Nacked is that version.
	Nack   string
	Nacked uint64
	// Synced is true when the proxy runs the server's current version.
	Synced bool
	// Denied counts the Services its workload may not reach, sent to it as stubs.
	Denied int
	// RejectedServices are the Services the proxy could not build in the version it runs
	// (namespace/name → why): it runs the rest, and those in their last good form.
	RejectedServices map[string]string
	// CertificateRoot is the SHA-256 fingerprint of the root the proxy's workload
	// certificate chains to, as the proxy last reported it; empty when it did not.
	CertificateRoot string
}

// State is SYNCED, STALE (behind the current version), REJECTED (its last answer was a
// NACK) or PARTIAL (it runs its version except some Services it could not build).
func (p ProxyStatus) State() string {
	switch {
	case p.Nack != "":
		return "REJECTED"
	case len(p.RejectedServices) > 0:
		return "PARTIAL"
	case p.Synced:
		return "SYNCED"
	}
	return "STALE"
}

// New returns an empty Server.
func New(log logr.Logger, opts Options) *Server {
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	return &Server{
		log:       log,
		opts:      opts,
		services:  map[string]*api.Service{},
		changedAt: map[string]uint64{},
		policies:  map[string]*Policy{},
		proxies:   map[*proxyConn]struct{}{},

		backings:     map[string]backing{},
		byWorkloadNS: map[string]map[string]struct{}{},
		stubs:        map[string]*api.Service{},
		ready:        make(chan struct{}),
		rejections: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "braid_config_rejections_total", Help: "Configuration versions that proxies rejected (NACKs).",
		}),
	}
}

// UseTLS serves the stream over mTLS with c (see ServerTLS). Call it before Serve.
func (s *Server) UseTLS(c *tls.Config) { s.opts.TLS = c }

// MarkReady declares that the server holds the configuration of every Service, and
// releases the streams waiting for it. Until then proxies keep what they have.
func (s *Server) MarkReady() { s.readyOnce.Do(func() { close(s.ready) }) }

// OnAcks registers f to be called whenever a proxy acknowledges a version, connects or
// disconnects. Call it before Serve.
func (s *Server) OnAcks(f func()) { s.onAcks = f }

func (s *Server) acksChanged() {
	if s.onAcks != nil {
		s.onAcks()
	}
}

// SetService sets the compiled configuration of the Service namespace/name; nil removes
// it. A value equal to the current one changes nothing, so proxies see no new version.
// It returns the version from which proxies run this configuration of the Service.
func (s *Server) SetService(namespace, name string, svc *api.Service) uint64 {
	key := namespace + "/" + name
	s.mu.Lock()
	defer s.mu.Unlock()
	old, had := s.services[key]
	switch {
	case svc == nil && !had:
		return s.version
	case svc == nil:
		delete(s.services, key)
		delete(s.changedAt, key)
	case had && proto.Equal(old, svc):
		return s.changedAt[key]
	default:
		s.services[key] = svc
	}
	s.version++
	if svc != nil {
		s.changedAt[key] = s.version
	}
	s.indexBacking(key, svc)
	s.snapshot = nil
	s.changes = append(s.changes, change{version: s.version, key: key})
	s.compactChanges()
	s.scheduleWake()
	return s.version
}

// SetPolicy sets the inbound policy of a namespace's workloads; nil removes it (its
// workloads then admit nothing). It returns the version from which proxies run it.
func (s *Server) SetPolicy(namespace string, p *Policy) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, had := s.policies[namespace]
	if (!had && p == nil) || (had && old.equal(p)) {
		return s.policyVersion(namespace)
	}
	if p == nil {
		delete(s.policies, namespace)
	} else {
		s.policies[namespace] = p
	}
	return s.bump(change{key: namespace, policy: true})
}

// Policy returns the inbound policy the server holds for a namespace.
func (s *Server) Policy(namespace string) (*Policy, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.policies[namespace]
	return p, ok
}

// SetTrustBundle sets the PEM roots proxies verify their peers against. It returns the
// version from which proxies run it.
func (s *Server) SetTrustBundle(bundle string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if bundle == s.bundle {
		return s.bundleAt
	}
	s.bundle = bundle
	s.bundleAt = s.bump(change{policy: true})
	return s.bundleAt
}

// TrustBundleStatus counts the connected proxies that run the trust bundle bundle (they
// acknowledged the version that carries it, or a later one), those that rejected it, and
// the connected proxies; current is false when bundle is not the bundle the server
// sends (not handed to it yet, or replaced since), and then acked is 0.
func (s *Server) TrustBundleStatus(bundle string) (acked, rejected, connected int, current bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if bundle == "" || bundle != s.bundle {
		return 0, 0, len(s.proxies), false
	}
	for p := range s.proxies {
		switch {
		case p.ackedAny && p.acked >= s.bundleAt:
			acked++
		case p.nack != "" && p.nacked >= s.bundleAt:
			rejected++
		}
	}
	return acked, rejected, len(s.proxies), true
}

// CertificateRootStatus counts the connected proxies whose workload certificate chains
// to the root of SHA-256 fingerprint root, as their last Ack reported, and the connected
// proxies; other names one proxy that is not on it yet ("" when all are).
func (s *Server) CertificateRootStatus(root string) (on, connected int, other string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for p := range s.proxies {
		if p.certRoot == root {
			on++
			continue
		}
		other = p.hello.GetProxyId()
	}
	return on, len(s.proxies), other
}

// policyVersion is the version the namespace's policy last changed at; callers hold s.mu.
func (s *Server) policyVersion(namespace string) uint64 {
	for i := len(s.changes) - 1; i >= 0; i-- {
		if c := s.changes[i]; c.policy && c.key == namespace {
			return c.version
		}
	}
	return s.floor
}

// bump records a change at a new version and schedules the streams' wake-up; callers
// hold s.mu.
func (s *Server) bump(c change) uint64 {
	s.version++
	c.version = s.version
	s.changes = append(s.changes, c)
	s.compactChanges()
	s.scheduleWake()
	return s.version
}

// inboundFor returns the inbound policy of a proxy's workload; callers hold s.mu.
func (s *Server) inboundFor(h *api.Hello) *api.Inbound {
	p, ok := s.policies[h.GetNamespace()]
	if !ok {
		return denyUnknown
	}
	if in, ok := p.ByServiceAccount[h.GetServiceAccount()]; ok {
		return in
	}
	return p.Default
}

// compactChanges bounds the change log: past a few times the number of services, the
// older half goes, and proxies behind the new floor get a full snapshot instead of a delta.
func (s *Server) compactChanges() {
	if limit := 4*len(s.services) + 1024; len(s.changes) > limit {
		drop := len(s.changes) / 2
		s.floor = s.changes[drop-1].version
		s.changes = slices.Clone(s.changes[drop:])
	}
}

// scheduleWake wakes every stream now, or when the debounce window opened by the first
// pending change closes. Callers hold s.mu.
func (s *Server) scheduleWake() {
	if s.opts.Debounce <= 0 {
		s.wakeAll()
		return
	}
	if s.wakeArmed {
		return
	}
	s.wakeArmed = true
	s.opts.Clock.AfterFunc(s.opts.Debounce, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.wakeArmed = false
		s.wakeAll()
	})
}

// wakeAll wakes every stream; callers hold s.mu.
func (s *Server) wakeAll() {
	for p := range s.proxies {
		select {
		case p.wake <- struct{}{}:
		default: // already woken; it will read the newest version
		}
	}
}

// AckStatus counts, among the connected proxies, those that run version or later and
// those whose last answer rejected version or later; rejection is one such error.
func (s *Server) AckStatus(version uint64) (acked, rejected, connected int, rejection string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for p := range s.proxies {
		switch {
		case p.ackedAny && p.acked >= version:
			acked++
		case p.nack != "" && p.nacked >= version:
			rejected++
			rejection = fmt.Sprintf("proxy %s: %s", p.hello.GetProxyId(), p.nack)
		}
	}
	return acked, rejected, len(s.proxies), rejection
}

// AckStatusForService is AckStatus for the configuration of one Service (namespace/name):
// a proxy that runs version or later but could not build that Service counts as having
// rejected it.
func (s *Server) AckStatusForService(version uint64, service string) (acked, rejected, connected int, rejection string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for p := range s.proxies {
		why, bad := p.rejectedServices[service]
		switch {
		case p.ackedAny && p.acked >= version && bad:
			rejected++
			rejection = fmt.Sprintf("proxy %s: %s", p.hello.GetProxyId(), why)
		case p.ackedAny && p.acked >= version:
			acked++
		case p.nack != "" && p.nacked >= version:
			rejected++
			rejection = fmt.Sprintf("proxy %s: %s", p.hello.GetProxyId(), p.nack)
		}
	}
	return acked, rejected, len(s.proxies), rejection
}

// AckStatusFor is AckStatus restricted to the proxies of one workload identity; an empty
// serviceAccount means every proxy of the namespace.
func (s *Server) AckStatusFor(version uint64, namespace, serviceAccount string) (acked, rejected, connected int, rejection string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for p := range s.proxies {
		if p.hello.GetNamespace() != namespace || (serviceAccount != "" && p.hello.GetServiceAccount() != serviceAccount) {
			continue
		}
		connected++
		switch {
		case p.ackedAny && p.acked >= version:
			acked++
		case p.nack != "" && p.nacked >= version:
			rejected++
			rejection = fmt.Sprintf("proxy %s: %s", p.hello.GetProxyId(), p.nack)
		}
	}
	return acked, rejected, connected, rejection
}

// Version is the current configuration version.
func (s *Server) Version() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version
}

// Snapshot returns the full configuration of the current version. Callers must not
// modify it.
func (s *Server) Snapshot() *api.Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fullSnapshot()
}

// fullSnapshot returns the full snapshot of the current version. Callers hold s.mu.
// Service messages are never modified after SetService, so snapshots share them.
func (s *Server) fullSnapshot() *api.Snapshot {
	if s.snapshot != nil {
		return s.snapshot
	}
	snap := &api.Snapshot{Version: s.version, Full: true, Services: make([]*api.Service, 0, len(s.services))}
	for _, svc := range s.services {
		snap.Services = append(snap.Services, svc)
	}
	sortServices(snap.Services)
	s.snapshot = snap
	return snap
}

// changeIndex is the index of the first change at version or later; callers hold s.mu.
func (s *Server) changeIndex(version uint64) int {
	i, _ := slices.BinarySearchFunc(s.changes, version, func(c change, v uint64) int { return cmp.Compare(c.version, v) })
	return i
}

func sortServices(services []*api.Service) {
	slices.SortFunc(services, func(a, b *api.Service) int {
		return cmp.Or(strings.Compare(a.GetNamespace(), b.GetNamespace()), strings.Compare(a.GetName(), b.GetName()))
	})
}

// Proxies lists the connected proxies, sorted by ID.
func (s *Server) Proxies() []ProxyStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ProxyStatus, 0, len(s.proxies))
	for p := range s.proxies {
		out = append(out, ProxyStatus{
			ID: p.hello.GetProxyId(), Namespace: p.hello.GetNamespace(), ServiceAccount: p.hello.GetServiceAccount(),
			Connected: p.connected, Sent: p.sent, Acked: p.acked, Nack: p.nack, Nacked: p.nacked,
			Synced:           p.ackedAny && p.acked == s.version && p.nack == "",
			CertificateRoot:  p.certRoot,
			Denied:           len(p.denied),
			RejectedServices: maps.Clone(p.rejectedServices),
		})
	}
	slices.SortFunc(out, func(a, b ProxyStatus) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Stream serves one proxy: it waits for Hello, then sends a Snapshot whenever the
// configuration changes and records the proxy's Acks.
func (s *Server) Stream(stream api.ConfigService_StreamServer) error {
	hello, err := s.receiveHello(stream)
	if err != nil {
		return err
	}
	p := &proxyConn{hello: hello, connected: s.opts.Clock.Now(), wake: make(chan struct{}, 1)}
	log := s.log.WithValues("proxy", hello.GetProxyId(), "namespace", hello.GetNamespace())
	s.register(p)
	defer s.acksChanged() // deferred first, so it runs after unregister: readers see the proxy gone
	defer s.unregister(p)
	log.V(1).Info("Proxy connected")

	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	select {
	case <-s.ready:
	case <-ctx.Done():
		return nil
	}
	acks := make(chan error, 1)
	go func() { acks <- s.receiveAcks(stream, p, log); cancel() }()

	for {
		if err := s.sendIfBehind(stream, p); err != nil {
			return err
		}
		select {
		case <-p.wake:
		case <-ctx.Done():
			select {
			case err := <-acks:
				if errors.Is(err, io.EOF) || errors.Is(err, context.Canceled) || status.Code(err) == codes.Canceled {
					return nil // the proxy closed its side or went away
				}
				return err
			default:
				return ctx.Err()
			}
		}
	}
}

// receiveHello reads the stream's first message, which must be a Hello from a proxy that
// is, on an mTLS stream, the workload its certificate names.
func (s *Server) receiveHello(stream api.ConfigService_StreamServer) (*api.Hello, error) {
	first, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	hello := first.GetHello()
	if hello == nil || hello.GetProxyId() == "" || hello.GetNamespace() == "" {
		return nil, status.Error(codes.InvalidArgument, "the first message must be a Hello with proxy_id and namespace")
	}
	if err := authenticate(stream.Context(), hello); err != nil {
		s.log.Info("Proxy refused", "proxy", hello.GetProxyId(), "error", err.Error())
		return nil, err
	}
	return hello, nil
}

func (s *Server) register(p *proxyConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.proxies[p] = struct{}{}
}

func (s *Server) unregister(p *proxyConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.proxies, p)
}

// sendIfBehind sends the proxy what it lacks: everything on a new stream (or when its
// last version is older than the change log reaches), otherwise a delta.
func (s *Server) sendIfBehind(stream api.ConfigService_StreamServer, p *proxyConn) error {
	s.mu.Lock()
	snap := s.nextSnapshot(p)
	s.mu.Unlock()
	if snap == nil {
		return nil
	}
	if err := stream.Send(snap); err != nil {
		return fmt.Errorf("sending version %d: %w", snap.GetVersion(), err)
	}
	return nil
}

// nextSnapshot returns what the proxy lacks, or nil when it is up to date; callers hold
// s.mu. A delta that would change nothing for the proxy (a policy of another namespace)
// is not sent: a proxy that had applied everything it was sent is then simply up to date
// at the new version.
func (s *Server) nextSnapshot(p *proxyConn) *api.Snapshot {
	inbound := s.inboundFor(p.hello)
	var snap *api.Snapshot
	switch {
	case !p.sentAny || p.sent < s.floor:
		full := s.fullSnapshot()
		snap = &api.Snapshot{Version: full.GetVersion(), Full: true, Services: s.scopedFull(p, full.GetServices()), Inbound: inbound, TrustBundle: s.bundle}
	case p.sent < s.version:
		snap = s.scopedDelta(p)
		if !proto.Equal(inbound, p.inbound) {
			snap.Inbound = inbound
		}
		if s.bundle != p.bundle {
			snap.TrustBundle = s.bundle
		}
		if len(snap.GetServices()) == 0 && len(snap.GetRemoved()) == 0 && snap.GetInbound() == nil && snap.GetTrustBundle() == "" {
			if p.ackedAny && p.acked == p.sent && p.nack == "" {
				p.acked = s.version
			}
			p.sent = s.version
			return nil
		}
	default:
		return nil
	}
	p.sentAny, p.sent, p.wire, p.inbound, p.bundle = true, snap.GetVersion(), snap.GetVersion(), inbound, s.bundle
	return snap
}

func (s *Server) receiveAcks(stream api.ConfigService_StreamServer, p *proxyConn, log logr.Logger) error {
	for {
		msg, err := stream.Recv()
		if err != nil {
			return err
		}
		ack := msg.GetAck()
		if ack == nil {
			return status.Error(codes.InvalidArgument, "after Hello a proxy sends only Acks")
		}
		s.mu.Lock()
		if !p.sentAny || ack.GetVersion() > p.sent {
			s.mu.Unlock()
			return status.Errorf(codes.InvalidArgument, "ack for version %d, which was never sent on this stream", ack.GetVersion())
		}
		p.certRoot = ack.GetCertificateRoot()
		if ack.GetError() == "" {
			p.rejectedServices = ack.GetRejectedServices()
			v := ack.GetVersion()
			if v == p.wire {
				v = p.sent // nothing sent since holds anything for this proxy
			}
			p.ackedAny, p.acked, p.nack = true, max(p.acked, v), ""
		} else {
			p.nack, p.nacked = ack.GetError(), ack.GetVersion()
		}
		s.mu.Unlock()
		s.acksChanged()
		switch {
		case ack.GetError() != "":
			s.rejections.Inc()
			log.Info("Proxy rejected configuration", "version", ack.GetVersion(), "error", ack.GetError())
		case len(ack.GetRejectedServices()) > 0:
			s.rejections.Inc()
			log.Info("Proxy applied configuration except some Services", "version", ack.GetVersion(), "services", slices.Sorted(maps.Keys(ack.GetRejectedServices())))
		}
	}
}

// Serve serves the config API on lis until ctx ends. Config streams never end by
// themselves, so stopping closes them; proxies keep their configuration and reconnect.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	opts := []grpc.ServerOption{
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	}
	if s.opts.TLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(s.opts.TLS)))
	}
	gs := grpc.NewServer(opts...)
	api.RegisterConfigServiceServer(gs, s)
	s.log.Info("Serving proxy config", "address", lis.Addr().String())
	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()
	select {
	case <-ctx.Done():
		gs.Stop()
		if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("serving proxy config on %s: %w", lis.Addr(), err)
		}
		return nil
	case err := <-served:
		return fmt.Errorf("serving proxy config on %s: %w", lis.Addr(), err)
	}
}
