// Package configserver streams compiled configuration to proxies over gRPC and tracks
// which version each connected proxy has acknowledged.
package configserver

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/braidmesh/braid/proxy/api"
)

// Server holds the compiled configuration of every Service and streams it to proxies.
// Reconcilers feed it with SetService; each change produces a new version that is pushed
// to every connected proxy.
type Server struct {
	api.UnimplementedConfigServiceServer

	log logr.Logger
	now func() time.Time

	mu        sync.Mutex
	version   uint64
	services  map[string]*api.Service
	changedAt map[string]uint64 // the version at which each service last changed
	snapshot  *api.Snapshot     // built lazily for the current version
	proxies   map[*proxyConn]struct{}

	// onAcks is called, outside the lock, whenever what proxies have acknowledged changes.
	onAcks func()
}

// proxyConn is one connected proxy's stream.
type proxyConn struct {
	hello     *api.Hello
	connected time.Time
	wake      chan struct{}

	// guarded by Server.mu
	sentAny, ackedAny bool
	sent, acked       uint64
	nack              string
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
	// later one since.
	Nack string
	// Synced is true when the proxy runs the server's current version.
	Synced bool
}

// New returns an empty Server. now is the clock it stamps connections with.
func New(log logr.Logger, now func() time.Time) *Server {
	return &Server{
		log:       log,
		now:       now,
		services:  map[string]*api.Service{},
		changedAt: map[string]uint64{},
		proxies:   map[*proxyConn]struct{}{},
	}
}

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
	s.snapshot = nil
	for p := range s.proxies {
		select {
		case p.wake <- struct{}{}:
		default: // already woken; it will read the newest version
		}
	}
	return s.version
}

// Acked counts the connected proxies, and those of them that run version or later.
func (s *Server) Acked(version uint64) (acked, connected int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for p := range s.proxies {
		if p.ackedAny && p.acked >= version {
			acked++
		}
	}
	return acked, len(s.proxies)
}

// Version is the current configuration version.
func (s *Server) Version() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version
}

// Snapshot returns the configuration of the current version. Callers must not modify it.
func (s *Server) Snapshot() *api.Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.currentSnapshot()
}

// currentSnapshot returns the snapshot of the current version. Callers hold s.mu. Service
// messages are never modified after SetService, so snapshots share them.
func (s *Server) currentSnapshot() *api.Snapshot {
	if s.snapshot != nil {
		return s.snapshot
	}
	snap := &api.Snapshot{Version: s.version, Services: make([]*api.Service, 0, len(s.services))}
	for _, svc := range s.services {
		snap.Services = append(snap.Services, svc)
	}
	slices.SortFunc(snap.Services, func(a, b *api.Service) int {
		return cmp.Or(strings.Compare(a.GetNamespace(), b.GetNamespace()), strings.Compare(a.GetName(), b.GetName()))
	})
	s.snapshot = snap
	return snap
}

// Proxies lists the connected proxies, sorted by ID.
func (s *Server) Proxies() []ProxyStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ProxyStatus, 0, len(s.proxies))
	for p := range s.proxies {
		out = append(out, ProxyStatus{
			ID: p.hello.GetProxyId(), Namespace: p.hello.GetNamespace(), ServiceAccount: p.hello.GetServiceAccount(),
			Connected: p.connected, Sent: p.sent, Acked: p.acked, Nack: p.nack,
			Synced: p.ackedAny && p.acked == s.version && p.nack == "",
		})
	}
	slices.SortFunc(out, func(a, b ProxyStatus) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Stream serves one proxy: it waits for Hello, then sends a Snapshot whenever the
// configuration changes and records the proxy's Acks.
func (s *Server) Stream(stream api.ConfigService_StreamServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hello := first.GetHello()
	if hello == nil || hello.GetProxyId() == "" || hello.GetNamespace() == "" {
		return status.Error(codes.InvalidArgument, "the first message must be a Hello with proxy_id and namespace")
	}
	p := &proxyConn{hello: hello, connected: s.now(), wake: make(chan struct{}, 1)}
	log := s.log.WithValues("proxy", hello.GetProxyId(), "namespace", hello.GetNamespace())
	s.register(p)
	defer s.unregister(p)
	defer s.acksChanged()
	log.V(1).Info("Proxy connected")

	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
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

func (s *Server) sendIfBehind(stream api.ConfigService_StreamServer, p *proxyConn) error {
	s.mu.Lock()
	snap := s.currentSnapshot()
	behind := !p.sentAny || p.sent < snap.GetVersion()
	if behind {
		p.sentAny, p.sent = true, snap.GetVersion()
	}
	s.mu.Unlock()
	if !behind {
		return nil
	}
	if err := stream.Send(snap); err != nil {
		return fmt.Errorf("sending version %d: %w", snap.GetVersion(), err)
	}
	return nil
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
		if ack.GetError() == "" {
			p.ackedAny, p.acked, p.nack = true, max(p.acked, ack.GetVersion()), ""
		} else {
			p.nack = ack.GetError()
		}
		s.mu.Unlock()
		s.acksChanged()
		if ack.GetError() != "" {
			log.Info("Proxy rejected configuration", "version", ack.GetVersion(), "error", ack.GetError())
		}
	}
}

// Serve serves the config API on lis until ctx ends. Config streams never end by
// themselves, so stopping closes them; proxies keep their configuration and reconnect.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	gs := grpc.NewServer(
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	api.RegisterConfigServiceServer(gs, s)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		gs.Stop()
	}()
	s.log.Info("Serving proxy config", "address", lis.Addr().String())
	err := gs.Serve(lis)
	<-stopped
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serving proxy config on %s: %w", lis.Addr(), err)
	}
	return nil
}
